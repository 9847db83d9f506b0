"""Emulated and replayed robots streaming over real sockets into a ROUTER on loopback, and into the service."""
import json
import math
import time

import numpy as np
import pytest

from twin_bayes.cli import main
from twin_bayes.data import Trajectory, bam_logs, read_bam, write_npz
from twin_bayes.data.rosbag import write_rosbag
from twin_bayes.service import protocol
from twin_bayes.service.client import Subscriber, TwinClient
from twin_bayes.service.emulate import Drift, EmulatedRobot, stream, write_truth
from twin_bayes.sim.truth import read_truth
from twin_bayes.service.plan import plan_of
from twin_bayes.service.robot_link import RobotLink
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.worker import WorkerSettings
from twin_bayes.sim import load_robot
from twin_bayes.sim.emulator import emulate, excitation
from twin_bayes.sim.robot import ROBOTS_DIR
from twin_bayes.sim.truth import Misspecification

# not a twin config: kept out of robots/*/*.toml
MISSPECIFIED_ARM2 = ROBOTS_DIR / "arm2" / "truths" / "misspecified.toml"


def stream_of(peer):
    """The chunks a peer stored, in chunk order, joined: t, q, qd, ctrl and the settings of each chunk."""
    msgs = [peer.chunks[s] for s in sorted(peer.chunks)]
    assert sorted(peer.chunks) == list(range(len(msgs)))  # no chunk missing
    joined = {k: np.concatenate([m.arrays[k] for m in msgs]) for k in ("t", "q", "qd", "ctrl")}
    return joined, [m.extra.get("settings", {}) for m in msgs]


def drop_every_fifth(peer, msg):
    return [] if len(peer.receipts) % 5 == 0 else [protocol.ack(msg.robot_id, msg.seq)]


@pytest.fixture(scope="module")
def arm2():
    return load_robot("arm2")


def test_stepping_chunk_by_chunk_equals_the_whole_rollout_and_drift_acts_from_its_time(arm2):
    truth = {**arm2.nominal(), "latency_s": 0.005}
    whole = emulate(arm2, truth, 0.4, seed=3, noise={"q": 0.0, "qd": 0.0})
    robot = EmulatedRobot(arm2, truth, seed=3, noise={"q": 0.0, "qd": 0.0})
    parts = [robot.chunk(n) for n in (1, 66, 133)]
    for k in ("t", "q", "qd"):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), getattr(whole, k)[:200])
    drifted = EmulatedRobot(arm2, truth, seed=3, noise={"q": 0.0, "qd": 0.0},
                            drifts=(Drift.parse("body_mass:forearm=1.3@0.2"),))
    q = np.concatenate([drifted.chunk(n)["q"] for n in (77, 123)])
    changed = np.flatnonzero(np.abs(q - whole.q[:200]).max(axis=1) > 0)
    assert changed[0] == 101  # mass changes for step 100 (t = 0.2 s): first seen in the state after it
    assert drifted.truth["body_mass:forearm"] == pytest.approx(1.3 * truth["body_mass:forearm"])


def test_misspecified_physics_is_the_same_chunk_by_chunk_and_whole(arm2):
    truth = read_truth(MISSPECIFIED_ARM2, arm2)
    physics = Misspecification(truth.misspecified.frictionloss, truth.misspecified.backlash)
    silent = {"q": 0.0, "qd": 0.0}
    whole = emulate(arm2, truth.params, 0.4, seed=3, noise=silent, misspecified=physics)
    robot = EmulatedRobot(arm2, truth.params, seed=3, noise=silent, misspecified=physics)
    parts = [robot.chunk(n) for n in (1, 66, 133)]
    for k in ("q", "qd"):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), getattr(whole, k)[:200])
    exact = emulate(arm2, truth.params, 0.4, seed=3, noise=silent)
    assert np.abs(exact.q - whole.q).max() > 0.01


