"""Closed-loop rollouts: the policy computes each command from the measured state.

`twin_rollout` runs inside the Brax twin (MJX pipeline under `lax.scan`,
differentiable in the policy); `real_rollout` runs the same controller on native
MuJoCo with the robot's hidden true parameters and sensor noise (the "real
robot"). Both delay each command by the task's `delay` control steps (command
latency). Sensor bias is: the controller sees q + bias, as the robot does.
A floating base also feeds its (noise-free) IMU reading to the balance reflex,
and the task's push acts on its root body; on the real robot an `estimator` may
replace that reading with one it computes from the measured sensors.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax.mjx import pipeline

from twin_bayes.policy.controller import Policy, Task, base_reading, command, feedforward, gains, tracking_cost
from twin_bayes.sim.robot import Robot
from twin_bayes.sim.rollout import system


def twin_rollout(robot: Robot, theta, policy: Policy, task: Task, sensor_noise=None):
    """Closed loop on the twin with parameters theta (P,): q (T, nu), qd (T, nu), u (T, nu), base (T, B).

    q, qd are the actuated joints' true state after each step, base the base
    reading there; u the commands sent, each acting `task.delay` steps later
    (the scan carries the commands sent so far, (T, nu)). `sensor_noise`
    (eq (T, nu), eqd (T, nu)), if given, is added to what the controller measures.
    """
    sys = system(robot, theta)
    bias = robot.layout.sensor_bias(theta)
    act = robot.layout.actuator_params(theta)
    qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr
    kp, kd = gains(policy, task)
    base = _base(task)

    def step(carry, xs):
        state, sent = carry
        t, ff, q_ref, qd_ref, eq, eqd, push = xs
        q, qd = state.q[qadr] + bias[qadr] + eq, state.qd[dofadr] + eqd
        u = command(ff, kp, kd, q_ref, qd_ref, q, qd, policy.base_gain, base(state.q, state.qd))
        sent = sent.at[t].set(u)
        acting = sent[jnp.maximum(t - task.delay, 0)]
        tau = robot.actuator.torque(acting, q, qd, act) if robot.actuator.needs_state else acting
        state = pipeline.step(sys, state.replace(xfrc_applied=state.xfrc_applied.at[1].set(push)), tau)
        return (state, sent), (state.q[qadr], state.qd[dofadr], u, base(state.q, state.qd))

    if sensor_noise is None:
        sensor_noise = (jnp.zeros_like(task.q_ref), jnp.zeros_like(task.qd_ref))
    ff = feedforward(policy, task)
    carry = (pipeline.init(sys, task.q0, task.qd0), jnp.zeros_like(ff))
    xs = (jnp.arange(ff.shape[0]), ff, task.q_ref, task.qd_ref, *sensor_noise, task.push)
    _, out = jax.lax.scan(step, carry, xs)
    return out


def _base(task: Task):
    """The base reading (B,) of a state (q, qd) for the task: the IMU's for a floating base, none otherwise."""
    if task.base_scale.shape[0]:
        return base_reading
    return lambda q, qd: q[:0]


class Run(NamedTuple):
    """One real run, numpy arrays: the actuated joints' true state after each step q, qd (T, nu) and the
    commands sent u (T, nu); what the sensors read before each command, the whole state q_meas (T, nq),
    qd_meas (T, nv) (so that a floating base's run is telemetry too); base (T, B) the base reading after
    each step."""

    q: np.ndarray
    qd: np.ndarray
    u: np.ndarray
    q_meas: np.ndarray
    qd_meas: np.ndarray
    base: np.ndarray


