"""The real XL330 servo pendulum (../shared/data/bam_xl330): friction model classes, whole-log fits, model error.

Skipped where the logs are absent (the model-error estimate on synthetic paths runs everywhere).
The full study is `experiments/xl330_real.py`.
"""

import json
import time

import jax
import numpy as np
import pytest

from twin_bayes import Twin
from twin_bayes.cli import evaluate_trajectory, main
from twin_bayes.config import load_config
from twin_bayes.data import read_trajectory
from twin_bayes.data.npz import write_npz
from twin_bayes.data.shared import bam_logs
from twin_bayes.diagnostics import load_netcdf
from twin_bayes.inference import whole_log
from twin_bayes.inference.discrepancy import ar1_paths, fit_model_error
from twin_bayes.sim.actuators import SERVO_TORQUE_OFF
from twin_bayes.sim.native import native_rollout

needs_logs = pytest.mark.skipif(not bam_logs(kp=400), reason="XL330 logs (../shared/data/bam_xl330) absent")


def test_model_error_estimate_recovers_sd_time_constant_and_gain_exponent():
    dt, tau, sd, beta = 0.005, 1.5, 0.05, 0.6
    kp = np.array([100.0, 200.0])
    paths = [np.asarray(ar1_paths(jax.random.PRNGKey(i), np.array([sd * (k / 100.0) ** beta]),
                               float(np.exp(-dt / tau)), (200, 1200, 1))) for i, k in enumerate(kp)]
    settings = np.repeat(np.stack([kp, np.full(2, 7.4)], 1), 200, axis=0)
    me = fit_model_error(np.concatenate(paths), np.ones((400, 1200)), settings, dt)
    assert me.scale([100.0, 7.4])[0] == pytest.approx(sd, rel=0.1)
    assert me.time_const_s == pytest.approx(tau, rel=0.2)
    assert me.gain[0] == pytest.approx(beta, abs=0.1) and me.gain[1] == 0.0   # vin did not vary


@pytest.fixture(scope="module")
def logs():
    fit = read_trajectory(bam_logs(kp=100)[0])
    test = read_trajectory(bam_logs(kp=400)[0])
    return fit, test


@needs_logs
def test_richest_friction_class_matches_native_mujoco_and_opposes_motion(logs):
    _, test = logs
    robot = load_config("xl330_load").load_robot()
    assert robot.grad_mode == "reverse"          # friction in the actuator: no constraint rows
    theta = robot.nominal()
    theta.update({"servo_kp:servo": 400.0, "servo_kt:servo": 1.0, "servo_R:servo": 2.0,
                  "servo_friction_stribeck:servo": 0.05, "servo_friction_load:servo": 0.05})
    u = test.ctrl[:200]
    q, qd = (np.asarray(a) for a in robot.rollout(theta, test.q[0], test.qd[0], u))
    q_native, _ = native_rollout(robot, theta, test.q[0], test.qd[0], u)
    assert np.max(np.abs(q - q_native)) < 1e-9
    act = robot.layout.actuator_params(robot.to_vector(theta))
    frictionless = {k: v * 0 if "friction" in k else v for k, v in act.items()}
    at_goal_moving = (np.zeros(1), np.zeros(1), np.array([2.0]))      # goal = q, ω = 2 rad/s
    braking = float(robot.actuator.torque(*at_goal_moving, frictionless)[0])
    rubbing = float(robot.actuator.torque(*at_goal_moving, act)[0])
    assert rubbing < braking < 0.0      # friction adds to the back-EMF braking, against the motion
    off = (np.array([SERVO_TORQUE_OFF]), np.zeros(1), np.array([2.0]))   # driver disconnected
    assert float(robot.actuator.torque(*off, frictionless)[0]) == 0.0
    assert float(robot.actuator.torque(*off, act)[0]) < 0.0             # friction alone


@needs_logs
def test_short_whole_log_fit_by_cli_beats_the_prior_and_its_saved_model_error_widens_the_bands(logs, tmp_path,
                                                                                              capsys):
    fit, test = logs
    short = test.window(0, 401)                                    # 2 s of a held-out kp = 400 log
    write_npz(tmp_path / "fit.npz", fit.window(0, 401))            # the first 2 s of one kp = 100 log
    write_npz(tmp_path / "test.npz", short)
    before = evaluate_trajectory(Twin(load_config("xl330_coulomb")), short)
    post = tmp_path / "posterior"
    assert main(["fit", "--config", "xl330_coulomb", "--engine", "whole-log", "--adam-steps", "40",
                 "--data", str(tmp_path / "fit.npz"), "--out", str(post), "--json"]) == 0
    info = json.loads((post / "summary.json").read_text())["info"]
    assert info["temper_autocorrelation_steps"] > 10.0               # open-loop residuals are autocorrelated
    assert load_netcdf(post / "posterior.nc").attrs["engine"] == "whole-log"
    saved = json.loads((post / "model_error.json").read_text())
    assert 0.0 < saved["sd_rad"][0] < 0.5 and saved["time_const_s"] > 0.0
    capsys.readouterr()

    def evaluate() -> tuple:
        code = main(["evaluate", "--config", "xl330_coulomb", "--posterior", str(post), "--data",
                     str(tmp_path / "test.npz"), "--json"])
        return code, capsys.readouterr()

    code, banded = evaluate()
    assert code == 0
    (post / "model_error.json").write_text('{"sd_rad": [0.01]}')        # truncated: refused, not ignored
    code, refused = evaluate()
    assert code == 2 and "model_error.json" in refused.err and "time_const_s" in refused.err
    (post / "model_error.json").unlink()
    code, plain = evaluate()
    banded, plain = (json.loads(x.out)["overall"] for x in (banded, plain))
    assert plain["mae_q"] < 0.85 * before["mae_q"] and banded["mae_q"] == pytest.approx(plain["mae_q"], rel=0.05)
    assert banded["coverage90"] > plain["coverage90"]
    lo, hi = banded["coverage90_if_calibrated"]            # one 2 s recording of ~1 s error: a wide range
    assert 0.5 < lo < 0.85 and 0.95 < hi <= 1.0