def test_emulate_cli_streams_every_chunk_with_settings_and_writes_the_truth(router_peer, tmp_path, capsys):
    peer = router_peer(drop_every_fifth)
    truth_file = tmp_path / "truth.toml"
    code = main(["emulate", "--robot", "servo_pendulum", "--endpoint", peer.endpoint, "--rate", "0",
                 "--seconds", "0.3", "--chunk-samples", "7", "--seed", "4", "--truth-out", str(truth_file),
                 "--drift", "servo_friction_coulomb:servo=2@0.1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data, settings = stream_of(peer)
    assert summary["chunks"] == len(peer.chunks) == math.ceil(60 / 7) and summary["rejected"] == 0
    assert len(peer.receipts) > len(peer.chunks)  # the dropped ones were resent
    np.testing.assert_allclose(data["t"], np.arange(60) * 0.005)
    assert all(s == {"servo_kp:servo": 400.0, "servo_vin:servo": 7.4} for s in settings)
    robot = load_robot("servo_pendulum")
    truth = read_truth(truth_file, robot)
    assert "drift: servo_friction_coulomb:servo x2.0 at 0.1 s" in truth_file.read_text()
    assert truth.params["servo_kt:servo"] != robot.nominal()["servo_kt:servo"]  # drawn from the prior
    assert truth.misspecified.none


def test_the_shipped_misspecified_truth_and_its_round_trip(arm2, tmp_path):
    truth = read_truth(MISSPECIFIED_ARM2, arm2)
    spec = truth.misspecified
    assert set(spec.frictionloss) == {"shoulder", "elbow"} and spec.backlash == {"elbow": 0.01}
    assert spec.noise_ar1 == 0.8 and spec.q_resolution == pytest.approx(2 * math.pi / 4096)
    assert truth.params["latency_s"] == 0.004 and truth.noise == {"q": 0.002, "qd": 0.02}
    write_truth(tmp_path / "again.toml", truth)
    assert read_truth(tmp_path / "again.toml", arm2) == truth
    write_truth(tmp_path / "bare.toml", truth.params)  # {name: value} alone, as the demo writes it
    assert read_truth(tmp_path / "bare.toml", arm2).params == truth.params
    (tmp_path / "broken.toml").write_text("[misspecified\n")
    with pytest.raises(ValueError, match="broken.toml: not valid TOML"):
        read_truth(tmp_path / "broken.toml", arm2)


def test_sensor_misspecification_colours_and_quantises_the_noise(arm2):
    exact = EmulatedRobot(arm2, arm2.nominal(), seed=5, noise={"q": 0.0, "qd": 0.0}).chunk(2000)
    spec = Misspecification(noise_ar1=0.9)
    colored = EmulatedRobot(arm2, arm2.nominal(), seed=5, noise={"q": 0.002, "qd": 0.02}, misspecified=spec)
    got = [colored.chunk(n) for n in (700, 1300)]  # the colouring continues across chunks
    for ch, sd in (("q", 0.002), ("qd", 0.02)):
        e = np.concatenate([g[ch] for g in got]) - exact[ch]
        assert e.std(axis=0) == pytest.approx([sd, sd], rel=0.15)
        assert [np.corrcoef(e[:-1, k], e[1:, k])[0, 1] for k in range(2)] == pytest.approx([0.9, 0.9], abs=0.03)
    step = 2 * math.pi / 4096
    coarse = EmulatedRobot(arm2, arm2.nominal(), seed=5, noise={"q": 0.0, "qd": 0.0},
                           misspecified=Misspecification(q_resolution=step)).chunk(2000)
    np.testing.assert_allclose(coarse["q"] / step, np.round(coarse["q"] / step), atol=1e-9)
    assert np.abs(coarse["q"] - exact["q"]).max() == pytest.approx(step / 2, rel=0.01)


@pytest.mark.parametrize("argv, message", [
    (["emulate", "--robot", "arm2", "--drift", "dof_damping:wrist=2@1"], "no parameter"),
    (["emulate", "--robot", "arm2", "--truth", "bad.toml"], "bad.toml: [sensor] has no key(s) ['jitter']"),
    (["emulate", "--robot", "arm2", "--plan", "--plan-seconds", "5"], "--plan-seconds must be between"),
    (["emulate", "--robot", "no_such_robot"], "no_such_robot"),
    (["replay", "missing.npz"], "missing.npz"),
    (["replay", "x.npz", "--setting", "servo_kp=fast"], "NAME=NUMBER"),
    (["replay", "x.npz", "--robot-id", "bad id"], "robot_id"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch, arm2):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "x.npz", emulate(arm2, arm2.nominal(), 0.1, seed=0))
    (tmp_path / "bad.toml").write_text("[sensor]\njitter = 0.1\n")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_replay_npz_and_rosbags_in_order_with_their_settings(router_peer, tmp_path, capsys, arm2):
    runs = [emulate(arm2, arm2.nominal(), 0.1, seed=s) for s in range(3)]
    runs[0] = Trajectory(runs[0].t, runs[0].q, runs[0].qd, runs[0].ctrl, settings={"servo_kp": 300.0})
    write_npz(tmp_path / "a.npz", runs[0])
    write_rosbag(tmp_path / "b", runs[1], ["shoulder", "elbow"], storage="mcap")
    write_rosbag(tmp_path / "c", runs[2], ["shoulder", "elbow"], storage="sqlite3")
    peer = router_peer(drop_every_fifth)
    code = main(["replay", str(tmp_path / "a.npz"), str(tmp_path / "b"), str(tmp_path / "c"),
                 "--endpoint", peer.endpoint, "--speed", "0", "--chunk-samples", "20", "--robot-id", "arm2",
                 "--setting", "servo_vin=7.0"])
    assert code == 0, capsys.readouterr().err
    data, settings = stream_of(peer)
    for k in ("q", "qd", "ctrl"):
        np.testing.assert_allclose(data[k], np.concatenate([getattr(r, k) for r in runs]), atol=1e-12)
    assert (np.diff(data["t"]) > 0).all()
    per_file = len(runs[0]) // 20 + 1  # 51 rows -> 3 chunks of 20, 1 of 11
    assert settings[:per_file] == [{"servo_kp": 300.0, "servo_vin": 7.0}] * per_file
    assert settings[per_file:] == [{"servo_vin": 7.0}] * (2 * per_file)


@pytest.mark.skipif(not bam_logs(), reason="shared XL330 logs not present")
def test_replay_a_real_bam_log(router_peer, capsys):
    log = bam_logs()[0]
    peer = router_peer()
    assert main(["replay", str(log), "--endpoint", peer.endpoint, "--speed", "0", "--robot-id", "xl330"]) == 0
    data, settings = stream_of(peer)
    rec = read_bam(log)
    np.testing.assert_array_equal(data["q"], rec.q)
    assert settings[0]["servo_kp"] == rec.settings["servo_kp"] and "servo_vin" in settings[0]


def test_emulated_robot_into_the_service_advances_the_posterior(tmp_path, service_model):
    any_port = "tcp://127.0.0.1:*"
    settings = ServiceSettings({"arm-7": service_model.cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=tmp_path / "checkpoints"))
    robot = service_model.robot
    with TwinService(settings, {"arm-7": service_model}) as service, \
            TwinClient(service.endpoints["query"], timeout_s=10) as client:
        sub = Subscriber(service.endpoints["pub"], ["posterior/arm-7/"])
        assert client.snapshot("arm-7").extra["version"] == 0
        with RobotLink(service.endpoints["ingest"], "arm-7") as link:
            sent = stream(EmulatedRobot(robot, {**robot.nominal(), "body_mass:forearm": 0.75}, seed=1),
                          link, 0.6, 50, rate_hz=0)
        versions, deadline = [], time.monotonic() + 900  # the first window compiles the update kernels
        while not versions or versions[-1] < 1:
            assert time.monotonic() < deadline, f"no new posterior published, only versions {versions}"
            versions += [e.message.extra["version"] for e in sub.recv(10.0)]
        sub.close()
        snap = client.snapshot("arm-7").extra
        stored = service.metrics()["chunks_stored"]
    assert sent == stored == 6
    assert snap["version"] >= 1 and snap["applied_seq"] >= 4  # chunks 0-4 made the first 0.5 s window


def test_emulate_truth_with_plans_into_the_service(tmp_path, service_model, capsys):
    """`emulate --truth` (the shipped misspecified arm2) with plans, and a robot with a bad plan, into a
    real service: every chunk stored, each with the next commands as its plan, the bad plan alone lost.
    0.3 s of telemetry completes no 0.5 s window, so no update runs."""
    any_port = "tcp://127.0.0.1:*"
    settings = ServiceSettings({"arm2": service_model.cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=tmp_path / "checkpoints"))
    with TwinService(settings, {"arm2": service_model}) as service:
        code = main(["emulate", "--robot", "arm2", "--truth", str(MISSPECIFIED_ARM2), "--endpoint",
                     service.endpoints["ingest"], "--rate", "0", "--seconds", "0.3", "--chunk-samples", "50",
                     "--seed", "2", "--plan", "--plan-seconds", "0.2"])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with RobotLink(service.endpoints["ingest"], "arm2", first_seq=3) as link:
            t = 0.3 + 0.002 * np.arange(5)
            link.send(t, np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)), plan=np.zeros((10, 3)),
                      plan_t0=float(t[-1]) + 0.002)
            link.drain(10.0)
        chunks = service.store.get_chunks("arm2")
        rejected = dict(service.ingest.rejected)
    assert code == 0 and summary["chunks"] == 3 and summary["rejected"] == summary["plans_rejected"] == 0
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    arm2 = service_model.robot
    for c in chunks[:3]:
        plan = plan_of(c)
        np.testing.assert_allclose(plan.t, (c.seq + 1) * 0.1 + 0.002 * np.arange(100))
        np.testing.assert_array_equal(plan.ctrl, excitation(arm2, 100, 2, start=50 * (c.seq + 1)))
    assert plan_of(chunks[3]) is None and chunks[3].n == 5          # its telemetry kept, its plan dropped
    assert link.stats.plans_rejected == 1 and link.stats.rejected == 0 and link.stats.acked == 1
    assert rejected == {"bad_plan": 1}
