"""Native MuJoCo (`mujoco.mj_step`): reference rollouts for checking the Brax twin, and a robot
stepped chunk by chunk for the emulator.

The same parameter values are written into a copy of the robot's `MjModel`
(`Robot.model_with`); for actuator models that need the state (servos), the
same actuator formula is evaluated each step on the native state (NumPy: no JAX is loaded).
A `Misspecification` (twin_bayes.sim.truth) adds physics outside the twin's model class: friction
loss written into the native model, and backlash between the joint and what reads it.
"""
from __future__ import annotations

import copy
import math

import mujoco
import numpy as np

from twin_bayes.sim.latency import delay_commands
from twin_bayes.sim.robot import Robot
from twin_bayes.sim.truth import Misspecification, scalar_joint


# Impedance d of the added friction-loss rows (MuJoCo's solimp[0:2]): MuJoCo's friction is a soft
# constraint, under which a joint held by friction creeps at a speed ∝ (1 − d) / d; its default
# d = 0.9 lets arm2's elbow creep 5 mrad in 1 s under a quarter of its friction, 0.9999 about 5 µrad.
FRICTION_IMPEDANCE = 0.9999


class NativeRobot:
    """A robot in native MuJoCo stepped incrementally: state and command history persist between calls.

    Command latency reaches back across calls (the last commands are kept), so stepping a
    command sequence in pieces gives exactly the result of stepping it whole.

    `misspecified.frictionloss` {joint: f N·m} is added to the native model's `dof_frictionloss`
    (native MuJoCo makes the friction rows at run time, whatever the MJCF declared), with impedance
    `FRICTION_IMPEDANCE`: a joint under a net torque below f stays still.
    `misspecified.backlash` {joint: b rad}: the joint is read, by the sensors and by a servo's
    loop alike, through a play of width b: the read angle m follows the joint angle q only when a
    flank pushes it, m_k = clip(m_(k-1), q_k − b/2, q_k + b/2) from m_0 = q_0, and its rate is q̇
    while a flank pushes (m changed in the step), 0 inside the play.
    """

    def __init__(self, robot: Robot, theta, q0, qd0, model: mujoco.MjModel | None = None,
                 misspecified: Misspecification | None = None):
        self.robot = robot
        self.misspecified = misspecified or Misspecification()
        self.data: mujoco.MjData | None = None
        self.set_params(theta, model)
        self.data.qpos[:] = np.asarray(q0, np.float64) - self.bias
        self.data.qvel[:] = np.asarray(qd0, np.float64)
        self.history = np.zeros((0, robot.nu))
        self.raw_history = np.zeros((0, self.model.nsensordata))
        self.sensordata = np.zeros((0, self.model.nsensordata))
        play = [(*scalar_joint(robot.mj_model, j), 0.5 * b) for j, b in self.misspecified.backlash.items()]
        self.play_qadr, self.play_dofadr = (np.array([p[i] for p in play], np.int64) for i in (0, 1))
        self.play_half = np.array([p[2] for p in play], np.float64)
        self.play_q = self.data.qpos[self.play_qadr].copy()   # m (true angle, bias excluded)
        self.play_qd = self.data.qvel[self.play_dofadr].copy()

    def set_params(self, theta, model: mujoco.MjModel | None = None) -> None:
        """Switch to parameters `theta` (e.g. drift), keeping the physical state (measured q shifts with bias)."""
        r = self.robot
        vec = np.asarray(r.to_vector(theta), np.float64)
        self.model = model if model is not None else r.model_with(vec)
        if self.misspecified.frictionloss:
            self.model = copy.deepcopy(self.model) if model is not None else self.model
            for joint, f in self.misspecified.frictionloss.items():
                dof = scalar_joint(self.model, joint)[1]
                self.model.dof_frictionloss[dof] += f
                self.model.dof_solimp[dof, :2] = FRICTION_IMPEDANCE
        old, self.data = self.data, mujoco.MjData(self.model)
        if old is not None:
            self.data.qpos[:], self.data.qvel[:], self.data.act[:] = old.qpos, old.qvel, old.act
            self.data.time = old.time
        self.theta = vec
        self.bias = r.layout.sensor_bias(vec)
        self.latency = float(r.layout.latency(vec))
        self.act = r.layout.actuator_params(vec)

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """Current q (nq,) as the sensors report it (bias and backlash included) and qd (nv,)."""
        q, qd = self.data.qpos + self.bias, self.data.qvel.copy()
        q[self.play_qadr] = self.play_q + self.bias[self.play_qadr]
        qd[self.play_dofadr] = self.play_qd
        return q, qd

    def _follow_play(self) -> None:
        """Move the read angles m of backlash joints with the joint just stepped."""
        q, qd = self.data.qpos[self.play_qadr], self.data.qvel[self.play_dofadr]
        m = np.clip(self.play_q, q - self.play_half, q + self.play_half)
        self.play_qd = np.where(m != self.play_q, qd, 0.0)
        self.play_q = m

    def step(self, commands) -> tuple[np.ndarray, np.ndarray]:
        """Apply commands (T, nu), one per mj_step; returns the measured q (T, nq), qd (T, nv) after each.

        `self.sensordata` (T, nsensordata) then holds the sensors' measured readings of these steps (row
        t from step t's forward pass, the sensor models of `sim.sensors` applied; delays reach back
        across calls as command latency does)."""
        r, m, d = self.robot, self.model, self.data
        commands = np.asarray(commands, np.float64).reshape(-1, r.nu)
        keep = len(self.history)
        full = np.concatenate([self.history, commands])
        u = delay_commands(full, self.latency, r.dt)[keep:]
        self.history = full[-(math.ceil(self.latency / r.dt) + 1):]
        qadr, dofadr = r.layout.act_qadr, r.layout.act_dofadr
        qs, qds = np.empty((len(u), m.nq)), np.empty((len(u), m.nv))
        raw = np.empty((len(u), m.nsensordata))
        for t, ut in enumerate(u):
            if r.actuator.needs_state:
                q_read, qd_read = self.measure()
                ut = r.actuator.torque(ut, q_read[qadr], qd_read[dofadr], self.act)
            d.ctrl[:] = ut
            mujoco.mj_step(m, d)
            raw[t] = d.sensordata
            self._follow_play()
            qs[t], qds[t] = self.measure()
        self._read(raw)
        return qs, qds

    def _read(self, raw: np.ndarray) -> None:
        """Apply the sensor models to new raw readings (T, nsensordata), with the rows kept for delays."""
        layout, keep = self.robot.layout.sensors, len(self.raw_history)
        full = np.concatenate([self.raw_history, raw])
        self.sensordata = layout.apply(self.theta, full, self.robot.dt)[keep:]
        delay = float(np.max(layout.delays(self.theta), initial=0.0))
        self.raw_history = full[-(math.ceil(delay / self.robot.dt) + 1):]


def native_rollout(robot: Robot, theta, q0, qd0, commands, model: mujoco.MjModel | None = None,
                   misspecified: Misspecification | None = None, sensors: bool = False):
    """Simulate commands (T, nu) with mj_step from measured q0 (nq,), qd0 (nv,).

    Returns q (T, nq), qd (T, nv) as the sensors report them (bias and backlash included), and with
    `sensors` the measured sensordata (T, nsensordata) too (`NativeRobot.step`).
    `model` lets callers reuse a model already written with theta.
    """
    native = NativeRobot(robot, theta, q0, qd0, model, misspecified)
    q, qd = native.step(commands)
    return (q, qd, native.sensordata) if sensors else (q, qd)
