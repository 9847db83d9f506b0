"""Checks of the Brax twin against truth: native MuJoCo, physical direction, finite differences.

Each check returns plain figures (dicts of floats) so that tests can assert
on them and `twin-bayes check-sim --json` can print them.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.sim.native import native_rollout
from twin_bayes.sim.robot import Robot
from twin_bayes.sim.rollout import simulate

# Horizon (s) of the native agreement check, and its tolerance (rad).
# Humanoids: 0.2 s with contacts; MJX and MuJoCo run the same solver to the
# same tolerance (1e-8), so differences stay at solver round-off, far below 1e-4.
AGREEMENT = {"arm2": (1.0, 1e-3), "servo_pendulum": (1.0, 1e-3), "humanoid": (0.2, 1e-4),
             "humanoid_fixed": (0.2, 1e-4)}
SETTINGS_KINDS = ("servo_kp", "servo_vin")


def start_state(robot: Robot) -> tuple[np.ndarray, np.ndarray]:
    """A start state (q0, qd0): the MJCF's qpos0; a floating base stands with its feet on the floor."""
    q0 = np.array(robot.mj_model.qpos0, dtype=np.float64)
    if robot.name == "humanoid":
        q0[2] = 1.29  # feet spheres 3 mm into the floor: contacts from the first step
    return q0, np.zeros(robot.nv)


def random_commands(robot: Robot, steps: int, seed: int) -> np.ndarray:
    """A fixed random command sequence (steps, nu) that excites the robot without saturating it."""
    rng = np.random.default_rng(seed)
    if robot.actuator.name == "dc_servo":  # goal positions: a smoothed random walk (rad)
        return np.cumsum(rng.normal(0, 0.08, (steps, robot.nu)), axis=0)
    scale = 0.3 if robot.name.startswith("humanoid") else 1.0
    return rng.normal(0, scale, (steps, robot.nu))


def perturbed(robot: Robot, seed: int, spread: float = 0.3) -> dict[str, float]:
    """Nominal parameters with each positive one scaled by U(1 − spread, 1 + spread), offsets and latency nonzero."""
    rng = np.random.default_rng(seed)
    theta = robot.nominal()
    for s in robot.specs:
        if s.kind in SETTINGS_KINDS:
            continue
        if s.kind == "latency_s":
            theta[s.name] = rng.uniform(0.3, 0.8) * robot.dt
        elif s.kind == "sensor_bias":
            theta[s.name] = rng.uniform(-0.02, 0.02)
        elif s.kind.startswith("body_com"):
            theta[s.name] = rng.uniform(-0.005, 0.005)
        else:
            theta[s.name] = s.nominal * rng.uniform(1 - spread, 1 + spread)
    return theta


def agreement(robot: Robot, seeds=(0, 1, 2)) -> dict[str, float]:
    """Max |q_brax − q_native| (rad) over the check horizon, nominal and perturbed parameters."""
    horizon, tol = AGREEMENT.get(robot.name, (1.0, 1e-3))
    steps = int(round(horizon / robot.dt))
    q0, qd0 = start_state(robot)
    out = {"horizon_s": horizon, "tolerance_rad": tol}
    for label, theta in [("nominal", robot.nominal())] + [(f"perturbed_{s}", perturbed(robot, s)) for s in seeds]:
        u = random_commands(robot, steps, seed=len(out))
        q, _ = robot.rollout(theta, q0, qd0, u)
        qn, _ = native_rollout(robot, theta, q0, qd0, u)
        out[f"max_abs_err_{label}"] = float(np.abs(np.asarray(q) - qn).max())
        out[f"motion_range_{label}"] = float(np.ptp(qn, axis=0).max())
    out["max_abs_err"] = max(v for k, v in out.items() if k.startswith("max_abs_err_"))
    out["ok"] = out["max_abs_err"] < tol
    return out


def _loss(robot: Robot, free: tuple[int, ...], steps: int, theta0, q0, qd0, u, x):
    """Scalar trajectory loss used for gradient checks: weighted sum of positions and velocities."""
    theta = theta0.at[np.asarray(free)].set(x)
    q, qd = simulate(robot, theta, q0, qd0, u, free=free, state_grad=False)
    w = jnp.linspace(0.5, 1.5, steps)[:, None]
    return jnp.sum(w * jnp.sin(q)) + 0.1 * jnp.sum(w * qd)


