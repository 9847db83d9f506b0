"""Plans in telemetry: on the wire, through ingest into a real SQLite store and back, bad plans rejected alone."""
import msgpack
import numpy as np
import pytest

from twin_bayes.service import protocol
from twin_bayes.service.ingest import Ingest, RobotShape
from twin_bayes.service.plan import horizon_commands, plan_of
from twin_bayes.service.store import TelemetryStore

DT = 0.002
SHAPE = RobotShape(nq=2, nv=2, nu=2, dt=DT, max_n=250)


def chunk(seq, n=10, plan=None, plan_t0=None):
    t = (seq * n + np.arange(n)) * DT
    return protocol.telemetry("arm", seq, t, np.zeros((n, 2)), np.zeros((n, 2)), np.ones((n, 2)),
                              plan=plan, plan_t0=plan_t0)


def with_body(frames, **body):
    """The frames with body keys set by hand (what protocol.telemetry would not write)."""
    h = msgpack.unpackb(frames[0])
    h.setdefault("body", {}).update(body)
    return [msgpack.packb(h), *frames[1:]]


@pytest.fixture
def ingest(tmp_path):
    with TelemetryStore(tmp_path / "store.db") as store:
        yield Ingest(store, {"arm": SHAPE}, notify=lambda rid: None)


def codes(replies):
    return [(m.type, m.extra.get("code")) for m in map(protocol.decode, replies)]


def test_a_plan_travels_with_its_chunk_and_is_stored_with_its_times(ingest):
    plan = np.arange(60.0).reshape(30, 2)
    msg = protocol.decode(chunk(0, plan=plan, plan_t0=10 * DT))
    assert msg.arrays["plan"].shape == (30, 2) and msg.extra["plan_t0"] == 10 * DT  # not n rows: allowed
    assert codes(ingest.handle(chunk(0, plan=plan, plan_t0=10 * DT))) == [("ack", None)]
    assert codes(ingest.handle(chunk(1))) == [("ack", None)]
    first, second = ingest.store.get_chunks("arm")
    stored = plan_of(first)
    np.testing.assert_array_equal(stored.ctrl, plan)
    np.testing.assert_allclose(stored.t, (10 + np.arange(30)) * DT)
    assert plan_of(second) is None and ingest.rejected == {}
    assert codes(ingest.handle(chunk(0, plan=plan, plan_t0=10 * DT))) == [("ack", None)]  # resent: duplicate


@pytest.mark.parametrize("kwargs, detail", [
    ({"plan": np.zeros((30, 3)), "plan_t0": 10 * DT}, "(H, 2)"),
    ({"plan": np.zeros((251, 2)), "plan_t0": 10 * DT}, "1 <= H <= 250"),
    ({"plan": np.zeros((0, 2)), "plan_t0": 10 * DT}, "1 <= H <= 250"),
    ({"plan": np.zeros(30), "plan_t0": 10 * DT}, "(H, 2)"),
    ({"plan": np.zeros((30, 2), np.int32), "plan_t0": 10 * DT}, "float array"),
    ({"plan": np.full((30, 2), np.nan), "plan_t0": 10 * DT}, "NaN or Inf"),
    ({"plan": np.zeros((30, 2)), "plan_t0": 20 * DT}, "starts at the chunk's last command or the next one"),
    ({"plan": np.zeros((30, 2)), "plan_t0": 5 * DT}, "starts at the chunk's last command or the next one"),
    ({"plan_t0": 10 * DT, "plan_t": np.zeros(3)}, "plan_t is written by the service"),
])
def test_a_bad_plan_is_dropped_counted_and_answered_while_its_telemetry_is_stored(ingest, kwargs, detail):
    plan_t = kwargs.pop("plan_t", None)
    frames = chunk(0, **kwargs)
    if plan_t is not None:  # a robot writing the service's field: rebuilt by hand
        msg = protocol.decode(frames)
        frames = protocol.encode("telemetry", "arm", 0, {**msg.arrays, "plan_t": plan_t}, **msg.extra)
    replies = [protocol.decode(r) for r in ingest.handle(frames)]
    assert [(m.type, m.extra.get("code")) for m in replies] == [("error", "bad_plan"), ("ack", None)]
    assert detail in replies[0].extra["detail"] and replies[0].seq == 0
    assert ingest.rejected == {"bad_plan": 1}
    (stored,) = ingest.store.get_chunks("arm")
    assert plan_of(stored) is None and stored.n == 10 and set(stored.arrays) == {"t", "q", "qd", "ctrl"}


@pytest.mark.parametrize("frames, detail", [
    (with_body(chunk(0), plan_t0=0.02), "plan_t0 without a plan"),
    (with_body(chunk(0, plan=np.zeros((5, 2)), plan_t0=10 * DT), plan_t0="soon"), "plan_t0 (s, the time"),
])
def test_a_plan_time_alone_or_not_a_number_is_a_bad_plan(ingest, frames, detail):
    replies = [protocol.decode(r) for r in ingest.handle(frames)]
    assert replies[0].extra["code"] == "bad_plan" and detail in replies[0].extra["detail"]
    assert len(ingest.store.get_chunks("arm")) == 1


def test_the_robot_side_needs_a_start_time_and_a_plan_is_only_allowed_on_telemetry():
    with pytest.raises(protocol.ProtocolError, match="needs plan_t0"):
        chunk(0, plan=np.zeros((5, 2)))
    with pytest.raises(protocol.ProtocolError, match="non_finite"):
        protocol.query("arm", 0, "predict", {"plan": np.full((2, 2), np.inf)})


def test_horizon_commands_follow_the_chunk_then_its_plan_then_hold(ingest):
    ctrl = np.arange(20.0).reshape(10, 2)                                  # rows at t = 0..9 dt
    t = DT * np.arange(10)
    plan = 100 + np.arange(8.0).reshape(4, 2)                              # rows at t = 10..13 dt
    ingest.handle(protocol.telemetry("arm", 0, t, np.zeros((10, 2)), np.zeros((10, 2)), ctrl,
                                     plan=plan, plan_t0=10 * DT))
    ingest.handle(protocol.telemetry("arm", 1, t + 10 * DT, np.zeros((10, 2)), np.zeros((10, 2)), ctrl))
    with_plan, without = ingest.store.get_chunks("arm")
    got = horizon_commands(with_plan, 8 * DT, 8, DT)                      # from row 8: 2 rows, the plan, held
    np.testing.assert_array_equal(got, [ctrl[8], ctrl[9], plan[0], plan[1], plan[2], plan[3], plan[3], plan[3]])
    np.testing.assert_array_equal(horizon_commands(without, 19 * DT, 3, DT), np.repeat(ctrl[-1:], 3, axis=0))
    restating = np.array([[-1.0, -1.0], [7.0, 7.0]])                     # from t[-1]: its row 0 restates
    ingest.handle(protocol.telemetry("arm", 2, t + 20 * DT, np.zeros((10, 2)), np.zeros((10, 2)), ctrl,
                                     plan=restating, plan_t0=29 * DT))
    last = ingest.store.get_chunks("arm", after_seq=1)[0]
    np.testing.assert_array_equal(horizon_commands(last, 29 * DT, 3, DT), [ctrl[9], [7, 7], [7, 7]])