def real_rollout(robot: Robot, truth, policy: Policy, task: Task, seed: int = 0,
                 noise: dict[str, float] | None = None,
                 estimator: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Run:
    """The controller on native MuJoCo under `truth` ({name: value} or (P,)), with Gaussian sensor noise;
    each command acts `task.delay` steps after it is sent.

    `noise` holds the sd of q (rad) and qd (rad/s) readings (default 0.002, 0.02) and of any MJCF
    sensor's (by name, its unit; 0 where not given). `estimator`, if given, computes the base reading the
    balance reflex acts on: before command t it is called as estimator(sensors (nsensordata,), base (B,))
    with the measured readings of step t − 1 (`sim.sensors` models under truth, delays included, then
    noise drawn from their own generator; at t = 0 those of a forward pass at the start state) and the
    exact base reading at state t, and returns the reading (B,) to act on. run.base stays the exact one.
    """
    noise = {"q": 0.002, "qd": 0.02} if noise is None else noise
    vec = robot.to_vector(truth)
    m = robot.model_with(vec)
    d = mujoco.MjData(m)
    bias = np.asarray(robot.layout.sensor_bias(vec))
    act = {k: np.asarray(v) for k, v in robot.layout.actuator_params(vec).items()}
    qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr
    ff = np.asarray(feedforward(policy, task))
    kp, kd = (np.asarray(g) for g in gains(policy, task))
    q_ref, qd_ref = np.asarray(task.q_ref), np.asarray(task.qd_ref)
    base_gain, push = np.asarray(policy.base_gain), np.asarray(task.push)
    base = _base(task)
    delay = int(task.delay)
    rng = np.random.default_rng(seed)
    d.qpos[:], d.qvel[:] = np.asarray(task.q0), np.asarray(task.qd0)
    if estimator is not None:
        read = _sensing(robot, vec, noise, seed)
        mujoco.mj_forward(m, d)
    T = ff.shape[0]
    run = Run(*(np.empty(ff.shape) for _ in range(3)), np.empty((T, m.nq)), np.empty((T, m.nv)),
              np.empty((T, base_gain.shape[1])))
    for t in range(T):
        run.q_meas[t] = d.qpos + bias + rng.normal(0.0, noise.get("q", 0.0), m.nq)
        run.qd_meas[t] = d.qvel + rng.normal(0.0, noise.get("qd", 0.0), m.nv)
        q, qd = run.q_meas[t, qadr], run.qd_meas[t, dofadr]
        exact = base(d.qpos, d.qvel)
        reflex = exact if estimator is None else estimator(read(d.sensordata), exact)
        run.u[t] = command(ff[t], kp, kd, q_ref[t], qd_ref[t], q, qd, base_gain, reflex)
        acting = run.u[max(t - delay, 0)]
        tau = robot.actuator.torque(acting, q, qd, act) if robot.actuator.needs_state else acting
        d.ctrl[:] = np.asarray(tau)
        d.xfrc_applied[1] = push[t]
        mujoco.mj_step(m, d)
        run.q[t], run.qd[t], run.base[t] = d.qpos[qadr], d.qvel[dofadr], base(d.qpos, d.qvel)
    return run


def _sensing(robot: Robot, vec: np.ndarray, noise: dict[str, float], seed: int):
    """reading(raw (nsensordata,)) -> measured (nsensordata,): the sensor models of vec (P,) on the raw
    readings passed so far (as many as the longest delay needs), plus Gaussian noise of sd noise[<sensor>]."""
    layout = robot.layout.sensors
    sd = np.zeros(layout.nsensordata)
    for sensor in layout.sensors:
        sd[sensor.adr: sensor.adr + sensor.dim] = noise.get(sensor.name, 0.0)
    keep = math.ceil(float(np.max(layout.delays(vec), initial=0.0)) / robot.dt) + 1
    rng, raw = np.random.default_rng([seed, 1]), []

    def reading(row: np.ndarray) -> np.ndarray:
        raw.append(row.copy())
        del raw[:-keep]
        return layout.apply(vec, np.asarray(raw), robot.dt)[-1] + sd * rng.standard_normal(sd.shape)
    return reading


def real_cost(robot: Robot, truth, policy: Policy, task: Task, seed: int = 0, noise=None) -> float:
    """Tracking cost of one run on the real robot."""
    run = real_rollout(robot, truth, policy, task, seed, noise)
    return run_cost(run, task)


def run_cost(run: Run, task: Task) -> float:
    """Tracking cost of a real run."""
    return float(tracking_cost(jnp.asarray(run.q), jnp.asarray(run.u), jnp.asarray(run.base), task))
