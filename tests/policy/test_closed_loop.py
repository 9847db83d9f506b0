"""Command latency in the closed loop: a command sent at step t acts at step t + delay, in the
Brax twin and on native MuJoCo alike (arm2, 0.2 s)."""
import jax
import numpy as np
import pytest

from twin_bayes.policy.closed_loop import real_rollout, twin_rollout
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.tasks import arm2_task
from twin_bayes.sim import load_robot
from twin_bayes.sim.native import native_rollout

NO_NOISE = {"q": 0.0, "qd": 0.0}
DELAY = 4


@pytest.fixture(scope="module")
def arm2():
    robot = load_robot("arm2")
    task = arm2_task(robot, seconds=0.2, knots=4)
    p0 = initial_policy(task)
    policy = p0._replace(knots=p0.knots + np.array([[0.5, -0.3], [1.0, 0.4], [-0.6, 0.8], [0.2, -0.5]]))
    return robot, task, policy


def test_twin_and_real_robot_delay_commands_alike(arm2):
    robot, task, policy = arm2
    rollout = jax.jit(twin_rollout, static_argnums=0)
    theta = robot.to_vector(robot.nominal())
    runs = {}
    for delay in (0, DELAY):
        delayed = task._replace(delay=np.int32(delay))
        q, _, u = rollout(robot, theta, policy, delayed)
        run = real_rollout(robot, robot.nominal(), policy, delayed, noise=NO_NOISE)
        np.testing.assert_allclose(q, run.q, atol=1e-6)
        np.testing.assert_allclose(u, run.u, atol=1e-6)
        runs[delay] = run
    # the latency changes what the arm does (feedback acts on stale commands)
    assert np.abs(runs[DELAY].q - runs[0].q).max() > 1e-3


def test_a_delayed_command_acts_delay_steps_later(arm2):
    robot, task, policy = arm2
    feedforward_only = policy._replace(raw_kp=policy.raw_kp - 40.0, raw_kd=policy.raw_kd - 40.0)  # gains ≈ 0
    run = real_rollout(robot, robot.nominal(), feedforward_only, task._replace(delay=np.int32(DELAY)), noise=NO_NOISE)
    acting = np.concatenate([np.repeat(run.u[:1], DELAY, axis=0), run.u[:-DELAY]])
    q, _ = native_rollout(robot, robot.nominal(), np.asarray(task.q0), np.zeros(robot.nv), acting)
    np.testing.assert_allclose(run.q, q, atol=1e-12)