@needs_logs
@pytest.mark.slow   # the study's fit on all eight fit logs: minutes on 2 cores
def test_whole_log_fit_beats_the_published_coulomb_viscous_mae_with_calibrated_bands():
    twin = Twin(load_config("xl330_coulomb"))
    whole_log.fit_twin(twin, [read_trajectory(p) for kp in (100, 200) for p in bam_logs(kp=kp)])
    scores = [evaluate_trajectory(twin, read_trajectory(p)) for p in bam_logs(kp=400)]
    assert np.mean([s["mae_q"] for s in scores]) < 0.0631
    assert 0.85 <= np.mean([s["coverage90"] for s in scores]) <= 0.95
    summary = twin.posterior.summary()
    assert 0.1 <= summary["servo_kt:servo"]["mean"] <= 3.0 and 0.5 <= summary["servo_R:servo"]["mean"] <= 5.0


def _served(tmp_path, cfg, log, done):
    """Replay log through a service of cfg (as robot xl330, 0.1 s chunks, as fast as acked) until
    done(robot twin, its stored windows); returns both, and the service's stored posterior version."""
    from twin_bayes.service.replay import replay
    from twin_bayes.service.robot_link import RobotLink
    from twin_bayes.service.server import ServiceSettings, TwinService
    from twin_bayes.service.worker import WorkerSettings, stored_windows
    any_port = "tcp://127.0.0.1:*"
    settings = ServiceSettings({"xl330": cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=None))
    with TwinService(settings) as service:
        with RobotLink(service.endpoints["ingest"], "xl330") as link:
            replay([log], link, chunk_samples=20, speed=0)
        rt, deadline = service.worker.robots["xl330"], time.monotonic() + 1800
        cuts = stored_windows(service.store.get_chunks("xl330"), rt.twin.model)
        while not done(rt, cuts):
            assert time.monotonic() < deadline and not service.worker.error, (rt.windows, service.worker.error)
            time.sleep(0.5)
        return rt, cuts, service.store.latest_posterior_version("xl330")


@needs_logs
@pytest.mark.slow   # the servo twin's update kernels compile for minutes on 2 cores
def test_a_log_replayed_through_the_service_gives_the_offline_posterior_of_the_same_windows(tmp_path):
    cfg = load_config("xl330_coulomb")
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"consolidate_after_s": 0.0})})
    log = read_trajectory(bam_logs(kp=100)[0])                  # 6 s: six 1 s windows of ten 0.1 s chunks
    rt, cuts, _ = _served(tmp_path, cfg, log, lambda rt, cuts: rt.windows == len(cuts))
    live, scores = rt.twin.posterior, rt.calibration.as_dict()
    # windows of 201 samples share their boundary sample; the log's remainder waits for more data
    assert len(cuts) >= 2 and {len(c.q) for c in cuts} == {201} and cuts[0].settings["servo_kp"] == 100.0
    offline = Twin(cfg)
    for c in cuts:
        offline.update({"q": c.q, "qd": c.qd, "ctrl": c.ctrl, "settings": c.settings})
    np.testing.assert_allclose(live.values, offline.posterior.values, rtol=1e-9)
    assert live.version == offline.posterior.version >= 1 and rt.consolidation == {}
    assert scores["n_batches"] == len(cuts) - 1    # each window scores the prediction published before it


@needs_logs
@pytest.mark.slow   # the servo twin's update kernels compile for minutes on 2 cores
def test_a_paused_xl330_stream_is_consolidated_into_the_whole_log_fit_of_the_log(tmp_path):
    """The shipped XL330 configs consolidate (`consolidate_after_s`): once the replayed log pauses, the
    service's posterior and model error are the whole-log fit of the log."""
    cfg = load_config("xl330_coulomb")
    log = read_trajectory(bam_logs(kp=100)[0])
    rt, cuts, stored = _served(tmp_path, cfg, log, lambda rt, cuts: rt.windows == len(cuts)
                               and rt.consolidation.get("windows") == rt.windows)
    assert rt.consolidation["error"] == "" and rt.consolidation["recordings"] == 1
    assert stored.version == rt.twin.posterior.version == rt.consolidation["version"] == len(cuts) + 1
    offline = Twin(cfg)
    whole_log.fit_twin(offline, [log])        # every sample, the last second waiting for a window too
    np.testing.assert_allclose(rt.twin.posterior.values, offline.posterior.values, rtol=1e-6)
    np.testing.assert_allclose(rt.twin.model_error.sd, offline.model_error.sd, rtol=1e-6)
