"""The real XL330 servo pendulum (../shared/data/bam_xl330): friction model classes and a short fit.

Skipped where the logs are absent. The full study is `experiments/xl330_real.py`.
"""

import numpy as np
import pytest

from twin_bayes import Twin
from twin_bayes.cli import _windows, evaluate_trajectory
from twin_bayes.config import load_config
from twin_bayes.data import read_trajectory
from twin_bayes.data.shared import bam_logs
from twin_bayes.sim.actuators import SERVO_TORQUE_OFF
from twin_bayes.sim.native import native_rollout

pytestmark = pytest.mark.skipif(not bam_logs(kp=400), reason="XL330 logs (../shared/data/bam_xl330) absent")


@pytest.fixture(scope="module")
def logs():
    fit = read_trajectory(bam_logs(kp=100)[0])
    test = read_trajectory(bam_logs(kp=400)[0])
    return fit, test


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


@pytest.mark.slow   # an SVI compile through 200-step shooting segments: minutes on 2 cores
def test_short_fit_on_real_log_predicts_held_out_gain_better_than_the_prior(logs):
    fit, test = logs
    cfg = load_config("xl330_coulomb")
    twin = Twin(cfg)
    windows = _windows(twin, fit)[:3]
    short = test.window(0, 401)                     # its first 2 s
    before = evaluate_trajectory(twin, short, draws_per_particle=2)
    twin.fit(windows, engine="svi", steps=150, num_draws=32)
    after = evaluate_trajectory(twin, short, draws_per_particle=2)
    assert after["mae_q"] < before["mae_q"]
    summary = twin.posterior.summary()
    assert 0.1 <= summary["servo_kt:servo"]["mean"] <= 3.0 and 0.5 <= summary["servo_R:servo"]["mean"] <= 5.0
    assert np.isfinite(after["coverage90"]) and 0.0 <= after["coverage90"] <= 1.0
