"""The twin service in a thread (and, for kill -9, as a subprocess) on real loopback sockets
and a real SQLite file.

Every service here runs on the session's one TwinModel (`service_model`: arm2 with the
inference tests' small settings), so its kernels compile once. Chunks are 50
samples and windows 251 sharing their boundary sample: rows 0-250 (chunks 0-5)
and 250-500 (chunks 5-10) make the two windows; rows 500-599 wait for more data,
so the applied position is chunk 10, row 0.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

from twin_bayes.service import auth, checkpoint, protocol
from twin_bayes.service.client import ServiceError, Subscriber, TwinClient, TwinTimeout
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.store import TelemetryStore
from twin_bayes.service.worker import WorkerSettings, stored_windows
from twin_bayes.sim.emulator import emulate

RID = "arm-1"
CHUNK = 50
N_CHUNKS = 12
WINDOWS = 2          # rows 0-250 and 250-500
APPLIED = 10         # the chunk of row 500, where the next window starts


@pytest.fixture(scope="module")
def model(service_model):
    return service_model


@pytest.fixture(scope="module")
def cfg(model):
    return model.cfg


@pytest.fixture(scope="module")
def chunks(model):
    """12 telemetry chunks of 50 samples from native MuJoCo at the nominal parameters."""
    traj = emulate(model.robot, {}, (N_CHUNKS * CHUNK - 1) * model.robot.dt, seed=3)
    return [protocol.telemetry(RID, k, *(getattr(traj, f)[k * CHUNK:(k + 1) * CHUNK] for f in ("t", "q", "qd", "ctrl")))
            for k in range(N_CHUNKS)]


def start(cfg, model, tmp_path, name="svc", **kw) -> TwinService:
    worker = kw.pop("worker", WorkerSettings(checkpoints=tmp_path / f"{name}-ckpt", checkpoint_every_s=0.0))
    settings = ServiceSettings({RID: cfg}, tmp_path / f"{name}.db", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                               "tcp://127.0.0.1:*", worker=worker, **kw)
    return TwinService(settings, {RID: model}).start()


@contextmanager
def serving(cfg, model, tmp_path, **kw):
    """A started service and a robot on its ingest socket, (svc, robot); both closed on exit."""
    svc = start(cfg, model, tmp_path, **kw)
    robot = Robot(svc.endpoints["ingest"])
    try:
        yield svc, robot
    finally:
        robot.close()
        svc.stop()


class Robot:
    """A DEALER on the ingest socket: `send(frames)` then `replies(k)` decoded."""

    def __init__(self, endpoint: str, curve: auth.CurveKeys | None = None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        if curve is not None:
            curve.apply_client(self.sock)
        self.sock.connect(endpoint)

    def send(self, frames, flags: int = 0) -> None:
        self.sock.send_multipart(frames, flags)

    def replies(self, k: int, timeout_s: float = 10.0) -> list[protocol.Message]:
        out = []
        while len(out) < k and self.sock.poll(int(timeout_s * 1000)):
            out.append(protocol.decode(self.sock.recv_multipart()))
        return out

    def close(self) -> None:
        self.sock.close(linger=0)


def wait_for(client: TwinClient, ok, timeout_s: float = 900.0) -> dict:
    """Poll health until ok(health); the timeout only bounds a hang (compiles take minutes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = client.health()
        if ok(h):
            return h
        time.sleep(0.2)
    raise AssertionError(f"health never satisfied the condition: {h}")


def bad_messages(good: list[bytes], rng: random.Random) -> list[list[bytes]]:
    """One of each kind the issue lists, built from a valid chunk."""
    header = protocol.msgpack.unpackb(good[0])

    def with_header(**change):
        h = {**header, **change}
        return [protocol.msgpack.packb(h), *good[1:]]
    q_nan = np.frombuffer(good[2], "<f8").copy()
    q_nan[3] = np.nan
    q_inf = q_nan.copy()
    q_inf[3] = np.inf
    fields = header["fields"]
    return [
        [good[0][: len(good[0]) // 2], *good[1:]],                                  # truncated header
        with_header(type="launch"),                                                   # unknown type
        with_header(v=2),                                                             # other version
        with_header(fields=[{**fields[0], "dtype": "|O"}, *fields[1:]]),              # disallowed dtype
        with_header(fields=[{**fields[0], "dtype": ">f8"}, *fields[1:]]),             # big-endian
        with_header(fields=[{**fields[0], "shape": [CHUNK + 1]}, *fields[1:]]),       # shape vs buffer
        [good[0], good[1], q_nan.tobytes(), *good[3:]],                               # NaN
        [good[0], good[1], q_inf.tobytes(), *good[3:]],                               # Inf
        with_header(fields=[{**fields[0], "shape": [1 << 30]}, *fields[1:]]),         # declared huge
        [with_header(fields=[{**fields[0], "shape": [(17 << 20) // 8]}, *fields[1:]])[0],
         bytes(17 << 20), *good[2:]],                                                 # oversized frame
        [good[0]] + [b"x"] * 40,                                                      # too many frames
        [b""],                                                                        # empty frame
    ]


def test_stored_chunks_cut_like_the_samples_they_hold(model, chunks):
    """The service's windows of stored chunks are the shared cutter's windows of their samples, and a
    missing chunk stops the cut until it is resent."""
    from twin_bayes.data import cut_windows
    msgs = [protocol.decode(c) for c in chunks]
    cuts = stored_windows(msgs, model)
    t = np.concatenate([m.arrays["t"] for m in msgs])
    bounds, _ = cut_windows(t, model.window_samples, model.segment_steps + 1, model.robot.dt, final=False)
    assert [(len(c.t), c.end_seq, c.end_row) for c in cuts] == [(251, 5, 0), (251, APPLIED, 0)]
    for c, b in zip(cuts, bounds):
        np.testing.assert_array_equal(c.q, np.concatenate([m.arrays["q"] for m in msgs])[b.start:b.stop])
    assert stored_windows(msgs[:5] + msgs[6:], model) == []       # chunk 5 missing: nothing runs past it


def test_cli_keys_and_bad_serve_input(tmp_path, capsys):
    from twin_bayes.cli import main
    assert main(["keys", "--dir", str(tmp_path), "server", RID]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*.key*")) == ["arm-1.key", "arm-1.key", "arm-1.key_secret",
                                                                "server.key", "server.key_secret"]
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*.key*")} == {"0o600"}
    assert main(["serve", "--config", "no-such-twin"]) == 2
    assert "no-such-twin" in capsys.readouterr().err
    assert main(["serve", "--config", "bad id!=arm2"]) == 2


def test_fuzz_rejects_everything_and_keeps_serving(cfg, model, chunks, tmp_path):
    rng = random.Random(0)
    with serving(cfg, model, tmp_path) as (svc, robot):
        crafted = bad_messages(chunks[0], rng)
        randoms = [[rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))] for _ in range(10_000)]
        sent = 0
        for batch in range(0, len(randoms), 500):
            for frames in randoms[batch:batch + 500]:
                robot.send(frames)
            got = robot.replies(500)
            assert len(got) == 500 and all(m.type == "error" for m in got)
            sent += 500
        for frames in crafted:
            robot.send(frames)
        got = robot.replies(len(crafted))
        assert [m.type for m in got] == ["error"] * len(crafted)
        codes = [m.extra["code"] for m in got]
        assert codes[:10] == ["bad_header", "unknown_type", "version", "bad_dtype", "bad_dtype",
                              "shape_mismatch", "non_finite", "non_finite", "too_large", "too_large"]
        robot.send(chunks[0])
        assert [(m.type, m.seq, m.extra["status"]) for m in robot.replies(1)] == [("ack", 0, "stored")]
        with TwinClient(svc.endpoints["query"]) as client:
            m = client.metrics()
            assert m["rejected_total"] == sent + len(crafted)
            assert m["chunks_stored"] == 1
            assert client.health()["status"] == "ok"
        assert [c.seq for c in svc.store.get_chunks(RID)] == [0]


def test_chunks_for_other_robots_or_shapes_are_rejected(cfg, model, chunks, tmp_path):
    with serving(cfg, model, tmp_path) as (svc, robot):
        t, q, qd, ctrl = (protocol.decode(chunks[0]).arrays[k] for k in ("t", "q", "qd", "ctrl"))
        robot.send(protocol.telemetry("arm-9", 0, t, q, qd, ctrl))
        robot.send(protocol.telemetry(RID, 0, t, q[:, :1], qd, ctrl))
        robot.send(protocol.telemetry(RID, 0, t * 2, q, qd, ctrl))
        robot.send(protocol.query(RID, 0, "health"))
        robot.send(chunks[0])
        robot.send(protocol.telemetry(RID, 0, t, q + 1.0, qd, ctrl))   # same seq, other contents
        codes = [m.extra.get("code", m.type) for m in robot.replies(6)]
        assert codes == ["unknown_robot", "shape_mismatch", "bad_rate", "wrong_socket", "ack", "conflict"]


def test_write_failure_means_no_ack_then_recovery(cfg, model, chunks, tmp_path):
    with serving(cfg, model, tmp_path) as (svc, robot), TwinClient(svc.endpoints["query"]) as client:
        robot.send(chunks[0])
        assert robot.replies(1)[0].type == "ack"
        svc.store.set_max_bytes(svc.store.info()["bytes"])   # the disk is full
        robot.send(chunks[1])
        (reply,) = robot.replies(1)
        assert reply.type == "error" and reply.extra["code"] == "store_failed" and reply.seq == 1
        h = client.health()
        assert h["status"] == "degraded" and any(p.startswith("store:") for p in h["problems"])
        svc.store.set_max_bytes(None)                         # space again: the robot resends
        robot.send(chunks[1])
        assert [(m.type, m.seq) for m in robot.replies(1)] == [("ack", 1)]
        assert client.health()["status"] == "ok"
        assert [c.seq for c in svc.store.get_chunks(RID)] == [0, 1]


def test_gap_asks_for_resend_and_silence_is_reported(cfg, model, chunks, tmp_path):
    with serving(cfg, model, tmp_path, silent_after_s=0.3) as (svc, robot):
        robot.send(chunks[0])
        robot.send(chunks[3])
        got = robot.replies(3)
        assert [(m.type, m.seq) for m in got] == [("ack", 0), ("ack", 3), ("resend", 1)]
        assert got[2].extra["seqs"] == [1, 2]
        time.sleep(0.5)
        with TwinClient(svc.endpoints["query"]) as client:
            h = client.health()
        assert h["robots"][RID]["silent"] and h["status"] == "degraded"


def test_slow_subscriber_never_blocks_and_resyncs(cfg, model, chunks, tmp_path):
    """A subscriber that stops reading while the service publishes health 500 times a second."""
    svc = start(cfg, model, tmp_path, health_every_s=0.002, sndhwm=20, sndbuf=4096)
    client = TwinClient(svc.endpoints["query"])
    sub = Subscriber(svc.endpoints["pub"], client=client, rcvhwm=20, rcvbuf=4096)
    robot = Robot(svc.endpoints["ingest"])
    try:
        first = sub.recv(5.0)
        assert first and not sub.dropped
        seq_before = svc.pub_seq
        for k in range(4):                     # ingest goes on while the subscriber sleeps
            robot.send(chunks[k])
            assert robot.replies(1)[0].type == "ack"
            time.sleep(0.5)
        assert svc.pub_seq > seq_before + 200  # and so does publishing
        events = []
        while len(events) < 200:
            events += sub.recv(5.0)
        assert sub.dropped > 0 and sub.resyncs >= 2
        snaps = [e for e in events if e.resync]
        assert [e.topic for e in snaps[:1]] == [f"snapshot/{RID}/"] and snaps[0].message.extra["op"] == "posterior"
        assert snaps[0].message.extra["pub_seq"] > seq_before
        seqs = [e.message.seq for e in events if not e.resync]
        assert all(a < b for a, b in zip(seqs, seqs[1:]))
    finally:
        robot.close()
        sub.close()
        client.close()
        svc.stop()


def test_curve_unknown_key_cannot_connect_and_keys_write_only_their_robot(cfg, model, chunks, tmp_path):
    keys = tmp_path / "keys"
    for name in ("server", RID, "arm-2"):
        auth.generate(keys, name)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keys.rglob("*.key*"))
    stranger = tmp_path / "stranger"
    auth.generate(stranger, "arm-1")
    (stranger / "server.key").write_text((keys / "server.key").read_text())
    svc = start(cfg, model, tmp_path, curve_keys=keys)
    own = Robot(svc.endpoints["ingest"], auth.load(keys, RID))
    other = Robot(svc.endpoints["ingest"], auth.load(keys, "arm-2"))
    unknown = Robot(svc.endpoints["ingest"], auth.load(stranger, RID))  # right name, key not allowed
    try:
        own.send(chunks[0])
        assert [(m.type, m.seq) for m in own.replies(1)] == [("ack", 0)]
        other.send(chunks[1])                               # arm-2's key writing arm-1
        (reply,) = other.replies(1)
        assert reply.type == "error" and reply.extra["code"] == "forbidden"
        try:                                                # refused in the handshake: no peer
            unknown.send(chunks[1], zmq.NOBLOCK)           # to queue for (zmq.Again) or no answer
        except zmq.Again:
            pass
        assert unknown.replies(1, timeout_s=1.0) == []
        with pytest.raises(TwinTimeout):
            TwinClient(svc.endpoints["query"], timeout_s=0.5, retries=0, curve=auth.load(stranger, RID)).health()
        with TwinClient(svc.endpoints["query"], curve=auth.load(keys, "arm-2")) as client:
            assert client.metrics()["rejected"] == {"forbidden": 1}
        assert [c.seq for c in svc.store.get_chunks(RID)] == [0]
    finally:
        for r in (own, other, unknown):
            r.close()
        svc.stop()


def test_duplicates_shuffled_give_the_same_posterior_and_the_service_publishes(cfg, model, chunks, tmp_path):
    """Single pass vs. every chunk three times in shuffled order: stored once, identical posterior.
    Also: prediction scored by the next window, maintenance alert, queries."""
    results = {}
    for name, order in (("once", list(range(N_CHUNKS))),
                        ("shuffled", random.Random(1).sample(list(range(N_CHUNKS)) * 3, 3 * N_CHUNKS))):
        retain = 3 if name == "once" else None     # keep the 3 newest chunks once all before are applied
        svc = start(cfg, model, tmp_path, name=name,
                    worker=WorkerSettings(checkpoints=tmp_path / f"{name}-ckpt", retain_chunks=retain))
        robot = Robot(svc.endpoints["ingest"])
        client = TwinClient(svc.endpoints["query"], timeout_s=600, retries=0)
        sub = Subscriber(svc.endpoints["pub"], ["posterior/", "prediction/", "alert/"])
        try:
            for k in order:
                robot.send(chunks[k])
            acks = [m for m in robot.replies(len(order) + N_CHUNKS, timeout_s=2.0) if m.type == "ack"]
            assert sorted(m.seq for m in acks) == sorted(order)
            assert sum(m.extra["status"] == "stored" for m in acks) == N_CHUNKS
            h = wait_for(client, lambda h: h["robots"][RID]["windows"] == WINDOWS
                         and h["robots"][RID]["calibration"]["n_batches"] == 1
                         and h["robots"][RID]["model_calibration"]["n_batches"] >= 1)
            kept = list(range(N_CHUNKS - retain, N_CHUNKS)) if retain else list(range(N_CHUNKS))
            deadline = time.monotonic() + 30
            while [c.seq for c in svc.store.get_chunks(RID)] != kept and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [c.seq for c in svc.store.get_chunks(RID)] == kept
            snap = client.snapshot(RID)
            results[name] = (snap.arrays["values"].copy(), snap.arrays["weights"].copy(), snap.extra["version"])
            r = h["robots"][RID]
            assert r["posterior_version"] == WINDOWS and r["applied_seq"] == APPLIED and r["rejected_windows"] == 0
            assert r["calibration"]["n_batches"] == 1 and 0.0 <= r["calibration"]["coverage_90"] <= 1.0
            # idle work: the second window re-predicted by the posterior before it (the first, which the
            # prior predicted, is not scored), every sample of it scored; the model is exact, so its bands
            # hold most of the data (one window of correlated samples: 0.73 to 0.9 seen; a misspecified
            # arm without model error covers 0.1-0.4)
            mc = r["model_calibration"]
            assert mc["n_batches"] == WINDOWS - 1 and mc["n_points"] == 250 * 4
            assert 0.6 <= mc["coverage_90"] <= 1.0 and mc["coverage_50"] < mc["coverage_90"]
            assert len(svc.store.scores(RID)) == 1
            assert [a["parameter"] for a in h["alerts"]] == ["dof_damping:shoulder"]
            assert h["alerts"][0]["p_outside"] > 0.9 and len(h["alerts"][0]["trend"]) >= 1
            kinds = []
            while len(kinds) < 5 and (ev := sub.recv(5.0)):
                kinds += [e.topic.split("/")[0] for e in ev]
            assert {"posterior", "prediction", "alert"} <= set(kinds)
        finally:
            sub.close()
            robot.close()
        if name == "once":
            pred = client.predict(RID, np.zeros(2), np.zeros(2), np.zeros((25, 2)), quantiles=(0.05, 0.5, 0.95))
            assert pred.arrays["q"].shape == (3, 25, 2) and pred.extra["posterior_version"] == WINDOWS
            assert np.all(pred.arrays["q"][0] <= pred.arrays["q"][2])
            with pytest.raises(ServiceError, match="bad_query"):
                client.predict(RID, np.zeros(3), np.zeros(2), np.zeros((25, 2)))
            with pytest.raises(ServiceError, match="settings must map nothing"):   # arm2 has no settings
                client.predict(RID, np.zeros(2), np.zeros(2), np.zeros((25, 2)), settings={"servo_kp": 400})
            with pytest.raises(ServiceError, match="unknown_robot"):
                client.snapshot("arm-9")
        client.close()
        svc.stop()
    once, shuffled = results["once"], results["shuffled"]
    np.testing.assert_array_equal(once[0], shuffled[0])
    np.testing.assert_array_equal(once[1], shuffled[1])
    assert once[2] == shuffled[2] == WINDOWS
    assert os.path.exists(tmp_path / "once-ckpt")


class Served:
    """A `twin-bayes serve` subprocess on ephemeral loopback ports, on the files start(name=...) uses."""

    def __init__(self, tmp: Path, config: Path, name: str):
        cmd = [sys.executable, "-m", "twin_bayes.cli", "serve", "--config", f"{RID}={config}",
               "--store", str(tmp / f"{name}.db"), "--checkpoints", str(tmp / f"{name}-ckpt"),
               "--ingest", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", "--query", "tcp://127.0.0.1:*",
               "--no-preload"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.endpoints = json.loads(line)
                break
        else:
            raise AssertionError(f"serve exited with {self.proc.wait()}")


def acked(ingest: str, chunks, stop_after: int | None = None) -> list[int]:
    """Send chunks one by one, each awaiting its ack; returns the acked seqs."""
    robot = Robot(ingest)
    out = []
    try:
        for frames in chunks:
            robot.send(frames)
            out += [m.seq for m in robot.replies(1, timeout_s=30) if m.type == "ack"]
            if stop_after is not None and len(out) >= stop_after:
                break
    finally:
        robot.close()
    return out


def _posterior(svc) -> tuple[np.ndarray, np.ndarray]:
    with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
        snap = client.snapshot(RID)
    return snap.arrays["values"].copy(), snap.arrays["weights"].copy()


def test_kill_9_loses_no_acked_chunk_applies_nothing_twice_and_gives_the_uninterrupted_posterior(
        cfg, model, chunks, tmp_path):
    """`twin-bayes serve` killed with SIGKILL at a random point while streaming; restarted (in this
    process, to reuse the compiled kernels); stopped, its newest checkpoint corrupted, restarted.
    Each time the final posterior is the one of the same stream uninterrupted (to 1e-9): the
    checkpoint holds the whole TwinState. A checkpoint of another store is refused."""
    with serving(cfg, model, tmp_path, name="reference") as (svc, _):
        acked(svc.endpoints["ingest"], chunks)
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            wait_for(client, lambda h: h["robots"][RID]["windows"] >= WINDOWS)
        reference = _posterior(svc)
    rng = random.Random(int.from_bytes(os.urandom(2), "little"))
    served = Served(tmp_path, cfg.source, "served")
    got = acked(served.endpoints["ingest"], chunks, stop_after=rng.randrange(1, N_CHUNKS + 1))
    time.sleep(rng.uniform(0.0, 1.0))
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait()
    with TelemetryStore(tmp_path / "served.db") as store:
        stored = {c.seq for c in store.get_chunks(RID)}
    assert set(got) <= stored, (got, stored)

    # restarted: the robot resends everything it has; both windows applied exactly once
    svc = start(cfg, model, tmp_path, name="served")
    try:
        assert sorted(acked(svc.endpoints["ingest"], chunks)) == list(range(N_CHUNKS))
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            r = wait_for(client, lambda h: h["robots"][RID]["windows"] >= WINDOWS)["robots"][RID]
        assert (r["windows"], r["posterior_version"], r["applied_seq"]) == (WINDOWS, WINDOWS, APPLIED)
        assert svc.store.latest_posterior_version(RID).version == WINDOWS
        assert "resume_error" not in svc.worker.checkpoint_status, svc.worker.checkpoint_status
        for got, want in zip(_posterior(svc), reference):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    finally:
        svc.stop()
    ckpt = tmp_path / "served-ckpt"
    assert checkpoint.load_latest(ckpt).meta["robots"][RID]["windows"] == WINDOWS

    # the checkpoints after the last window (the last turn's, and the one on stop if idle work followed)
    # corrupted: the one before is used and window 2 is applied again, once
    windows = [(path, checkpoint.read(path)[1]["robots"][RID]["windows"]) for _, path in checkpoint.checkpoints(ckpt)]
    newest = [path for path, n in windows if n == WINDOWS]
    previous = [path for path, n in windows if n == WINDOWS - 1][-1]
    assert newest and all(n == WINDOWS for _, n in windows[windows.index((previous, WINDOWS - 1)) + 1:])
    for path in newest:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    svc = start(cfg, model, tmp_path, name="served")
    try:
        resumed = svc.worker.checkpoint_status
        assert Path(resumed["path"]) == previous and [Path(p) for p, _ in resumed["skipped"]] == newest[::-1]
        assert resumed["resumed"] and "resume_error" not in resumed, resumed     # the whole state came back
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            r = wait_for(client, lambda h: h["robots"][RID]["windows"] >= WINDOWS)["robots"][RID]
        assert (r["windows"], r["posterior_version"], r["applied_seq"]) == (WINDOWS, WINDOWS, APPLIED)
        for got, want in zip(_posterior(svc), reference):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    finally:
        svc.stop()

    # the checkpoints against a new store: refused, with the reason, instead of skipping its chunks
    from twin_bayes.service.worker import StoreMismatch
    with pytest.raises(StoreMismatch, match="another checkpoint directory"):
        start(cfg, model, tmp_path, name="fresh", worker=WorkerSettings(checkpoints=ckpt))


def test_checkpoints_are_written_at_most_every_interval_and_on_stop(cfg, model, chunks, tmp_path):
    """With `checkpoint_every_s` longer than the stream, the first turn is checkpointed (nothing was
    before), the next windows are not, and stopping saves the last: a restart then has nothing to redo."""
    ckpt = tmp_path / "interval-ckpt"
    worker = WorkerSettings(checkpoints=ckpt, checkpoint_every_s=3600.0, validate=False)
    with serving(cfg, model, tmp_path, name="interval", worker=worker) as (svc, _):
        acked(svc.endpoints["ingest"], chunks)
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            wait_for(client, lambda h: h["robots"][RID]["windows"] >= WINDOWS)
        assert [checkpoint.read(p)[1]["robots"][RID]["windows"] for _, p in checkpoint.checkpoints(ckpt)] == [1]
        final = _posterior(svc)
    assert [checkpoint.read(p)[1]["robots"][RID]["windows"] for _, p in checkpoint.checkpoints(ckpt)] == [1, WINDOWS]
    with serving(cfg, model, tmp_path, name="interval", worker=worker) as (svc, _):
        assert svc.worker.checkpoint_status["resumed"]
        assert svc.worker.robots[RID].applied_seq == APPLIED
        for got, want in zip(_posterior(svc), final):
            np.testing.assert_array_equal(got, want)


def test_a_log_served_and_the_same_log_fitted_with_stream_give_the_same_posterior(cfg, model, chunks, tmp_path,
                                                                                   capsys):
    """One window cutter for every path: the chunks streamed to the service, and their samples as one
    recording through `twin-bayes fit --engine stream`, make the same windows and the same posterior."""
    from twin_bayes.cli import main
    from twin_bayes.data import Trajectory, write_npz
    from twin_bayes.inference import Twin
    from twin_bayes.inference.store import load_posterior
    with serving(cfg, model, tmp_path, name="served-log") as (svc, _):
        acked(svc.endpoints["ingest"], chunks)
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            wait_for(client, lambda h: h["robots"][RID]["windows"] >= WINDOWS)
        served = svc.twins[RID].posterior
    msgs = [protocol.decode(c) for c in chunks]
    log = Trajectory(*(np.concatenate([m.arrays[k] for m in msgs]) for k in ("t", "q", "qd", "ctrl")))
    write_npz(tmp_path / "log.npz", log)
    assert main(["fit", "--config", str(cfg.source), "--data", str(tmp_path / "log.npz"), "--engine", "stream",
                 "--out", str(tmp_path / "fitted"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == WINDOWS
    fitted = load_posterior(Twin(cfg, model), tmp_path / "fitted").posterior
    assert fitted.version == served.version == WINDOWS
    np.testing.assert_allclose(fitted.values, served.values, rtol=1e-9, atol=1e-12)


def test_a_robot_starts_from_an_offline_posterior_with_its_model_error(cfg, model, chunks, tmp_path):
    """`serve --posterior ROBOT=DIR`: the service starts the robot from a fitted posterior (the whole
    state, its model error too) and hands both back in its snapshot."""
    from twin_bayes.inference import Twin
    from twin_bayes.inference.discrepancy import ModelError
    from twin_bayes.inference.store import save_posterior
    from twin_bayes.service.worker import stored_windows
    offline = Twin(cfg, model)
    for c in stored_windows([protocol.decode(c) for c in chunks], model)[:1]:
        offline.update({"q": c.q, "qd": c.qd, "ctrl": c.ctrl})
    offline.model_error = ModelError(np.array([0.01, 0.02]), 0.3, np.zeros(0), np.zeros(0))
    save_posterior(offline, tmp_path / "offline")
    with serving(cfg, model, tmp_path, name="from-offline", posteriors={RID: tmp_path / "offline"}) as (svc, _):
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            snap = client.snapshot(RID)
    assert snap.extra["version"] == 1 and snap.extra["model_error"] == offline.model_error.as_dict()
    np.testing.assert_array_equal(snap.arrays["values"], offline.posterior.values)
    with pytest.raises(ValueError, match="particles.npz"):
        start(cfg, model, tmp_path, name="missing", posteriors={RID: tmp_path / "nowhere"})


def test_the_service_learns_the_model_error_of_a_misspecified_robot_and_checkpoints_it(cfg, model, tmp_path):
    """An arm that the arm2 twin cannot describe (friction loss, backlash, latency, encoder offset:
    `truths/misspecified.toml`), streamed window by window: each window is re-predicted by the
    posterior before it and teaches the twin its model error (`inference.discrepancy`), which the
    snapshot hands back once MIN_WINDOWS are recorded: far above the sensor noise, since the
    open-loop predictions stray by tens of milliradians. A restart restores it from the checkpoint."""
    from twin_bayes.inference import engine
    from twin_bayes.inference.discrepancy import MIN_WINDOWS, as_model_error
    from twin_bayes.sim.truth import read_truth
    from twin_bayes.sim.robot import ROBOTS_DIR
    truth = read_truth(ROBOTS_DIR / "arm2" / "truths" / "misspecified.toml", model.robot)
    n_windows, step = MIN_WINDOWS + 2, model.window_samples - 1
    per_window = step // CHUNK                       # 250 rows: window k is complete with chunk k * 5
    n_chunks = n_windows * per_window + 1
    traj = emulate(model.robot, truth.params, n_chunks * CHUNK * model.robot.dt, seed=5,
                   noise=truth.noise or None, misspecified=truth.misspecified)
    chunks = [protocol.telemetry(RID, k, *(getattr(traj, f)[k * CHUNK:(k + 1) * CHUNK]
                                           for f in ("t", "q", "qd", "ctrl")))
              for k in range(n_chunks)]
    with serving(cfg, model, tmp_path, name="misspecified") as (svc, _):
        with TwinClient(svc.endpoints["query"], timeout_s=60) as client:
            for k in range(1, n_windows + 1):
                acked(svc.endpoints["ingest"], chunks[(k - 1) * per_window:k * per_window + 1])
                wait_for(client, lambda h, k=k: h["robots"][RID]["windows"] >= k     # the prior's window: not scored
                         and h["robots"][RID]["model_calibration"]["n_batches"] >= k - 1, 300)
            # the last windows' refit is idle work of its own, after their re-predictions
            wait_for(client, lambda h: h["robots"][RID]["model_error"]["fitted_windows"] == n_windows, 300)
            snap = client.snapshot(RID)
            robot = client.health()["robots"][RID]
    me, mc = snap.extra["model_error"], robot["model_calibration"]
    assert me is not None and min(me["sd_rad"]) > 5 * cfg.observation.noise_scale["q"], me
    assert robot["model_error"] == {**me, "windows": n_windows, "fitted_windows": n_windows}
    assert mc["n_points"] == (n_windows - 1) * step * 4
    saved = checkpoint.load_latest(tmp_path / "misspecified-ckpt")
    arrays = {k[len(RID) + 1:]: v for k, v in saved.arrays.items() if k.startswith(f"{RID}/")}
    in_checkpoint = as_model_error(engine.state_from_arrays(svc.twins[RID].state, arrays).model_error)
    with serving(cfg, model, tmp_path, name="misspecified") as (svc, _):
        with TwinClient(svc.endpoints["query"], timeout_s=60) as client:
            assert client.snapshot(RID).extra["model_error"] == in_checkpoint.as_dict()


def test_a_paused_stream_is_consolidated_into_the_whole_log_fit_of_what_was_stored(cfg, model, chunks, tmp_path):
    """With `inference.consolidate_after_s`, a robot whose stream pauses has what it stored refitted
    whole (`service.consolidate`): the posterior and model error become the whole-log fit of every
    sample it stored, as `whole_log.fit_twin` gives it offline, as the next version, stored, published
    and checkpointed; health says so, and a restart resumes from it without consolidating again."""
    from twin_bayes.data import Trajectory
    from twin_bayes.inference.whole_log import fit_twin
    from twin_bayes.inference import Twin
    paused = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"consolidate_after_s": 0.5})})
    with serving(paused, model, tmp_path, name="consolidated") as (svc, _):
        with TwinClient(svc.endpoints["query"], timeout_s=60) as client:
            acked(svc.endpoints["ingest"], chunks)
            health = wait_for(client, lambda h: h["robots"][RID]["consolidation"].get("windows") == WINDOWS, 600)
            snap = client.snapshot(RID)
        stored = svc.store.latest_posterior_version(RID)
    done = health["robots"][RID]["consolidation"]
    assert done["error"] == "" and done["refused"] is None and done["recordings"] == 1, done
    assert snap.extra["version"] == done["version"] == stored.version == WINDOWS + 1
    sent = [protocol.decode(frames).arrays for frames in chunks]       # the samples waiting for a window too
    sent = Trajectory(*(np.concatenate([c[k] for c in sent]) for k in ("t", "q", "qd", "ctrl")))
    offline = Twin(paused, model)
    fit_twin(offline, [sent], bucket=model.window_samples)
    np.testing.assert_allclose(snap.arrays["values"], offline.posterior.values, rtol=1e-9)
    me, fitted = snap.extra["model_error"], offline.model_error.as_dict()
    np.testing.assert_allclose(me["sd_rad"], fitted["sd_rad"], rtol=1e-9)
    assert me["time_const_s"] == pytest.approx(fitted["time_const_s"], rel=1e-9)
    assert checkpoint.load_latest(tmp_path / "consolidated-ckpt").meta["robots"][RID]["consolidated"] == WINDOWS
    with serving(paused, model, tmp_path, name="consolidated") as (svc, _):
        time.sleep(1.0)                                   # past consolidate_after_s: nothing new to refit
        rt = svc.worker.robots[RID]
        assert rt.consolidation == {} and rt.consolidated == rt.windows == WINDOWS
        np.testing.assert_array_equal(rt.twin.posterior.values, snap.arrays["values"])


def test_after_preload_the_stream_loads_no_executable(cfg, model, chunks, tmp_path):
    """`preload` (the `serve` default) makes the service's calls before the first window, so the
    updates, predictions, model calibration and model-error refit of the stream compile and load
    nothing: every load from the cache would stall every robot's update (0.2–2.5 s on arm2)."""
    from jax import monitoring
    loads = []
    svc_ref = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration" and svc_ref:
            loads.append((svc_ref[0].worker.preload_status.get("running", True), duration, kw))

    monitoring.register_event_duration_secs_listener(listen)
    try:
        with serving(cfg, model, tmp_path, name="preload",
                     worker=WorkerSettings(checkpoints=tmp_path / "preload-ckpt", preload=True)) as (svc, _):
            svc_ref.append(svc)
            with TwinClient(svc.endpoints["query"], timeout_s=60) as client:
                acked(svc.endpoints["ingest"], chunks)
                health = wait_for(client, lambda h: h["robots"][RID]["model_calibration"]["n_batches"] >= WINDOWS - 1,
                                  600)
    finally:      # the service has stopped: the refit that follows the last window's validation is done
        monitoring.unregister_event_duration_listener(listen)
    preload = health["preload"]
    assert not preload["running"] and "error" not in preload and preload["designs"][0]["robot_counts"] == [1]
    after = [(d, kw) for running, d, kw in loads if not running]
    assert not [(d, kw) for d, kw in after if d > 0.05], after      # only trivial host-side ops (stacking) may compile
