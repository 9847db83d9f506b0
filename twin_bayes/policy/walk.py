"""A walking controller for the floating `humanoid`: a phase clock, a mirror-symmetric linear policy on the
torso's state, PD to the joint targets it sets, run batched on native MuJoCo (`mujoco.rollout`).

Policy (`WalkPolicy`): every `CONTROL_STEPS` physics steps (3 ms each) the controller reads the measured
state, forms the balance features b (9,) (`balance_features`), normalises them by fixed physical scales
(`OBS_SCALE`), and sets joint targets around the standing posture (rad):
    right leg (hip x, z, y, knee) = stand + W_side · f(b, φ)
    left leg = stand + W_side · f(mirror b, φ + π)
    abdomen (y, z, x) = stand + ½ (W_centre · f(b, φ) + s ∘ W_centre · f(mirror b, φ + π))
(s: the abdomen's mirror signs; the arms hold the standing posture) with f (26,) = [normalised b (9),
sin φ, cos φ, sin 2φ, cos 2φ, 1, and six of b times sin φ and cos φ (foot placement that depends on the
phase)], φ = 2π·gait_hz·t. The command is u = clip(kp·(target − q) − kd·q̇, ±0.4) (control units; the
motors' gears make torques of them). Mirror symmetry halves the parameters (182) and makes the gait the
same on both legs.

Episode (`simulate`): from standing (`policy.tasks.standing_posture`), sensor noise on every reading,
command latency (linear interpolation, as `sim.latency.delay_commands`); it ends when the torso (root body)
is below `FALL_HEIGHT`. Reward per control period: forward (world x) displacement of the torso (m) +
(ALIVE − EFFORT·mean (u/0.4)²)·period (s).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import mujoco
import numpy as np
from mujoco import rollout

from twin_bayes.policy import ars
from twin_bayes.policy.tasks import deadbeat_kd, standing_posture
from twin_bayes.sim.checks import start_state
from twin_bayes.sim.robot import Robot
from twin_bayes.sim import truth as truth_file

FALL_HEIGHT = 1.0          # m: the torso's height (standing 1.29) below which the humanoid has fallen
CONTROL_STEPS = 2          # physics steps per command (6 ms: 167 Hz)
GAIT_HZ = 1.5              # strides per second of the phase clock (3 steps per second)
KP = 3.0                   # command units per rad (× gear 25-300 N·m per unit)
ALIVE, EFFORT = 3.0, 0.1   # reward per second alive; weight of the mean squared command (of its range)
NOISE = {"q": 0.002, "qd": 0.02}   # sensor noise sd (rad or m, rad/s or m/s), as the project's real robots
# The tracking cost's scales (as the `policy.tasks` humanoid tasks): joint error 0.1 rad; base tilt 0.05,
# its rate 0.5 rad/s.
JOINT_SCALE, BASE_SCALE = 0.1, np.array([0.05, 0.05, 0.5, 0.5])
FORMAT, VERSION = "twin-bayes walking controller", 1

RIGHT = ("right_hip_x", "right_hip_z", "right_hip_y", "right_knee")
LEFT = tuple(n.replace("right", "left") for n in RIGHT)
CENTRE = ("abdomen_y", "abdomen_z", "abdomen_x")
# Under the mirror (reflection y -> -y) the MJCF's leg joints keep their values (their axes are mirrored);
# abdomen yaw and roll change sign.
CENTRE_SIGN = np.array([1.0, -1, -1])
# Balance features: tilt toward torso x, toward y, roll rate, pitch rate, yaw rate, height, forward and
# lateral velocity (heading frame), yaw; PARITY is their sign under the mirror.
FEATURES = ("tilt_x", "tilt_y", "rate_x", "rate_y", "rate_z", "height", "v_forward", "v_lateral", "yaw")
PARITY = np.array([1.0, -1, -1, 1, -1, 1, 1, -1, -1])
GATED = np.array([0, 1, 2, 3, 6, 7])   # features also multiplied by sin φ and cos φ (foot placement by phase)
N_FEATURES = len(FEATURES) + 5 + 2 * len(GATED)
# The features' normalisation b_n = (b − OBS_MEAN) / OBS_SCALE: fixed physical scales (a tilt of 0.1, a rate
# of 1 rad/s, 5 cm of height about 1.25 m, 0.5 m/s forward, 0.3 m/s sideways, 0.2 rad of yaw), so that a
# designed gait prior keeps its meaning while ARS trains (running moments would rescale it each iteration).
OBS_MEAN = np.array([0.0, 0, 0, 0, 0, 1.25, 0, 0, 0])
OBS_SCALE = np.array([0.1, 0.1, 1.0, 1.0, 1.0, 0.05, 0.5, 0.3, 0.2])


class WalkPolicy(NamedTuple):
    """side (4, 26) and centre (3, 26): rad per feature; obs_mean, obs_std (9,): the balance features'
    normalisation; gait_hz, kp (command per rad), kd (command per rad/s): fixed by the trainer."""

    side: np.ndarray
    centre: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray
    gait_hz: float
    kp: float
    kd: float

    def flat(self) -> np.ndarray:
        """The trained parameters (182,)."""
        return np.concatenate([self.side.ravel(), self.centre.ravel()])

    def with_flat(self, theta: np.ndarray) -> "WalkPolicy":
        """The policy with parameters theta (182,)."""
        n = self.side.size
        return self._replace(side=theta[:n].reshape(self.side.shape), centre=theta[n:].reshape(self.centre.shape))


def gait_prior(robot: Robot) -> WalkPolicy:
    """The starting gait: hips swing ±0.25 rad, each knee flexes up to 0.3 rad in its swing (a Fourier fit of
    −0.3·max(0, cos φ)); no balance feedback yet; normalisation `OBS_MEAN`, `OBS_SCALE`; kd half the
    `deadbeat_kd`."""
    side = np.zeros((len(RIGHT), N_FEATURES))
    sin1, cos1, cos2, bias = 9, 10, 12, 13   # columns of f
    side[2, sin1] = -0.25
    side[3, [bias, cos1, cos2]] = [-0.095, -0.15, -0.064]
    q0 = start_state(robot)[0]
    q0[robot.layout.act_qadr] = standing_posture(robot)
    return WalkPolicy(side, np.zeros((len(CENTRE), N_FEATURES)), OBS_MEAN, OBS_SCALE, GAIT_HZ, KP,
                      0.5 * deadbeat_kd(robot, q0))


def balance_features(q: np.ndarray, qd: np.ndarray) -> np.ndarray:
    """The features `FEATURES` (E, 9) of free-base states q (E, nq), qd (E, nv) (root first: position,
    quaternion w x y z; world linear velocity, body angular velocity)."""
    w, x, y, z = q[:, 3], q[:, 4], q[:, 5], q[:, 6]
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    c, s = np.cos(yaw), np.sin(yaw)
    vx, vy = qd[:, 0], qd[:, 1]
    return np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), qd[:, 3], qd[:, 4], qd[:, 5], q[:, 2],
                     c * vx + s * vy, -s * vx + c * vy, yaw], axis=1)


def _inputs(b: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """f (E, 26) from normalised features b (E, 9) and phases (E,) (rad): b, sin φ, cos φ, sin 2φ, cos 2φ, 1,
    b[GATED]·sin φ, b[GATED]·cos φ."""
    s, c = np.sin(phase)[:, None], np.cos(phase)[:, None]
    clock = np.concatenate([s, c, np.sin(2 * phase)[:, None], np.cos(2 * phase)[:, None], np.ones_like(s)], axis=1)
    return np.concatenate([b, clock, b[:, GATED] * s, b[:, GATED] * c], axis=1)


class Joints(NamedTuple):
    """Where the policy's joints are: actuator indices of RIGHT, LEFT, CENTRE; the actuated joints' qpos and
    dof addresses (nu,); standing posture, joint range low, high (nu,) (rad)."""

    right: np.ndarray
    left: np.ndarray
    centre: np.ndarray
    qadr: np.ndarray
    dofadr: np.ndarray
    stand: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, robot: Robot) -> "Joints":
        names = [robot.mj_model.actuator(i).name for i in range(robot.nu)]
        idx = lambda group: np.array([names.index(n) for n in group])  # noqa: E731
        jnt = robot.mj_model.actuator_trnid[:, 0]
        rng = robot.mj_model.jnt_range[jnt]
        return cls(idx(RIGHT), idx(LEFT), idx(CENTRE), robot.layout.act_qadr, robot.layout.act_dofadr,
                   standing_posture(robot), rng[:, 0], rng[:, 1])


def targets(policy: WalkPolicy, joints: Joints, thetas: np.ndarray, q: np.ndarray, qd: np.ndarray,
            t: float) -> np.ndarray:
    """Joint targets (E, nu) (rad) of E policies with parameters thetas (E, 182) at measured q (E, nq),
    qd (E, nv), time t (s)."""
    b = (balance_features(q, qd) - policy.obs_mean) / policy.obs_std
    phase = np.full(len(q), 2 * np.pi * policy.gait_hz * t)
    f_right, f_left = _inputs(b, phase), _inputs(b * PARITY, phase + np.pi)
    n = policy.side.size
    side = thetas[:, :n].reshape(-1, *policy.side.shape)
    centre = thetas[:, n:].reshape(-1, *policy.centre.shape)
    out = np.repeat(joints.stand[None], len(q), axis=0)
    out[:, joints.right] += np.einsum("ejf,ef->ej", side, f_right)
    out[:, joints.left] += np.einsum("ejf,ef->ej", side, f_left)
    out[:, joints.centre] += 0.5 * (np.einsum("ejf,ef->ej", centre, f_right)
                                    + CENTRE_SIGN * np.einsum("ejf,ef->ej", centre, f_left))
    return np.clip(out, joints.low, joints.high)


def commands(policy: WalkPolicy, joints: Joints, target: np.ndarray, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
    """PD commands (E, nu), clipped to the control range ±0.4, toward target (E, nu) from measured q, qd."""
    return np.clip(policy.kp * (target - q[:, joints.qadr]) - policy.kd * qd[:, joints.dofadr], -0.4, 0.4)


class Outcome(NamedTuple):
    """E episodes: reward (E,); distance (m, torso x displacement), fell (bool), seconds (until the end or
    the fall), energy (J, Σ_steps Σ_joints |τ·q̇|·dt), tracking (mean squared normalised joint error from the
    targets + mean squared command + mean squared normalised base reading) (E,); steps: physics steps
    simulated; when recorded (else None) the true state at every physics step, qpos (E, T+1, nq) and qvel
    (E, T+1, nv) (NaN after a fall), and the commands sent, sent (E, T, nu) (each acts after the latency)."""

    reward: np.ndarray
    distance: np.ndarray
    fell: np.ndarray
    seconds: np.ndarray
    energy: np.ndarray
    tracking: np.ndarray
    steps: int
    qpos: np.ndarray | None
    qvel: np.ndarray | None
    sent: np.ndarray | None

    def figures(self, i: int) -> dict:
        """Episode i's figures as `policy run` prints them."""
        return {"distance_m": float(self.distance[i]), "falls": int(self.fell[i]), "seconds": float(self.seconds[i]),
                "mean_speed_m_s": float(self.distance[i] / self.seconds[i]), "energy_j": float(self.energy[i]),
                "tracking_cost": float(self.tracking[i])}