def gradient_check(robot: Robot, names=None, steps: int = 100, seed: int = 0, rel_step: float = 1e-6):
    """Autodiff gradient against central finite differences, per parameter.

    Returns {name: {"ad", "fd", "rel_err"}} with rel_err = |ad − fd| / max(|fd|, 1e-8).
    Default names: every parameter except the known-per-recording settings.
    """
    names = names or [n for n, s in zip(robot.param_names, robot.specs) if s.kind not in SETTINGS_KINDS]
    free = tuple(robot.layout.index[n] for n in names)
    theta0 = jnp.asarray(robot.to_vector(perturbed(robot, seed, spread=0.1)))
    q0, qd0 = start_state(robot)
    u = jnp.asarray(random_commands(robot, steps, seed))
    f = jax.jit(partial(_loss, robot, free, steps, theta0, jnp.asarray(q0), jnp.asarray(qd0), u))
    x = theta0[np.asarray(free)]
    ad = np.asarray(jax.grad(f)(x))
    out = {}
    for i, name in enumerate(names):
        h = rel_step * max(abs(float(x[i])), 1e-3)
        e = jnp.zeros_like(x).at[i].set(h)
        fd = float((f(x + e) - f(x - e)) / (2 * h))
        out[name] = {"ad": float(ad[i]), "fd": fd, "rel_err": abs(ad[i] - fd) / max(abs(fd), 1e-8)}
    return out


def _swing(robot: Robot, theta, q0, qd0, u):
    q, qd = robot.rollout(theta, q0, qd0, u)
    return np.asarray(q), np.asarray(qd)


def directions(robot: Robot) -> dict[str, dict]:
    """Physical direction checks on arm2 (mass, damping) and servo_pendulum (kt, Coulomb friction).

    Each entry records the two compared figures and whether the ordering holds.
    """
    out = {}
    if robot.name == "arm2":
        hang = np.array([np.pi / 2, 0.0])          # hanging straight down: equilibrium
        pulse = np.zeros((500, 2))
        pulse[:50] = [2.0, 1.0]                     # 0.1 s torque pulse (N·m)
        amp = {}
        for scale in (1.0, 1.5):
            th = {"body_mass:upper_arm": 1.0 * scale, "body_mass:forearm": 0.6 * scale}
            amp[scale] = float(np.abs(_swing(robot, th, hang, np.zeros(2), pulse)[0] - hang).max())
        out["heavier_links_swing_slower"] = {"amp_nominal": amp[1.0], "amp_heavier": amp[1.5],
                                             "ok": amp[1.5] < amp[1.0]}
        kick, rest = np.array([3.0, -3.0]), np.zeros((500, 2))
        speed = {}
        for d in (0.05, 0.5):
            qd = _swing(robot, {"dof_damping:shoulder": d, "dof_damping:elbow": d}, hang, kick, rest)[1]
            speed[d] = float(np.abs(qd[-100:]).mean())
        out["more_damping_decays_faster"] = {"speed_low": speed[0.05], "speed_high": speed[0.5],
                                             "ok": speed[0.5] < speed[0.05]}
    if robot.name == "servo_pendulum":
        step = np.full((60, 1), 0.5)
        reach = {}
        for kt in (0.4, 0.8):
            q = _swing(robot, {"servo_kt:servo": kt}, np.zeros(1), np.zeros(1), step)[0][:, 0]
            reach[kt] = float((np.argmax(q >= 0.9 * q.max()) + 1) * robot.dt)
        out["larger_kt_tracks_step_faster"] = {"t90_low_kt": reach[0.4], "t90_high_kt": reach[0.8],
                                               "ok": reach[0.8] < reach[0.4]}
        stop = {}
        for fc in (0.02, 0.2):   # servo unpowered (kp = 0): a kicked pendulum swings down to rest
            th = {"servo_kp:servo": 0.0, "servo_friction_coulomb:servo": fc}
            qd = _swing(robot, th, np.array([0.5]), np.array([3.0]), np.zeros((600, 1)))[1]
            moving = np.nonzero(np.abs(qd[:, 0]) > 0.05)[0]
            stop[fc] = float((moving[-1] + 1) * robot.dt) if len(moving) else 0.0
        out["more_friction_stops_sooner"] = {"stop_s_low": stop[0.02], "stop_s_high": stop[0.2],
                                             "ok": stop[0.2] < stop[0.02]}
    return out
