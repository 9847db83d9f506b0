"""A walking controller for the floating `humanoid`: a designed foot-placement gait (SIMBICON-like) whose
gains augmented random search refines, run batched on native MuJoCo (`mujoco.rollout`).

Controller (`WalkPolicy`, the values of `PARAMETERS`): every `CONTROL_STEPS` physics steps (3 ms each) it
reads the measured state and, through its own (nominal) model's kinematics, the centre of mass c, the
pelvis's pitch and roll and the feet. One leg stands, the other swings; they swap every `step_s`
(a phase clock: the humanoid's feet are points, so a step's time, not a heel strike, is the event).
Torques (N·m; the command is τ / gear, clipped to ±0.4):
    torso:  τ_t = (kp·(0 − roll) − kd·ω_x, kp·(lean − pitch) − kd·ω_y,
                   kp_yaw·(0 − yaw) − kd_yaw·ω_z)
            about the world axes (ω: the torso's world angular velocity), the torque the hips put on the
            pelvis;
    swing hip, in the world: flexion  φ_s = swing_flex + cd·(c_x − p_x) + cv·v_x,
                             sideways  φ_l = ±swing_out + cd_y·(c_y − p_y) + cv_y·v_y
            (p the stance foot, v the torso's velocity; + moves the foot forward / toward +y), PD toward
            them minus the pelvis's pitch and roll;
    stance hip: −τ_t − τ_swing about each axis (the pelvis gets the torso torque);
    knees: PD to swing_knee for the first knee_lift of the swing, then to knee_extend; the stance knee to
            stance_knee; abdomen, hip yaw and arms: fixed PD to the standing posture.
This is SIMBICON's balance law (Yin, Loken & van de Panne 2007): foot placement from the centre of
mass's position and velocity over the stance foot, torso attitude through the stance hip.

Episode (`simulate`, of this controller or another: `Gait`, `policy.walk_net.WalkNet`): from standing
(`standing`), sensor noise on every reading, command latency (`sim.latency.delay_commands`); it ends
when the torso (root body) is below `FALL_HEIGHT`. Reward per control period: a·period − |Δx − a·period|
with Δx the torso's forward (world x) displacement (m) and a = `SPEED` (the most at that speed),
+ (ALIVE − EFFORT·mean (u/0.4)²)·period.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import mujoco
import numpy as np
from mujoco import rollout

from twin_bayes.policy import ars, walk_net
from twin_bayes.policy.tasks import standing_posture
from twin_bayes.sim.checks import start_state
from twin_bayes.sim.latency import delay_commands
from twin_bayes.sim.robot import Robot
from twin_bayes.sim import truth as truth_file

FALL_HEIGHT = 1.0          # m: the torso's height (standing 1.29) below which the humanoid has fallen
CONTROL_STEPS = 2          # physics steps per command (6 ms: 167 Hz)
SPEED = 0.8                # m/s: the forward speed the reward pays most for
ALIVE, EFFORT = 3.0, 0.1   # reward per second alive; weight of the mean squared command (of its range)
NOISE = {"q": 0.002, "qd": 0.02}   # sensor noise sd (rad or m, rad/s or m/s), as the project's real robots
# The tracking cost's scales (as the `policy.tasks` humanoid tasks): base tilt 0.05, its rate 0.5 rad/s.
BASE_SCALE = np.array([0.05, 0.05, 0.5, 0.5])
FORMAT, VERSION = "twin-bayes walking controller", 2

# The controller's parameters: name, designed value, unit, and the scale ARS explores it in (its flat
# coordinates are value / scale).
PARAMETERS = (
    ("step_s", 0.15, "s", 0.05),              # duration of a step (half a stride)
    ("lean", 0.08, "rad", 0.05),              # torso pitch target (forward)
    ("torso_kp", 480.0, "N·m/rad", 100.0),    # torso attitude (pitch and roll) PD, through the stance hip
    ("torso_kd", 18.0, "N·m·s/rad", 10.0),
    ("yaw_kp", 100.0, "N·m/rad", 30.0),       # torso heading PD, through the stance hip's yaw
    ("yaw_kd", 10.0, "N·m·s/rad", 3.0),
    ("swing_flex", 0.23, "rad", 0.1),         # swing thigh's forward angle from vertical ...
    ("cd", 0.52, "rad/m", 0.2),               # ... + cd·(c − p) + cv·v, sagittal
    ("cv", 0.27, "rad·s/m", 0.1),
    ("swing_out", 0.035, "rad", 0.05),        # swing thigh's outward angle ...
    ("cd_y", 0.34, "rad/m", 0.2),             # ... + cd_y·(c − p) + cv_y·v, lateral
    ("cv_y", 0.30, "rad·s/m", 0.1),
    ("swing_kp", 420.0, "N·m/rad", 100.0),    # swing hip PD, pitch
    ("swing_kd", 19.0, "N·m·s/rad", 10.0),
    ("swing_x_kp", 190.0, "N·m/rad", 50.0),   # swing hip PD, roll
    ("swing_x_kd", 2.0, "N·m·s/rad", 5.0),
    ("swing_knee", -1.39, "rad", 0.2),        # swing knee target while lifting ...
    ("knee_lift", 0.96, "1", 0.1),            # ... for this fraction of the step,
    ("knee_extend", -0.2, "rad", 0.05),       # then this
    ("stance_knee", -0.16, "rad", 0.05),
    ("knee_kp", 240.0, "N·m/rad", 50.0),      # knee PD (both legs)
    ("knee_kd", 29.0, "N·m·s/rad", 5.0),
)
NAMES = tuple(p[0] for p in PARAMETERS)
DESIGNED = np.array([p[1] for p in PARAMETERS])
SCALES = np.array([p[3] for p in PARAMETERS])
STEP_S = NAMES.index("step_s")
LOWER = {"step_s": 0.06, "knee_lift": 0.0}          # bounds a refined value is clipped to (gains: ≥ 0)
UPPER = {"knee_lift": 1.0}
# Fixed PD to the standing posture (N·m/rad, N·m·s/rad): abdomen, the swing leg's hip yaw, arms.
HOLD = {"abdomen": (200.0, 10.0), "hip_z": (50.0, 5.0), "arm": (10.0, 0.5)}
LEGS = (("right_hip_x", "right_hip_z", "right_hip_y", "right_knee"),
        ("left_hip_x", "left_hip_z", "left_hip_y", "left_knee"))
FEET = ("right_foot", "left_foot")
# Hip x (roll) and z (yaw) axes point along +x, +z on the right leg and −x, −z on the left (the MJCF
# mirrors them); hip y and knee axes are the same on both legs.
AXIS_SIGN = np.array([1.0, -1.0])


class WalkPolicy(NamedTuple):
    """The controller: the values (P,) of `PARAMETERS`, in their units."""

    values: np.ndarray

    def flat(self) -> np.ndarray:
        """ARS's coordinates (P,): value / scale."""
        return self.values / SCALES

    def with_flat(self, theta: np.ndarray) -> "WalkPolicy":
        """The policy at ARS coordinates theta (P,)."""
        return WalkPolicy(np.asarray(theta, np.float64) * SCALES)

    def as_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(NAMES, self.values)}

    def controller(self, robot: Robot, n: int) -> "Gait":
        """`simulate`'s controller for n episodes of `robot` with these values."""
        return Gait(Body.of(robot), bounded(np.tile(self.values, (n, 1))))


