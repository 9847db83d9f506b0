"""An emulated robot: native MuJoCo with hidden true parameters, sensor noise and excitation.

This is the "real robot" of tests, benchmarks and the demo: the twin never
sees `truth`, only the noisy telemetry it produces.
"""
from __future__ import annotations

import mujoco
import numpy as np

from twin_bayes.data import Trajectory
from twin_bayes.sim.native import NativeRobot, native_rollout
from twin_bayes.sim.robot import Robot
from twin_bayes.sim.truth import Misspecification, colored_noise


def excitation(robot: Robot, steps: int, seed: int, amplitude: float | None = None,
               start: int = 0) -> np.ndarray:
    """Commands (steps, nu) for steps start..start+steps that excite the dynamics: random sines per actuator.

    Torque robots get torques (N·m, around the gravity-holding level set by
    `amplitude`); servo robots get goal positions (rad).
    """
    rng = np.random.default_rng(seed)
    t = (start + np.arange(steps)) * robot.dt
    amp = amplitude if amplitude is not None else (0.8 if robot.actuator.needs_state else 2.0)
    u = np.zeros((steps, robot.nu))
    for a in range(robot.nu):
        freqs = rng.uniform(0.3, 3.0, 4)
        phases = rng.uniform(0, 2 * np.pi, 4)
        weights = rng.dirichlet(np.ones(4))
        u[:, a] = amp * (weights[None, :] * np.sin(2 * np.pi * freqs[None, :] * t[:, None] + phases)).sum(1)
    return u


def tracking_excitation(robot: Robot, truth: dict[str, float], seconds: float, seed: int, q0: np.ndarray,
                        margin: float = 0.1, bandwidth: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A start state q (nq,) (at rest) and commands (steps, nu) of a joint-space PD that makes each motor's joint
    track random sines inside its range, computed closed loop on native MuJoCo under truth, without noise:
    `emulate` given both replays the same motion open loop.

    For robots whose joints open-loop torques leave resting on their limits (a hanging leg's knee), where the
    limit's constraint makes the dynamics non-smooth. A limited joint's reference is its q0 (nq,) clipped to
    the middle third of its range, plus three sines (0.5-3 Hz, Dirichlet weights) whose summed amplitude
    reaches to `margin` of the range from the nearer end; an unlimited joint's swings 0.3 rad about q0.
    The start is q0 with each driven joint at its reference. Gains: natural frequency `bandwidth` (rad/s),
    damping ratio 0.7, on each joint's inertia at the start (mass matrix diagonal, armature included); the
    torque over the gear is clipped to the control range. Motors only (the command is the torque over the gear).
    """
    if robot.actuator.needs_state:
        raise ValueError(f"{robot.name}: tracking excitation drives motors; its actuators are servos")
    m = robot.mj_model
    joints = m.actuator_trnid[:, 0]
    qadr, dofadr, gear = m.jnt_qposadr[joints], m.jnt_dofadr[joints], m.actuator_gear[:, 0]
    lo, hi = m.jnt_range[joints].T
    limited = m.jnt_limited[joints].astype(bool)
    span = hi - lo
    ref = np.where(limited, np.clip(q0[qadr], lo + span / 3, hi - span / 3), q0[qadr])
    amp = np.where(limited, np.minimum(ref - lo, hi - ref) - margin * span, 0.3)
    rng = np.random.default_rng(seed)
    freqs, phases = rng.uniform(0.5, 3.0, (3, robot.nu)), rng.uniform(0, 2 * np.pi, (3, robot.nu))
    weights = rng.dirichlet(np.ones(3), robot.nu).T
    steps = int(round(seconds / robot.dt))
    t = np.arange(steps + 1)[:, None, None] * robot.dt
    target = ref + amp * np.sum(weights * np.sin(2 * np.pi * freqs * t + phases), 1)
    start = np.array(q0, np.float64)
    start[qadr] = target[0]
    native = NativeRobot(robot, truth, start, np.zeros(robot.nv))
    mass = np.zeros((m.nv, m.nv))
    mujoco.mj_forward(native.model, native.data)
    mujoco.mj_fullM(native.model, native.data, mass)
    inertia = np.diag(mass)[dofadr]
    kp, kd = inertia * bandwidth ** 2, 2 * 0.7 * inertia * bandwidth
    lo_u, hi_u = m.actuator_ctrlrange.T if m.actuator_ctrllimited.all() else (-np.inf, np.inf)
    u = np.empty((steps, robot.nu))
    q, qd = native.measure()
    for k in range(steps):
        u[k] = np.clip((kp * (target[k] - q[qadr]) - kd * qd[dofadr]) / gear, lo_u, hi_u)
        q, qd = (x[0] for x in native.step(u[k:k + 1]))
    return start, u


def emulate(robot: Robot, truth: dict[str, float], seconds: float, seed: int = 0,
            noise: dict[str, float] | None = None, commands: np.ndarray | None = None,
            q0: np.ndarray | None = None, settings: dict[str, float] | None = None,
            misspecified: Misspecification | None = None) -> Trajectory:
    """Record `seconds` of telemetry from native MuJoCo under `truth`.

    Sensor noise is Gaussian with sd noise["q"] (rad) and noise["qd"] (rad/s)
    on every sample, the first included. `misspecified` adds what the twin's model
    class lacks (friction loss, backlash, AR(1) noise, encoder resolution; see
    twin_bayes.sim.truth). Returns a Trajectory whose row k holds the state
    before command k acts (T = steps + 1 rows), and, where the MJCF declares sensors
    (`sim.sensors`), their readings: row k read at state k under command k, through the sensor
    models of `truth`, with white Gaussian noise of sd noise[<sensor>] (0 where not given).
    """
    noise = {"q": 0.002, "qd": 0.02} if noise is None else noise
    steps = int(round(seconds / robot.dt))
    u = excitation(robot, steps, seed) if commands is None else np.asarray(commands, np.float64)
    q_start = np.array(robot.mj_model.qpos0) if q0 is None else np.asarray(q0, np.float64)
    full = dict(truth)
    full.update({k: v for k, v in (settings or {}).items() if k in robot.layout.index})
    spec = misspecified or Misspecification()
    sensors = robot.layout.sensors.sensors
    ctrl = np.vstack([u, u[-1:]])
    if sensors:    # one step more: the last state's readings under its (held) command
        q, qd, readings = native_rollout(robot, full, q_start, np.zeros(robot.nv), ctrl, misspecified=spec,
                                         sensors=True)
        q, qd = q[:-1], qd[:-1]
    else:
        q, qd = native_rollout(robot, full, q_start, np.zeros(robot.nv), u, misspecified=spec)
    q = np.vstack([q_start, q])
    qd = np.vstack([np.zeros(robot.nv), qd])
    rng = np.random.default_rng(seed + 10_000)
    q = q + colored_noise(rng, None, len(q), robot.nq, noise.get("q", 0.0), spec.noise_ar1)
    qd = qd + colored_noise(rng, None, len(qd), robot.nv, noise.get("qd", 0.0), spec.noise_ar1)
    if spec.q_resolution:
        q = np.round(q / spec.q_resolution) * spec.q_resolution
    measured = {}
    for sensor in sensors:
        cols = readings[:, sensor.adr: sensor.adr + sensor.dim]
        measured[sensor.name] = cols + noise.get(sensor.name, 0.0) * rng.standard_normal(cols.shape)
    t = np.arange(len(q)) * robot.dt
    return Trajectory(t=t, q=q, qd=qd, ctrl=ctrl, settings=dict(settings or {}), source=f"emulated:{robot.name}:{seed}",
                      sensors=measured)
