"""The real XL330 servo pendulum (../shared/data/bam_xl330): friction model classes, whole-log fits, model error.

Skipped where the logs are absent (the model-error estimate on synthetic paths runs everywhere).
The full study is `experiments/xl330_real.py`.
"""

import jax
import numpy as np
import pytest

from twin_bayes import Twin
from twin_bayes.cli import evaluate_trajectory
from twin_bayes.config import load_config
from twin_bayes.data import read_trajectory
from twin_bayes.data.shared import bam_logs
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
def test_short_whole_log_fit_beats_the_prior_on_a_held_out_log_and_its_bands_widen_with_model_error(logs):
    fit, test = logs
    twin = Twin(load_config("xl330_coulomb"))
    rec = whole_log.stack(twin.model, [fit.window(0, 401)])       # the first 2 s of one kp = 100 log
    short = test.window(0, 401)
    before = evaluate_trajectory(twin, short, draws_per_particle=2)
    res = whole_log.fit(twin.model, rec, adam_steps=40, newton_steps=1)
    twin.restore(whole_log.particles(res, jax.random.PRNGKey(0), 16), 1)
    after = evaluate_trajectory(twin, short, draws_per_particle=2)
    assert after["mae_q"] < 0.85 * before["mae_q"]
    assert res.temper > 10.0                                       # open-loop residuals are autocorrelated
    twin.model_error = fit_model_error(res.residuals, rec.mask, rec.settings, twin.model.robot.dt)
    banded = evaluate_trajectory(twin, short, draws_per_particle=2)
    assert banded["coverage90"] > after["coverage90"]
    assert 0.0 < twin.model_error.sd[0] < 0.5 and twin.model_error.time_const_s > 0.0


@needs_logs
@pytest.mark.slow   # the study's fit on all eight fit logs: minutes on 2 cores
def test_whole_log_fit_beats_the_published_coulomb_viscous_mae_with_calibrated_bands():
    twin = Twin(load_config("xl330_coulomb"))
    fit_logs = [read_trajectory(p) for kp in (100, 200) for p in bam_logs(kp=kp)]
    rec = whole_log.stack(twin.model, fit_logs)
    res = whole_log.fit(twin.model, rec)
    twin.restore(whole_log.particles(res, jax.random.PRNGKey(0), 32), 1)
    twin.model_error = fit_model_error(res.residuals, rec.mask, rec.settings, twin.model.robot.dt)
    scores = [evaluate_trajectory(twin, read_trajectory(p)) for p in bam_logs(kp=400)]
    assert np.mean([s["mae_q"] for s in scores]) < 0.0631
    assert 0.85 <= np.mean([s["coverage90"] for s in scores]) <= 0.97
    summary = twin.posterior.summary()
    assert 0.1 <= summary["servo_kt:servo"]["mean"] <= 3.0 and 0.5 <= summary["servo_R:servo"]["mean"] <= 5.0
