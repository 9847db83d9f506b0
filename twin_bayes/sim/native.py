"""Native MuJoCo (`mujoco.mj_step`): reference rollouts for checking the Brax twin, and a robot
stepped chunk by chunk for the emulator.

The same parameter values are written into a copy of the robot's `MjModel`
(`Robot.model_with`); for actuator models that need the state (servos), the
same actuator formula is evaluated each step on the native state (jitted: one dispatch per step).
"""
from __future__ import annotations

import math

import jax
import mujoco
import numpy as np

from twin_bayes.sim.robot import Robot
from twin_bayes.sim.rollout import delay_commands


class NativeRobot:
    """A robot in native MuJoCo stepped incrementally: state and command history persist between calls.

    Command latency reaches back across calls (the last commands are kept), so stepping a
    command sequence in pieces gives exactly the result of stepping it whole.
    """

    def __init__(self, robot: Robot, theta, q0, qd0, model: mujoco.MjModel | None = None):
        self.robot = robot
        self.torque = jax.jit(robot.actuator.torque)
        self.data: mujoco.MjData | None = None
        self.set_params(theta, model)
        self.data.qpos[:] = np.asarray(q0, np.float64) - self.bias
        self.data.qvel[:] = np.asarray(qd0, np.float64)
        self.history = np.zeros((0, robot.nu))

    def set_params(self, theta, model: mujoco.MjModel | None = None) -> None:
        """Switch to parameters `theta` (e.g. drift), keeping the physical state (measured q shifts with bias)."""
        r = self.robot
        vec = r.to_vector(theta)
        self.model = model if model is not None else r.model_with(vec)
        old, self.data = self.data, mujoco.MjData(self.model)
        if old is not None:
            self.data.qpos[:], self.data.qvel[:], self.data.act[:] = old.qpos, old.qvel, old.act
            self.data.time = old.time
        self.bias = np.asarray(r.layout.sensor_bias(vec))
        self.latency = float(r.layout.latency(vec))
        self.act = {k: np.asarray(v) for k, v in r.layout.actuator_params(vec).items()}

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """Current q (nq,) as the sensors report it (bias included) and qd (nv,)."""
        return self.data.qpos + self.bias, self.data.qvel.copy()

    def step(self, commands) -> tuple[np.ndarray, np.ndarray]:
        """Apply commands (T, nu), one per mj_step; returns the measured q (T, nq), qd (T, nv) after each."""
        r, m, d = self.robot, self.model, self.data
        commands = np.asarray(commands, np.float64).reshape(-1, r.nu)
        keep = len(self.history)
        full = np.concatenate([self.history, commands])
        u = np.asarray(delay_commands(full, self.latency, r.dt))[keep:]
        self.history = full[-(math.ceil(self.latency / r.dt) + 1):]
        qadr, dofadr = r.layout.act_qadr, r.layout.act_dofadr
        qs, qds = np.empty((len(u), m.nq)), np.empty((len(u), m.nv))
        for t, ut in enumerate(u):
            if r.actuator.needs_state:
                ut = np.asarray(self.torque(ut, d.qpos[qadr] + self.bias[qadr], d.qvel[dofadr], self.act))
            d.ctrl[:] = ut
            mujoco.mj_step(m, d)
            qs[t], qds[t] = d.qpos + self.bias, d.qvel
        return qs, qds


def native_rollout(robot: Robot, theta, q0, qd0, commands, model: mujoco.MjModel | None = None):
    """Simulate commands (T, nu) with mj_step from measured q0 (nq,), qd0 (nv,).

    Returns q (T, nq), qd (T, nv) as the sensors report them (bias included).
    `model` lets callers reuse a model already written with theta.
    """
    return NativeRobot(robot, theta, q0, qd0, model).step(commands)
