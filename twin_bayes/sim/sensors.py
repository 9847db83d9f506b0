"""MuJoCo sensors as observed channels, and the sensor models that turn a true reading into a measured one.

The readings are MuJoCo's own `sensordata` (native `mj_step`, MJX's `forward` in the twin). Row t of a
rollout's readings is what step t's forward pass computed: the state the step starts from, under the
command that step applies (so a recording's sensor row k belongs to its state row k). The sensor
model is one formula on NumPy and JAX alike (`sim.arrays`), per sensor with its parameters
(docs/SENSORS.md):

    3-axis vector in the sensor's frame (gyro, accelerometer, force, torque):
        y = s ⊙ (R(δ)ᵀ v) + b
    framepos:   y = s ⊙ v + b
    framequat:  y = v ⊗ q(δ)
    one axis (jointpos, jointvel, actuatorfrc, jointactuatorfrc):   y = s·v + b

b bias, s scale (per axis), δ the misalignment rotation vector of the sensor's axes against its
site (rad; R(δ) = exp([δ]×), exact: Rodrigues, with its Taylor series near 0), and each sensor's
delay τ (s): the measured row t is the modelled reading at t·dt − τ, by the same fractional delay
as command latency (`latency.delay_commands`).
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from twin_bayes.sim.arrays import namespace, put
from twin_bayes.sim.latency import delay_commands

T = mujoco.mjtSensor
# MuJoCo type -> (name in configs, unit of a reading, what its model has: "frame" (bias, scale,
# misalignment), "vector" (bias, scale), "quat" (misalignment), "scalar" (bias, scale)).
SENSOR_TYPES = {
    T.mjSENS_GYRO: ("gyro", "rad/s", "frame"),
    T.mjSENS_ACCELEROMETER: ("accelerometer", "m/s²", "frame"),
    T.mjSENS_FORCE: ("force", "N", "frame"),
    T.mjSENS_TORQUE: ("torque", "N·m", "frame"),
    T.mjSENS_FRAMEPOS: ("framepos", "m", "vector"),
    T.mjSENS_FRAMEQUAT: ("framequat", "1", "quat"),
    T.mjSENS_JOINTPOS: ("jointpos", "rad", "scalar"),
    T.mjSENS_JOINTVEL: ("jointvel", "rad/s", "scalar"),
    T.mjSENS_ACTUATORFRC: ("actuatorfrc", "N·m", "scalar"),
    T.mjSENS_JOINTACTFRC: ("jointactuatorfrc", "N·m", "scalar"),
}
AXES = "xyz"


@dataclass(frozen=True)
class Sensor:
    """One MJCF sensor: name, type (config name), MuJoCo id, sensordata columns adr … adr + dim − 1,
    unit and model kind ("frame", "vector", "quat" or "scalar")."""

    name: str
    type: str
    id: int
    adr: int
    dim: int
    unit: str
    model: str

    def params(self) -> list[tuple[str, int, float, str, bool]]:
        """This sensor's parameters: (kind, index, nominal, unit, positive); index is a sensordata column
        for bias and scale, the sensor id for misalignment and delay."""
        axes = [("", self.adr)] if self.model == "scalar" else [(f"_{a}", self.adr + i) for i, a in enumerate(AXES)]
        out = []
        if self.model != "quat":
            out += [(f"bias{s}", col, 0.0, self.unit, False) for s, col in axes]
            out += [(f"scale{s}", col, 1.0, "1", True) for s, col in axes]
        if self.model in ("frame", "quat"):
            out += [(f"misalign_{a}", self.id, 0.0, "rad", False) for a in AXES]
        return out + [("delay_s", self.id, 0.0, "s", True)]


def mjcf_sensors(m: mujoco.MjModel) -> tuple[Sensor, ...]:
    """The named sensors of a model whose types twin-bayes models, in MJCF order."""
    out = []
    for i in range(m.nsensor):
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_SENSOR, i)
        kind = SENSOR_TYPES.get(mujoco.mjtSensor(m.sensor_type[i]))
        if name and kind:
            unit = kind[1]
            if kind[0] in ("jointpos", "jointvel") and m.jnt_type[m.sensor_objid[i]] == mujoco.mjtJoint.mjJNT_SLIDE:
                unit = unit.replace("rad", "m")
            out.append(Sensor(name, kind[0], i, int(m.sensor_adr[i]), int(m.sensor_dim[i]), unit, kind[2]))
    return tuple(out)


def rotation(delta):
    """R = exp([δ]×) (..., 3, 3) of rotation vectors δ (..., 3) (rad), exact; Taylor series below 0.01 rad
    so that values and derivatives are exact at δ = 0 too."""
    xp = namespace(delta)
    t2 = xp.sum(delta * delta, axis=-1)[..., None, None]
    small = t2 < 1e-4
    t = xp.sqrt(xp.where(small, 1.0, t2))
    a = xp.where(small, 1 - t2 / 6 + t2 ** 2 / 120, xp.sin(t) / t)
    b = xp.where(small, 0.5 - t2 / 24 + t2 ** 2 / 720, (1 - xp.cos(t)) / t ** 2)
    x, y, z = delta[..., 0], delta[..., 1], delta[..., 2]
    zero = xp.zeros_like(x)
    k = xp.stack([xp.stack([zero, -z, y], -1), xp.stack([z, zero, -x], -1), xp.stack([-y, x, zero], -1)], -2)
    return xp.eye(3, dtype=delta.dtype) + a * k + b * (k @ k)


def quaternion(delta):
    """Unit quaternion (w, x, y, z) (..., 4) of rotation vectors δ (..., 3), exact (Taylor below 0.01 rad)."""
    xp = namespace(delta)
    t2 = xp.sum(delta * delta, axis=-1)[..., None]
    small = t2 < 1e-4
    t = xp.sqrt(xp.where(small, 1.0, t2))
    w = xp.where(small, 1 - t2 / 8 + t2 ** 2 / 384, xp.cos(t / 2))
    s = xp.where(small, 0.5 - t2 / 48 + t2 ** 2 / 3840, xp.sin(t / 2) / t)
    return xp.concatenate([w, s * delta], -1)


def quat_mul(p, q):
    """Hamilton product p ⊗ q of quaternions (..., 4) (w, x, y, z)."""
    xp = namespace(p, q)
    pw, pv, qw, qv = p[..., :1], p[..., 1:], q[..., :1], q[..., 1:]
    return xp.concatenate([pw * qw - xp.sum(pv * qv, -1, keepdims=True),
                           pw * qv + qw * pv + xp.cross(pv, qv)], -1)


class SensorLayout:
    """Where a robot's sensor parameters sit in theta and what they act on: built by `ParamLayout`
    from the (theta position, ParamSpec) pairs of its sensor kinds."""

    def __init__(self, sensors: tuple[Sensor, ...], nsensordata: int, specs):
        self.sensors, self.nsensordata = sensors, nsensordata
        self.by_name = {s.name: s for s in sensors}
        by_id = {s.id: s for s in sensors}
        pick = lambda pre: np.array([(i, p.index) for i, p in specs if p.kind.startswith(pre)],  # noqa: E731
                                    np.int64).reshape(-1, 2)
        self.bias, self.scale, delay = pick("bias"), pick("scale"), pick("delay_s")
        self.delay_pos = np.array([i for i, sid in delay for _ in range(by_id[sid].dim)], np.int64)
        self.delay_cols = np.array([by_id[sid].adr + k for _, sid in delay for k in range(by_id[sid].dim)], np.int64)
        frames = [s for s in sensors if s.model in ("frame", "quat")]
        where = {(p.index, p.kind): i for i, p in specs if p.kind.startswith("misalign_")}
        self.misalign = np.array([[where[(s.id, f"misalign_{a}")] for a in AXES] for s in frames],
                                 np.int64).reshape(-1, 3)
        self.frame_cols = np.array([[s.adr + i for i in range(3)] for s in frames if s.model == "frame"],
                                   np.int64).reshape(-1, 3)
        self.quat_cols = np.array([[s.adr + i for i in range(4)] for s in frames if s.model == "quat"],
                                  np.int64).reshape(-1, 4)
        self._frame_of = np.array([k for k, s in enumerate(frames) if s.model == "frame"], np.int64)
        self._quat_of = np.array([k for k, s in enumerate(frames) if s.model == "quat"], np.int64)

    def columns(self, names) -> np.ndarray:
        """The sensordata columns of the named sensors, in that order."""
        return np.concatenate([np.arange(self.by_name[n].adr, self.by_name[n].adr + self.by_name[n].dim)
                               for n in names] or [np.zeros(0, np.int64)]).astype(np.int64)

    def delays(self, theta):
        """Per sensordata column, its sensor's delay (s) (nsensordata,)."""
        return put(namespace(theta).zeros(self.nsensordata, dtype=theta.dtype), self.delay_cols, theta[self.delay_pos])

    def apply(self, theta, raw, dt: float):
        """Measured readings (T, nsensordata) from true ones `raw` (T, nsensordata) under theta (P,):
        delay (per sensor, fractional, earlier rows than the first hold the first), then misalignment,
        scale and bias."""
        xp = namespace(theta, raw)
        y = delay_commands(raw, self.delays(theta), dt) if len(self.delay_pos) else raw
        if len(self.misalign):
            delta = theta[self.misalign]                                         # (F, 3)
            if len(self.frame_cols):
                rot = rotation(delta[self._frame_of])                            # (Fv, 3, 3)
                v = xp.einsum("fji,tfj->tfi", rot, y[:, self.frame_cols])        # Rᵀ v
                y = put(y, (slice(None), self.frame_cols), v)
            if len(self.quat_cols):
                quat = quaternion(delta[self._quat_of])                          # (Fq, 4)
                y = put(y, (slice(None), self.quat_cols), quat_mul(y[:, self.quat_cols], quat[None]))
        scale = put(xp.ones(self.nsensordata, dtype=theta.dtype), self.scale[:, 1], theta[self.scale[:, 0]])
        bias = put(xp.zeros(self.nsensordata, dtype=theta.dtype), self.bias[:, 1], theta[self.bias[:, 0]])
        return y * scale + bias
