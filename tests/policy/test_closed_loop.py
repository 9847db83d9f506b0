"""The closed loop in the Brax twin and on native MuJoCo alike: command latency (a command sent at step t
acts at step t + delay; arm2, 0.2 s), and a floating base's balance reflex and push (the humanoid, 0.1 s)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin_bayes.policy.closed_loop import real_rollout, twin_rollout
from twin_bayes.policy.controller import base_reading, initial_policy
from twin_bayes.policy.experiment import segment_floor
from twin_bayes.policy.tasks import arm2_task, deadbeat_kd, humanoid_push_task
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
        q, _, u, _ = rollout(robot, theta, policy, delayed)
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


@pytest.mark.parametrize("angle", [0.0, 0.3, -0.5])
def test_base_reading_is_the_tilt_of_the_up_axis_and_the_body_rates(angle):
    q = np.zeros(7)
    q[3:7] = [np.cos(angle / 2), 0.0, np.sin(angle / 2), 0.0]      # pitched by `angle` about y
    qd = np.array([0, 0, 0, 0.7, -0.2, 0.1])
    np.testing.assert_allclose(base_reading(q, qd), [-np.sin(angle), 0.0, 0.7, -0.2], atol=1e-15)
    q[3:7] = [np.cos(angle / 2), np.sin(angle / 2), 0.0, 0.0]      # rolled about x
    np.testing.assert_allclose(base_reading(q, qd)[:2], [0.0, np.sin(angle)], atol=1e-15)
    np.testing.assert_allclose(base_reading(jnp.asarray(q), jnp.asarray(qd)), base_reading(q, qd), atol=1e-15)


def test_pushed_humanoid_with_a_balance_reflex_runs_alike_in_twin_and_native_mujoco():
    robot = load_robot("humanoid")
    task = humanoid_push_task(robot, seconds=0.1, force_n=200.0, at_s=0.02, for_s=0.05, knots=3)
    p0 = initial_policy(task)
    policy = p0._replace(base_gain=p0.base_gain + np.random.default_rng(0).normal(0, 0.3, p0.base_gain.shape))
    q, _, u, base = jax.jit(twin_rollout, static_argnums=0)(robot, robot.to_vector(robot.nominal()), policy, task)
    run = real_rollout(robot, robot.nominal(), policy, task, noise=NO_NOISE)
    np.testing.assert_allclose(q, run.q, atol=1e-6)
    np.testing.assert_allclose(u, run.u, atol=1e-6)
    np.testing.assert_allclose(base, run.base, atol=1e-6)
    unpushed = real_rollout(robot, robot.nominal(), policy, task._replace(push=0 * task.push), noise=NO_NOISE)
    assert np.abs(unpushed.base[:, 3] - run.base[:, 3]).max() > 1e-2      # the push tips the torso
    assert np.abs(run.u - real_rollout(robot, robot.nominal(), p0, task, noise=NO_NOISE).u).max() > 1e-3


@pytest.mark.parametrize("kd_over_deadbeat, chatters", [(0.5, False), (4.0, True)])
def test_humanoid_velocity_gain_bound_keeps_the_explicit_feedback_from_chattering(kd_over_deadbeat, chatters):
    """Above twice `deadbeat_kd` the knees' velocity flips sign every control step and grows until the
    commands saturate (4 times: the knees swing by 5 rad/s per 3 ms step); the tasks bound kd by it."""
    robot = load_robot("humanoid")
    task = humanoid_push_task(robot, seconds=0.15, force_n=0.0, knots=3)
    assert np.allclose(task.kd_max, deadbeat_kd(robot, task.q0))
    task = task._replace(kd_max=2 * kd_over_deadbeat * task.kd_max)     # initial_policy: gains at half the bound
    run = real_rollout(robot, robot.nominal(), initial_policy(task), task, seed=0)
    knee = list(robot.layout.act_dofadr).index(robot.mj_model.joint("right_knee").dofadr[0])
    step_change = np.abs(np.diff(run.qd[:, knee])).mean()      # rad/s per 3 ms step
    assert (step_change > 1.0) if chatters else (step_change < 0.1)


def test_segment_floor_is_zero_for_exact_telemetry_and_above_the_velocity_noise_for_noisy(arm2):
    """Native replays from measured segment starts under the true parameters: exact telemetry is
    reproduced exactly; noisy telemetry misses by at least its qd noise (0.02 rad/s) plus what the noisy
    starts add."""
    robot, task, policy = arm2
    truth = robot.nominal()
    assert segment_floor(robot, truth, real_rollout(robot, truth, policy, task, noise=NO_NOISE), 25) < 1e-9
    floor = segment_floor(robot, truth, real_rollout(robot, truth, policy, task, seed=0), 25)
    assert 0.02 < floor < 0.1