def designed_gait() -> WalkPolicy:
    """The designed gait (`PARAMETERS`' values), before any training."""
    return WalkPolicy(DESIGNED.copy())


def bounded(values: np.ndarray) -> np.ndarray:
    """values (E, P) with gains ≥ 0 and `LOWER` / `UPPER` applied."""
    lo = np.array([LOWER.get(n, 0.0 if n.endswith(("_kp", "_kd")) else -np.inf) for n in NAMES])
    hi = np.array([UPPER.get(n, np.inf) for n in NAMES])
    return np.clip(values, lo, hi)


class Body(NamedTuple):
    """What the controller knows of its robot (the nominal model): actuator index of each leg's hip x, z,
    y and knee (2, 4); those joints' qpos and dof addresses (2, 4); abdomen and arm actuators; every
    actuator's qpos, dof address, gear (N·m per unit) and standing angle (nu,); foot and pelvis body ids;
    the model and a scratch MjData for its kinematics."""

    leg_act: np.ndarray
    leg_q: np.ndarray
    leg_v: np.ndarray
    abdomen: np.ndarray
    arms: np.ndarray
    qadr: np.ndarray
    dofadr: np.ndarray
    gear: np.ndarray
    stand: np.ndarray
    feet: np.ndarray
    pelvis: int
    model: mujoco.MjModel
    data: mujoco.MjData

    @classmethod
    def of(cls, robot: Robot) -> "Body":
        m = robot.mj_model
        names = [m.actuator(i).name for i in range(robot.nu)]
        leg_act = np.array([[names.index(n) for n in leg] for leg in LEGS])
        qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr
        return cls(leg_act, qadr[leg_act], dofadr[leg_act],
                   np.array([i for i, n in enumerate(names) if n.startswith("abdomen")]),
                   np.array([i for i, n in enumerate(names) if "shoulder" in n or "elbow" in n]),
                   qadr, dofadr, m.actuator_gear[:, 0] * m.actuator_gainprm[:, 0], standing_posture(robot),
                   np.array([m.body(f).id for f in FEET]), m.body("pelvis").id, m, mujoco.MjData(m))

    def sense(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """From measured q (E, nq): centre of mass (E, 3) (m), torso and pelvis rotations (E, 3, 3), feet
        (E, 2, 3) (m)."""
        m, d = self.model, self.data
        com, feet = np.zeros((len(q), 3)), np.zeros((len(q), 2, 3))
        torso, pelvis = np.zeros((len(q), 3, 3)), np.zeros((len(q), 3, 3))
        for e, qe in enumerate(q):
            d.qpos[:] = qe
            mujoco.mj_kinematics(m, d)
            com[e] = m.body_mass @ d.xipos / m.body_mass.sum()
            torso[e], pelvis[e] = d.xmat[1].reshape(3, 3), d.xmat[self.pelvis].reshape(3, 3)   # body 1: the root
            feet[e] = d.xpos[self.feet]
        return com, torso, pelvis, feet


def _tilt(rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitch (about world y, + leans the body's z axis toward +x) and roll (about world x) (E,) of
    rotations (E, 3, 3)."""
    up = rot[:, :, 2]
    return np.arctan2(up[:, 0], up[:, 2]), -np.arctan2(up[:, 1], up[:, 2])


def commands(body: Body, values: np.ndarray, stance: np.ndarray, since: np.ndarray, q: np.ndarray,
             qd: np.ndarray) -> np.ndarray:
    """Commands (E, nu) (control units, ±0.4) of E controllers with parameter values (E, P) (`bounded`) at measured
    q (E, nq), qd (E, nv); stance (E,) the standing leg (0 right, 1 left), since (E,) the time in this
    step (s)."""
    p = dict(zip(NAMES, values.T))
    E, rows = len(q), np.arange(len(q))
    swing = 1 - stance
    com, rot, pelvis_rot, feet = body.sense(q)
    omega = np.einsum("eij,ej->ei", rot, qd[:, 3:6])                      # world angular velocity
    pitch, roll = _tilt(rot)
    yaw = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    pelvis_pitch, pelvis_roll = _tilt(pelvis_rot)
    torso = np.stack([p["torso_kp"] * -roll - p["torso_kd"] * omega[:, 0],
                      p["torso_kp"] * (p["lean"] - pitch) - p["torso_kd"] * omega[:, 1],
                      p["yaw_kp"] * -yaw - p["yaw_kd"] * omega[:, 2]], 1)
    offset = com[:, :2] - feet[rows, stance, :2]
    flex = p["swing_flex"] + p["cd"] * offset[:, 0] + p["cv"] * qd[:, 0]
    side = p["swing_out"] * np.where(swing == 1, 1.0, -1.0) + p["cd_y"] * offset[:, 1] + p["cv_y"] * qd[:, 1]

    def joint(leg, k):
        return q[rows, body.leg_q[leg, k]], qd[rows, body.leg_v[leg, k]]

    def pd(leg, k, target, kp, kd):
        angle, rate = joint(leg, k)
        return kp * (target - angle) - kd * rate

    sx, ss = AXIS_SIGN[swing], AXIS_SIGN[stance]
    swing_x = pd(swing, 0, sx * (side - pelvis_roll), p["swing_x_kp"], p["swing_x_kd"])
    swing_z = pd(swing, 1, body.stand[body.leg_act[swing, 1]], *HOLD["hip_z"])
    swing_y = pd(swing, 2, -flex - pelvis_pitch, p["swing_kp"], p["swing_kd"])
    lifting = since < p["knee_lift"] * p["step_s"]
    swing_knee = pd(swing, 3, np.where(lifting, p["swing_knee"], p["knee_extend"]), p["knee_kp"], p["knee_kd"])
    stance_knee = pd(stance, 3, p["stance_knee"], p["knee_kp"], p["knee_kd"])
    tau = np.zeros((E, len(body.gear)))
    for k, (sw, st) in enumerate(((swing_x, ss * (-torso[:, 0] - sx * swing_x)),
                                  (swing_z, ss * (-torso[:, 2] - sx * swing_z)),
                                  (swing_y, -torso[:, 1] - swing_y), (swing_knee, stance_knee))):
        tau[rows, body.leg_act[swing, k]] = sw
        tau[rows, body.leg_act[stance, k]] = st
    for idx, (kp, kd) in ((body.abdomen, HOLD["abdomen"]), (body.arms, HOLD["arm"])):
        tau[:, idx] = kp * (body.stand[idx] - q[:, body.qadr[idx]]) - kd * qd[:, body.dofadr[idx]]
    return np.clip(tau / body.gear, -0.4, 0.4)


class Gait(NamedTuple):
    """E designed-gait controllers on `body` with values (E, P) (`bounded`), as `simulate` runs controllers:
    called with the episodes still running live (L,), the time t (s) and their measured q (L, nq), qd (L, nv),
    it gives their commands (L, nu). The stance leg and the time in the step follow from t (`step_s`)."""

    body: Body
    values: np.ndarray

    def __call__(self, live: np.ndarray, t: float, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        values = self.values[live]
        step = np.floor(t / values[:, STEP_S] + 1e-9).astype(int)    # steps taken
        return commands(self.body, values, step % 2, t - step * values[:, STEP_S], q, qd)


def base_reading(q: np.ndarray, qd: np.ndarray) -> np.ndarray:
    """The torso's tilt toward its x and y axes and its roll and pitch rates (E, 4) of free-base states
    q (E, nq), qd (E, nv) (root first: position, quaternion w x y z; world linear velocity, body angular
    velocity)."""
    w, x, y, z = q[:, 3], q[:, 4], q[:, 5], q[:, 6]
    return np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), qd[:, 3], qd[:, 4]], axis=1)


def standing(robot: Robot) -> np.ndarray:
    """An episode's start q (nq,): standing still, feet on the floor, the joints at the standing posture."""
    q0 = start_state(robot)[0]
    q0[robot.layout.act_qadr] = standing_posture(robot)
    return q0


class Outcome(NamedTuple):
    """E episodes: reward (E,); distance (m, torso x displacement), fell (bool), seconds (until the end or
    the fall), energy (J, Σ_steps Σ_joints |τ·q̇|·dt), tracking (mean squared command + mean squared
    normalised base reading, `BASE_SCALE`) (E,); steps: physics steps
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


def simulate(robot: Robot, models: list, controller, seconds: float, seeds,
             latency_s=None, noise_sd=None, record: bool = False, threads: int | None = None) -> Outcome:
    """E episodes of `seconds`, episode e on models[e] (MjModel) under `controller` (a `Gait` of E
    controllers, or any callable (live, t, q, qd) -> commands, e.g. `WalkNet.controller`), sensor noise
    from seed seeds[e] with sd noise_sd[e] = (q, qd) (default `NOISE`) and command latency latency_s[e]
    (s, default 0), on `threads` threads (default all cores)."""
    m0, body = robot.mj_model, Body.of(robot)
    E, nq, nv, dt = len(models), m0.nq, m0.nv, robot.dt
    period = CONTROL_STEPS * dt
    periods = int(round(seconds / period))
    latency = np.zeros(E) if latency_s is None else np.asarray(latency_s, np.float64)
    sd = np.tile([NOISE["q"], NOISE["qd"]], (E, 1)) if noise_sd is None else np.asarray(noise_sd, np.float64)
    noise = [np.random.default_rng(s).standard_normal((periods, nq + nv)) for s in seeds]
    noise = np.stack(noise) * np.concatenate([np.repeat(sd[:, :1], nq, 1), np.repeat(sd[:, 1:], nv, 1)], 1)[:, None]
    torque_per_unit = np.stack([m.actuator_gear[:, 0] * m.actuator_gainprm[:, 0] for m in models])
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    q0 = standing(robot)
    state = np.zeros((E, mujoco.mj_stateSize(m0, spec)))
    state[:, 1:1 + nq] = q0
    sent = np.zeros((E, periods * CONTROL_STEPS, robot.nu))   # commands per physics step, as sent
    reach = int(np.floor(latency.max(initial=0.0) / dt)) + 1   # rows of earlier commands a latency reaches back
    alive, out_seconds = np.ones(E, bool), np.full(E, periods * period)
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
        u = controller(live, k * period, q + meas[:, :nq], qd + meas[:, nq:])
        rows = k * CONTROL_STEPS + np.arange(CONTROL_STEPS)
        sent[live[:, None], rows[None]] = u[:, None]
        lo = max(rows[0] - reach, 0)                # the live episodes' commands as columns, each its latency
        window = sent[live, lo:rows[-1] + 1].transpose(1, 0, 2).reshape(rows[-1] + 1 - lo, -1)
        acting = delay_commands(window, np.repeat(latency[live], robot.nu), dt)[rows[0] - lo:]
        acting = acting.reshape(CONTROL_STEPS, len(live), robot.nu).transpose(1, 0, 2)
        traj, _ = rollout.rollout([models[e] for e in live], datas, state[live], acting, persistent_pool=True)
        steps += len(live) * CONTROL_STEPS
        qd_steps = traj[:, :, 1 + nq:1 + nq + nv][:, :, body.dofadr]
        energy[live] += np.abs(torque_per_unit[live, None] * acting * qd_steps).sum(axis=(1, 2)) * dt
        tracking[live] += np.mean(u ** 2, axis=1) + np.mean((base_reading(q, qd) / BASE_SCALE) ** 2, axis=1)
        ahead = SPEED * period
        forward = ahead - np.abs(traj[:, -1, 1] - q[:, 0] - ahead)           # most at SPEED
        reward[live] += forward + period * (ALIVE - EFFORT * np.mean((u / 0.4) ** 2, axis=1))
        state[live] = traj[:, -1]
        fallen = (traj[:, :, 3] < FALL_HEIGHT).any(axis=1)
        out_seconds[live[fallen]] = (k + 1) * period
        alive[live[fallen]] = False
        if record:
            qpos[live[:, None], rows[None] + 1] = traj[:, :, 1:1 + nq]
            qvel[live[:, None], rows[None] + 1] = traj[:, :, 1 + nq:1 + nq + nv]
    periods_run = np.round(out_seconds / period)
    distance = state[:, 1] - q0[0]
    return Outcome(reward, distance, ~alive, out_seconds, energy, tracking / periods_run, steps, qpos, qvel,
                   sent if record else None)


def train(robot: Robot, models: list, policy: WalkPolicy, iterations: int, seconds: float, seed: int,
          settings: ars.Settings = ars.Settings(), latencies=None, log=None) -> tuple[WalkPolicy, list[dict]]:
    """ARS from `policy` for `iterations`, each pair of episodes on a model drawn uniformly from `models`
    (a training distribution: MjModels with their command latencies, latencies (s, default 0)) with one
    sensor-noise seed. Returns the policy and per iteration {iteration, mean_return, max_return, steps}."""
    latencies = np.zeros(len(models)) if latencies is None else np.asarray(latencies, np.float64)
    theta, history, body = policy.flat(), [], Body.of(robot)
    for it in range(iterations):
        rng = np.random.default_rng([seed, it])
        delta, candidates = ars.perturbations(theta, rng, settings)
        pick = np.tile(rng.integers(len(models), size=settings.directions), 2)
        seeds = rng.integers(2 ** 31, size=settings.directions)
        out = simulate(robot, [models[i] for i in pick], Gait(body, bounded(candidates * SCALES)), seconds,
                       np.tile(seeds, 2), latencies[pick])
        theta = ars.ars_update(theta, delta, out.reward, settings)
        history.append({"iteration": it, "mean_return": float(out.reward.mean()),
                        "max_return": float(out.reward.max()), "steps": out.steps})
        if log is not None:
            log(history[-1])
    return policy.with_flat(theta), history


def save(policy, path, robot: str, metadata: dict | None = None) -> Path:
    """Write a controller as JSON: format, version, robot, control period, and a `WalkPolicy`'s every
    parameter's value and unit or a `WalkNet`'s network (`policy.walk_net`)."""
    path = Path(path)
    if isinstance(policy, walk_net.WalkNet):
        head, body = {"format": walk_net.FORMAT, "version": walk_net.VERSION}, {"network": policy.as_doc()}
    else:
        head = {"format": FORMAT, "version": VERSION}
        body = {"parameters": policy.as_dict(), "units": {n: u for n, _, u, _ in PARAMETERS}}
    doc = {**head, "robot": robot, "control_steps": CONTROL_STEPS, **body, "metadata": metadata or {}}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load(path, robot: str):
    """Read a controller written by `save` (a `WalkPolicy` or a `WalkNet`); ValueError if the file is not
    one, is of another version, is for another robot than `robot` or another control period, or misses a
    parameter, holds an unknown one or a non-finite value (a network: see `walk_net.from_doc`)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable walking controller ({err})") from None
    formats = {FORMAT: VERSION, walk_net.FORMAT: walk_net.VERSION}
    if not isinstance(doc, dict) or doc.get("format") not in formats:
        raise ValueError(f"{path}: not a walking controller (format {' or '.join(map(repr, formats))} expected)")
    if doc.get("version") != formats[doc["format"]]:
        raise ValueError(f"{path}: controller format version {doc.get('version')!r}, this software reads "
                         f"{formats[doc['format']]}")
    if doc.get("robot") != robot:
        raise ValueError(f"{path}: a controller for robot {doc.get('robot')!r}, not {robot!r}")
    if doc.get("control_steps") != CONTROL_STEPS:
        raise ValueError(f"{path}: corrupt controller (control_steps {doc.get('control_steps')!r}, not "
                         f"{CONTROL_STEPS})")
    if doc["format"] == walk_net.FORMAT:
        return walk_net.from_doc(doc.get("network"), path)
    params = doc.get("parameters")
    if not isinstance(params, dict) or set(params) != set(NAMES):
        raise ValueError(f"{path}: corrupt controller (parameters must be exactly {', '.join(NAMES)})")
    try:
        values = np.array([float(params[n]) for n in NAMES])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt controller ({err})") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: non-finite parameters {[n for n, v in zip(NAMES, values) if not np.isfinite(v)]}")
    return WalkPolicy(values)


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


def real_run(robot: Robot, truth, policy, seconds: float, seed: int, noise_sd=None) -> Outcome:
    """One recorded run of a controller (`WalkPolicy` or `WalkNet`) on the real humanoid: native MuJoCo under
    truth ({name: value}, others nominal), with its `latency_s` as command latency and sensor noise sd
    noise_sd = (q, qd) (default `NOISE`)."""
    vec = robot.to_vector(dict(truth))
    return simulate(robot, [robot.model_with(vec)], policy.controller(robot, 1), seconds, [seed],
                    [float(robot.layout.latency(vec))], None if noise_sd is None else [noise_sd], record=True)


def telemetry(robot: Robot, truth, policy, seconds: float, seed: int, noise_sd=None):
    """A controller's run on the real humanoid (`real_run`) as its sensors log it: measured positions q (n, nq)
    and velocities qd (n, nv) (the true states plus sensor noise of sd noise_sd = (q, qd), default `NOISE`,
    drawn from seed + 10_000) and the command in force at each sample, ctrl (n, nu) (the last sample's: the
    last one sent); n = seconds / dt + 1 samples, fewer where the humanoid fell."""
    sd = (NOISE["q"], NOISE["qd"]) if noise_sd is None else noise_sd
    run = real_run(robot, truth, policy, seconds, seed, sd)
    n = int(np.sum(~np.isnan(run.qpos[0, :, 0])))                     # the states before a fall
    rng = np.random.default_rng(seed + 10_000)
    q = run.qpos[0, :n] + rng.normal(0.0, sd[0], (n, robot.nq))
    qd = run.qvel[0, :n] + rng.normal(0.0, sd[1], (n, robot.nv))
    return q, qd, np.concatenate([run.sent[0], run.sent[0, -1:]])[:n]


def predicted(robot: Robot, thetas, noise_sd, policy, seconds: float, seed: int) -> Outcome:
    """The controller (`WalkPolicy` or `WalkNet`) on each of n parameter draws thetas (n, P) (full robot
    vectors, e.g. posterior particles) with their sensor-noise sds noise_sd (n, 2) and latencies: one run
    each, noise seeds seed·1000 + i."""
    thetas = np.asarray(thetas, np.float64)
    models = [robot.model_with(t) for t in thetas]
    latency = [float(robot.layout.latency(t)) for t in thetas]
    return simulate(robot, models, policy.controller(robot, len(thetas)), seconds,
                    [seed * 1000 + i for i in range(len(thetas))], latency, noise_sd)


def interval(outcome: Outcome, level: float = 0.9) -> dict:
    """Per figure of `Outcome.figures`: the mean and the central `level` interval over the episodes."""
    rows = [outcome.figures(i) for i in range(len(outcome.reward))]
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return {k: {"mean": float(np.mean([r[k] for r in rows])), f"q{round(100 * lo):02d}": float(np.quantile(
        [r[k] for r in rows], lo)), f"q{round(100 * hi)}": float(np.quantile([r[k] for r in rows], hi))}
            for k in rows[0]}