def simulate(robot: Robot, models: list, policy: WalkPolicy, thetas: np.ndarray, seconds: float, seeds,
             latency_s=None, noise_sd=None, record: bool = False, threads: int | None = None) -> Outcome:
    """E episodes of `seconds`, episode e on models[e] (MjModel) with parameters thetas[e] (182,), sensor
    noise from seed seeds[e] with sd noise_sd[e] = (q, qd) (default `NOISE`) and command latency
    latency_s[e] (s, default 0), on `threads` threads (default all cores)."""
    m0, joints = robot.mj_model, Joints.of(robot)
    E, nq, nv, dt = len(models), m0.nq, m0.nv, robot.dt
    periods = int(round(seconds / (dt * CONTROL_STEPS)))
    latency = np.zeros(E) if latency_s is None else np.asarray(latency_s, np.float64)
    sd = np.tile([NOISE["q"], NOISE["qd"]], (E, 1)) if noise_sd is None else np.asarray(noise_sd, np.float64)
    noise = [np.random.default_rng(s).standard_normal((periods, nq + nv)) for s in seeds]
    noise = np.stack(noise) * np.concatenate([np.repeat(sd[:, :1], nq, 1), np.repeat(sd[:, 1:], nv, 1)], 1)[:, None]
    torque_per_unit = np.stack([m.actuator_gear[:, 0] * m.actuator_gainprm[:, 0] for m in models])
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    q0 = start_state(robot)[0]
    q0[joints.qadr] = joints.stand
    state = np.zeros((E, mujoco.mj_stateSize(m0, spec)))
    state[:, 1:1 + nq] = q0
    sent = np.zeros((E, periods * CONTROL_STEPS, robot.nu))   # commands per physics step, as sent
    whole = np.floor(latency / dt).astype(int)
    frac = latency / dt - whole
    alive, out_seconds = np.ones(E, bool), np.full(E, periods * CONTROL_STEPS * dt)
    reward, energy, tracking = np.zeros(E), np.zeros(E), np.zeros(E)
    steps = 0
    qpos = np.full((E, len(sent[0]) + 1, nq), np.nan) if record else None
    qvel = np.full((E, len(sent[0]) + 1, nv), np.nan) if record else None
    if record:
        qpos[:, 0], qvel[:, 0] = q0, 0.0
    datas = [mujoco.MjData(m0) for _ in range(threads or os.cpu_count() or 1)]
    for k in range(periods):
        live = np.flatnonzero(alive)
        if not len(live):
            break
        q, qd = state[live, 1:1 + nq], state[live, 1 + nq:1 + nq + nv]
        meas = noise[live, k]
        q_meas, qd_meas = q + meas[:, :nq], qd + meas[:, nq:]
        target = targets(policy, joints, thetas[live], q_meas, qd_meas, k * CONTROL_STEPS * dt)
        u = commands(policy, joints, target, q_meas, qd_meas)
        rows = k * CONTROL_STEPS + np.arange(CONTROL_STEPS)
        sent[live[:, None], rows[None]] = u[:, None]
        now = np.maximum(rows[None] - whole[live, None], 0)
        before = np.maximum(now - 1, 0)
        f = frac[live, None, None]
        acting = (1 - f) * sent[live[:, None], now] + f * sent[live[:, None], before]
        traj, _ = rollout.rollout([models[e] for e in live], datas, state[live], acting, persistent_pool=True)
        steps += len(live) * CONTROL_STEPS
        qd_steps = traj[:, :, 1 + nq:1 + nq + nv][:, :, joints.dofadr]
        energy[live] += np.abs(torque_per_unit[live, None] * acting * qd_steps).sum(axis=(1, 2)) * dt
        base = balance_features(q, qd)[:, :4]
        tracking[live] += (np.mean(((target - q[:, joints.qadr]) / JOINT_SCALE) ** 2, axis=1)
                           + np.mean(u ** 2, axis=1) + np.mean((base / BASE_SCALE) ** 2, axis=1))
        period = CONTROL_STEPS * dt
        reward[live] += traj[:, -1, 1] - q[:, 0] + period * (ALIVE - EFFORT * np.mean((u / 0.4) ** 2, axis=1))
        state[live] = traj[:, -1]
        fallen = (traj[:, :, 3] < FALL_HEIGHT).any(axis=1)
        out_seconds[live[fallen]] = (k + 1) * period
        alive[live[fallen]] = False
        if record:
            qpos[live[:, None], rows[None] + 1] = traj[:, :, 1:1 + nq]
            qvel[live[:, None], rows[None] + 1] = traj[:, :, 1 + nq:1 + nq + nv]
    periods_run = np.round(out_seconds / (CONTROL_STEPS * dt))
    distance = state[:, 1] - q0[0]
    return Outcome(reward, distance, ~alive, out_seconds, energy, tracking / periods_run, steps, qpos, qvel,
                   sent if record else None)


