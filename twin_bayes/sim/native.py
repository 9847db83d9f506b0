"""Native MuJoCo reference rollouts (`mujoco.mj_step`) for checking the Brax twin.

The same parameter values are written into a copy of the robot's `MjModel`
(`Robot.model_with`); for actuator models that need the state (servos), the
same actuator formula is evaluated each step on the native state.
"""
from __future__ import annotations

import mujoco
import numpy as np

from twin_bayes.sim.robot import Robot
from twin_bayes.sim.rollout import delay_commands


def native_rollout(robot: Robot, theta, q0, qd0, commands, model: mujoco.MjModel | None = None):
    """Simulate commands (T, nu) with mj_step from measured q0 (nq,), qd0 (nv,).

    Returns q (T, nq), qd (T, nv) as the sensors report them (bias included).
    `model` lets callers reuse a model already written with theta.
    """
    vec = robot.to_vector(theta)
    m = model if model is not None else robot.model_with(vec)
    d = mujoco.MjData(m)
    bias = np.asarray(robot.layout.sensor_bias(vec))
    act = {k: np.asarray(v) for k, v in robot.layout.actuator_params(vec).items()}
    u = np.asarray(delay_commands(np.asarray(commands, np.float64), robot.layout.latency(vec), robot.dt))
    qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr
    d.qpos[:] = np.asarray(q0, np.float64) - bias
    d.qvel[:] = np.asarray(qd0, np.float64)
    qs, qds = np.empty((len(u), m.nq)), np.empty((len(u), m.nv))
    for t, ut in enumerate(u):
        if robot.actuator.needs_state:
            ut = np.asarray(robot.actuator.torque(ut, d.qpos[qadr] + bias[qadr], d.qvel[dofadr], act))
        d.ctrl[:] = ut
        mujoco.mj_step(m, d)
        qs[t], qds[t] = d.qpos + bias, d.qvel
    return qs, qds
