"""An emulated robot: native MuJoCo with hidden true parameters, sensor noise and excitation.

This is the "real robot" of tests, benchmarks and the demo: the twin never
sees `truth`, only the noisy telemetry it produces.
"""
from __future__ import annotations

import numpy as np

from twin_bayes.data import Trajectory
from twin_bayes.sim.native import native_rollout
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