def train(robot: Robot, models: list, policy: WalkPolicy, iterations: int, seconds: float, seed: int,
          settings: ars.Settings = ars.Settings(), log=None) -> tuple[WalkPolicy, list[dict]]:
    """ARS from `policy` for `iterations`, each pair of episodes on a model drawn uniformly from `models`
    (a training distribution) with one sensor-noise seed. Returns the policy and per iteration
    {iteration, mean_return, max_return, steps}."""
    theta, history = policy.flat(), []
    for it in range(iterations):
        rng = np.random.default_rng([seed, it])
        delta, candidates = ars.perturbations(theta, rng, settings)
        pick = rng.integers(len(models), size=settings.directions)
        seeds = rng.integers(2 ** 31, size=settings.directions)
        out = simulate(robot, [models[i] for i in np.tile(pick, 2)], policy, candidates, seconds, np.tile(seeds, 2))
        theta = ars.ars_update(theta, delta, out.reward, settings)
        history.append({"iteration": it, "mean_return": float(out.reward.mean()),
                        "max_return": float(out.reward.max()), "steps": out.steps})
        if log is not None:
            log(history[-1])
    return policy.with_flat(theta), history


def save(policy: WalkPolicy, path, robot: str, metadata: dict | None = None) -> Path:
    """Write the controller as JSON: format, version, robot, gait and gains, weights, normalisation."""
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "robot": robot, "control_steps": CONTROL_STEPS,
           "features": list(FEATURES), "gait_hz": policy.gait_hz, "kp": policy.kp, "kd": policy.kd,
           "side_joints": list(RIGHT), "centre_joints": list(CENTRE), "side": policy.side.tolist(),
           "centre": policy.centre.tolist(), "obs_mean": policy.obs_mean.tolist(),
           "obs_std": policy.obs_std.tolist(), "metadata": metadata or {}}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load(path, robot: str) -> WalkPolicy:
    """Read a controller written by `save`; ValueError if the file is not one, is of another version, is
    for another robot than `robot`, or holds arrays of the wrong shape or non-finite values."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable walking controller ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a walking controller (format {FORMAT!r} expected)")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: controller format version {doc.get('version')!r}, this software reads {VERSION}")
    if doc.get("robot") != robot:
        raise ValueError(f"{path}: a controller for robot {doc.get('robot')!r}, not {robot!r}")
    shapes = {"side": (len(RIGHT), N_FEATURES), "centre": (len(CENTRE), N_FEATURES),
              "obs_mean": (len(FEATURES),), "obs_std": (len(FEATURES),)}
    try:
        arrays = {k: np.asarray(doc[k], np.float64) for k in shapes}
        scalars = {k: float(doc[k]) for k in ("gait_hz", "kp", "kd")}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt controller ({err})") from None
    for k, shape in shapes.items():
        if arrays[k].shape != shape or not np.isfinite(arrays[k]).all():
            raise ValueError(f"{path}: {k} must be finite of shape {shape}, got {arrays[k].shape}")
    if doc.get("control_steps") != CONTROL_STEPS or (arrays["obs_std"] <= 0).any():
        raise ValueError(f"{path}: corrupt controller (control_steps {doc.get('control_steps')!r}, "
                         f"obs_std must be positive)")
    return WalkPolicy(**arrays, **scalars)


def read_truth(path, robot: Robot):
    """A truth TOML file (docs/EMULATOR.md) for the walker: (params {name: value} of every parameter,
    sensor noise sd (q, qd)). ValueError for a misspecification table, which `simulate` does not emulate."""
    try:
        truth = truth_file.read_truth(path, robot)
    except OSError as err:
        raise ValueError(f"{path}: not a readable truth file ({err})") from None
    if truth.misspecified != type(truth.misspecified)():
        raise ValueError(f"{path}: the walker's real robot emulates no [misspecified] physics")
    return truth.params, (truth.noise.get("q", NOISE["q"]), truth.noise.get("qd", NOISE["qd"]))


def real_run(robot: Robot, truth, policy: WalkPolicy, seconds: float, seed: int, noise_sd=None) -> Outcome:
    """One recorded run on the real humanoid: native MuJoCo under truth ({name: value}, others nominal),
    with its `latency_s` as command latency and sensor noise sd noise_sd = (q, qd) (default `NOISE`)."""
    vec = robot.to_vector(dict(truth))
    return simulate(robot, [robot.model_with(vec)], policy, policy.flat()[None], seconds, [seed],
                    [float(robot.layout.latency(vec))], None if noise_sd is None else [noise_sd], record=True)


def predicted(robot: Robot, thetas, noise_sd, policy: WalkPolicy, seconds: float, seed: int) -> Outcome:
    """The policy on each of n parameter draws thetas (n, P) (full robot vectors, e.g. posterior particles)
    with their sensor-noise sds noise_sd (n, 2) and latencies: one run each, noise seeds seed·1000 + i."""
    thetas = np.asarray(thetas, np.float64)
    models = [robot.model_with(t) for t in thetas]
    latency = [float(robot.layout.latency(t)) for t in thetas]
    return simulate(robot, models, policy, np.tile(policy.flat(), (len(thetas), 1)), seconds,
                    [seed * 1000 + i for i in range(len(thetas))], latency, noise_sd)


def interval(outcome: Outcome, level: float = 0.9) -> dict:
    """Per figure of `Outcome.figures`: the mean and the central `level` interval over the episodes."""
    rows = [outcome.figures(i) for i in range(len(outcome.reward))]
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return {k: {"mean": float(np.mean([r[k] for r in rows])), f"q{round(100 * lo):02d}": float(np.quantile(
        [r[k] for r in rows], lo)), f"q{round(100 * hi)}": float(np.quantile([r[k] for r in rows], hi))}
            for k in rows[0]}
