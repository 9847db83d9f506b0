"""What an emulated robot really is: true values of the twin's parameters, plus what the twin's model
class leaves out (docs/EMULATOR.md).

A truth file, once parsed (`parse_truth`), is a `Truth`: `params` {parameter name: value} for every
parameter of the robot's map (those not named keep their nominal values); `misspecified`, the
physics no twin config can estimate (friction loss on joints whose MJCF has none, backlash) and the
sensor's coloured noise and resolution; `noise`, the sensor noise sds it sets (q, qd and MJCF sensors
by name: `[sensor] <name>_sd`).
"""
from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

#: [misspecified] kinds: `<kind>:<joint>` -> unit.
MISSPECIFIED_KINDS = {"dof_frictionloss": "N·m", "backlash": "rad"}
#: [sensor] keys -> unit.
SENSOR_KEYS = {"q_sd": "rad", "qd_sd": "rad/s", "ar1": "1", "q_resolution": "rad"}
_TABLES = ("misspecified", "sensor")


@dataclass(frozen=True)
class Misspecification:
    """What the emulator adds beyond the twin's model class.

    frictionloss {joint: N·m}: MuJoCo friction loss added to the joint in the native model.
    backlash {joint: b rad}: the joint is read through a play of width b (`NativeRobot`).
    noise_ar1: per-sample AR(1) coefficient ρ of the sensor noise, 0 <= ρ < 1 (0: white).
    q_resolution: encoder step Δ (rad) of reported positions, 0: none.
    """

    frictionloss: Mapping[str, float] = field(default_factory=dict)
    backlash: Mapping[str, float] = field(default_factory=dict)
    noise_ar1: float = 0.0
    q_resolution: float = 0.0

    @property
    def none(self) -> bool:
        """True when the emulator is exactly the twin's model class."""
        return not (self.frictionloss or self.backlash or self.noise_ar1 or self.q_resolution)


@dataclass(frozen=True)
class Truth:
    """params {name: value} (every parameter of the robot), the misspecification, and the sensor
    noise sds {"q": rad, "qd": rad/s} the file sets (channels it leaves out keep the config's)."""

    params: dict[str, float]
    misspecified: Misspecification = Misspecification()
    noise: dict[str, float] = field(default_factory=dict)


def scalar_joint(m: mujoco.MjModel, name: str) -> tuple[int, int] | None:
    """(qpos address, dof address) of the hinge or slide joint `name`, None if there is none."""
    j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
    if j < 0 or int(m.jnt_type[j]) not in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
        return None
    return int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])


def _number(where: str, key: str, value, low: float = 0.0, high: float = math.inf) -> float:
    """value as a float in [low, high) (high excluded only when finite); ValueError naming it otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low <= value and (value < high or high == math.inf)):
        span = f">= {low}" if high == math.inf else f"in [{low}, {high})"
        raise ValueError(f"{where}: {key} = {value!r} must be a number {span}")
    return float(value)


def parse_truth(data: Mapping, robot, where: str = "<truth>") -> Truth:
    """Validate a parsed truth file against `robot` (a Robot); ValueError naming every problem found first."""
    params = {k: v for k, v in data.items() if k not in _TABLES}
    try:
        robot.check_names(params)
    except KeyError as e:
        raise ValueError(f"{where}: {e.args[0]} (tables allowed: {list(_TABLES)})") from None
    bad = [k for k, v in params.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: value(s) of {bad} must be finite numbers")
    truth = dict(robot.nominal())
    truth.update({k: float(v) for k, v in params.items()})
    for table in _TABLES:
        if table in data and not isinstance(data[table], Mapping):
            raise ValueError(f"{where}: {table} must be a table ([{table}])")
    sensor = dict(data.get("sensor", {}))
    mjcf = {f"{n}_sd": n for n in robot.layout.sensors.by_name}
    unknown = sorted(set(sensor) - set(SENSOR_KEYS) - set(mjcf))
    if unknown:
        raise ValueError(f"{where}: [sensor] has no key(s) {unknown}; known: {list(SENSOR_KEYS) + list(mjcf)}")
    got = {k: _number(f"{where} [sensor]", k, v, high=1.0 if k == "ar1" else math.inf) for k, v in sensor.items()}
    per_joint: dict[str, dict[str, float]] = {kind: {} for kind in MISSPECIFIED_KINDS}
    for key, value in data.get("misspecified", {}).items():
        kind, _, joint = key.partition(":")
        if kind not in MISSPECIFIED_KINDS or scalar_joint(robot.mj_model, joint) is None:
            joints = [mujoco.mj_id2name(robot.mj_model, mujoco.mjtObj.mjOBJ_JOINT, j)
                      for j in range(robot.mj_model.njnt)]
            raise ValueError(f"{where}: [misspecified] {key!r}: expected <kind>:<joint> with kind one of "
                             f"{list(MISSPECIFIED_KINDS)} and a hinge or slide joint of {robot.name} {joints}")
        if key in robot.param_names:
            raise ValueError(f"{where}: [misspecified] {key!r} is a parameter of the {robot.name} twin; "
                             "give its true value at the top level")
        per_joint[kind][joint] = _number(f"{where} [misspecified]", key, value)
    spec = Misspecification(per_joint["dof_frictionloss"], per_joint["backlash"],
                            got.get("ar1", 0.0), got.get("q_resolution", 0.0))
    noise = {ch: got[f"{ch}_sd"] for ch in ("q", "qd") if f"{ch}_sd" in got}
    noise.update({name: got[key] for key, name in mjcf.items() if key in got})
    return Truth(truth, spec, noise)


def colored_noise(rng: np.random.Generator, previous: np.ndarray | None, n: int, k: int, sd: float,
                  ar1: float) -> np.ndarray:
    """n samples (n, k) of stationary AR(1) noise e_t = ρ e_(t-1) + √(1 − ρ²) · w_t, w_t ~ N(0, sd²),
    continuing from `previous` (k,), the last sample of the previous call (None: start stationary,
    e_0 = w_0). sd is the marginal sd; ρ = 0 draws white noise exactly as rng.normal(0, sd, (n, k))."""
    w = rng.normal(0.0, sd, (n, k))
    if ar1 == 0.0:
        return w
    out, c = np.empty_like(w), math.sqrt(1.0 - ar1 * ar1)
    e = w[0] if previous is None else ar1 * previous + c * w[0]
    out[0] = e
    for t in range(1, n):
        e = ar1 * e + c * w[t]
        out[t] = e
    return out


def read_truth(path: str | Path, robot) -> Truth:
    """A truth TOML file (docs/EMULATOR.md): `"<parameter>" = value` lines (parameters not named keep
    their nominal values), optional [misspecified] and [sensor] tables. ValueError on anything else."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    return parse_truth(data, robot, str(path))
