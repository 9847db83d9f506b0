"""The parameter map: named physical quantities <-> a flat vector <-> MuJoCo model fields.

Names are `<kind>:<MJCF element name>` (`latency_s` alone). A robot whose MJCF declares
`<text name="twin_bayes.inertia" data="cholesky"/>` exposes each body's full inertial instead of
`body_mass`/`body_inertia_scale`/`body_com_*`: mass m, centre of mass c and the upper-triangular
Cholesky factor L of the mass distribution's covariance about c (Σ_c / m = L Lᵀ, m²). Positive
m and diag(L) make every value a physical body (positive mass, positive definite inertia
I_c = m (tr(LLᵀ) 1 − LLᵀ), triangle inequalities held): the log-Cholesky parametrisation of the
pseudo-inertia (Rucker & Wensing 2022) with the COM and the log-mass pulled out. A `ParamLayout` is
built once per robot from its `MjModel`; `model_fields(layout, theta)` is a pure
function from the flat vector `theta` (P,) to the full model arrays it
determines, which `twin_bayes.sim.rollout` writes into the Brax `System` with
`tree_replace` (traced by JAX) and `twin_bayes.sim.native` into a native `MjModel` (NumPy: the
emulator loads no JAX; `sim.arrays`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import mujoco
import numpy as np

from twin_bayes.sim.actuators import ActuatorModel
from twin_bayes.sim.arrays import add_at, namespace, put
from twin_bayes.sim.sensors import SensorLayout, mjcf_sensors

Array = Any   # a NumPy or a JAX array

# kind -> (unit, positive). Positive kinds get log-normal priors by default.
MODEL_KINDS: dict[str, tuple[str, bool]] = {
    "body_mass": ("kg", True),
    "body_inertia_scale": ("1", True),
    "body_com_x": ("m", False),
    "body_com_y": ("m", False),
    "body_com_z": ("m", False),
    "dof_damping": ("N·m·s/rad", True),
    "dof_armature": ("kg·m²", True),
    "dof_frictionloss": ("N·m", True),
    "actuator_gain": ("1", True),
    "geom_friction": ("1", True),
    "latency_s": ("s", True),
    "sensor_bias": ("rad", False),
    "inertial_mass": ("kg", True),
    "inertial_com_x": ("m", False),
    "inertial_com_y": ("m", False),
    "inertial_com_z": ("m", False),
    "inertial_chol_xx": ("m", True),
    "inertial_chol_yy": ("m", True),
    "inertial_chol_zz": ("m", True),
    "inertial_chol_xy": ("m", False),
    "inertial_chol_xz": ("m", False),
    "inertial_chol_yz": ("m", False),
}
# The full-inertial kinds in the order model_fields reads them: mass, COM (3), L's upper triangle (6).
INERTIAL_KINDS = ("inertial_mass", "inertial_com_x", "inertial_com_y", "inertial_com_z", "inertial_chol_xx",
                  "inertial_chol_xy", "inertial_chol_xz", "inertial_chol_yy", "inertial_chol_yz", "inertial_chol_zz")
INERTIA_MODELS = ("scale", "cholesky")
# Fields of the Brax System / MjModel that parameters write.
WRITTEN_FIELDS = (
    "body_mass", "body_inertia", "body_ipos", "body_iquat", "dof_damping", "dof_armature",
    "dof_frictionloss", "actuator_gainprm", "geom_friction",
)


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter: its kind, MuJoCo element id, nominal value and unit."""

    name: str
    kind: str
    element: str
    index: int
    nominal: float
    unit: str
    positive: bool


def _name(m: mujoco.MjModel, obj: mujoco.mjtObj, i: int) -> str:
    return mujoco.mj_id2name(m, obj, i) or ""


def _scalar_joints(m: mujoco.MjModel) -> list[tuple[int, str]]:
    """Named hinge and slide joints: (joint id, name)."""
    one_dof = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    return [(j, _name(m, mujoco.mjtObj.mjOBJ_JOINT, j)) for j in range(m.njnt)
            if int(m.jnt_type[j]) in one_dof and _name(m, mujoco.mjtObj.mjOBJ_JOINT, j)]


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, np.float64))
    return m.reshape(3, 3)


def inertial_cholesky(mass: float, inertia: np.ndarray, iquat: np.ndarray) -> np.ndarray:
    """L's upper triangle (l_xx, l_xy, l_xz, l_yy, l_yz, l_zz) (m) of a body's principal moments
    `inertia` (3,) (kg·m²) in the frame `iquat` (4,): the inverse of `body_inertial`."""
    rot = _quat_to_mat(iquat)
    i_c = rot @ np.diag(inertia) @ rot.T
    sigma = 0.5 * np.trace(i_c) * np.eye(3) - i_c                 # ∫ r rᵀ dm about the COM
    flip = np.eye(3)[::-1]
    upper = flip @ np.linalg.cholesky(flip @ (sigma / mass) @ flip) @ flip
    return upper[np.triu_indices(3)]


def body_inertial(values: Array) -> tuple[Array, Array, Array, Array]:
    """Bodies' full inertials (B, 10) in `INERTIAL_KINDS` order -> mass (B,), COM (B, 3), principal
    moments (B, 3) and the quaternion (B, 4) of the principal axes, as MuJoCo stores them."""
    xp = namespace(values)
    mass, com = values[:, 0], values[:, 1:4]
    rows, cols = np.triu_indices(3)
    chol = put(xp.zeros(values.shape[:1] + (3, 3), dtype=values.dtype), (slice(None), rows, cols), values[:, 4:])
    sigma = chol @ xp.swapaxes(chol, 1, 2)
    # Equal principal moments (a symmetric body) would make the eigenvectors' derivative 0/0: a
    # split of 1e-10 of the trace keeps it finite, changes the physics by no more than that, and
    # keeps sigma positive definite (so the triangle inequalities hold).
    trace = xp.trace(sigma, axis1=1, axis2=2)[:, None, None]
    sigma = sigma + 1e-10 * trace * xp.diag(xp.arange(3.0, dtype=values.dtype))
    eye = xp.eye(3, dtype=values.dtype)
    i_c = mass[:, None, None] * (xp.trace(sigma, axis1=1, axis2=2)[:, None, None] * eye - sigma)
    moments, axes = xp.linalg.eigh(i_c)
    axes = axes * xp.stack([xp.ones_like(mass), xp.ones_like(mass), xp.sign(xp.linalg.det(axes))], -1)[:, None, :]
    return mass, com, moments, _mat_to_quat(axes)


def _mat_to_quat(r: Array) -> Array:
    """Unit quaternions (w, x, y, z) (B, 4) of rotation matrices (B, 3, 3); per matrix the branch with
    the largest pivot."""
    xp = namespace(r)
    tr = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    root = lambda x: xp.sqrt(xp.maximum(x, 1e-12))  # noqa: E731  (finite gradients in unused branches)
    s0, s1, s2, s3 = root(1 + tr) * 2, root(1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2, \
        root(1 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2]) * 2, root(1 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2]) * 2
    e = lambda i, j: r[:, i, j]  # noqa: E731
    cands = xp.stack([
        xp.stack([s0 / 4, (e(2, 1) - e(1, 2)) / s0, (e(0, 2) - e(2, 0)) / s0, (e(1, 0) - e(0, 1)) / s0], -1),
        xp.stack([(e(2, 1) - e(1, 2)) / s1, s1 / 4, (e(0, 1) + e(1, 0)) / s1, (e(0, 2) + e(2, 0)) / s1], -1),
        xp.stack([(e(0, 2) - e(2, 0)) / s2, (e(0, 1) + e(1, 0)) / s2, s2 / 4, (e(1, 2) + e(2, 1)) / s2], -1),
        xp.stack([(e(1, 0) - e(0, 1)) / s3, (e(0, 2) + e(2, 0)) / s3, (e(1, 2) + e(2, 1)) / s3, s3 / 4], -1),
    ], 1)                                                                           # (B, 4 branches, 4)
    pivot = xp.argmax(xp.stack([tr, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], -1), axis=-1)
    q = xp.take_along_axis(cands, pivot[:, None, None], axis=1)[:, 0]
    return q / xp.linalg.norm(q, axis=-1, keepdims=True)


class ParamLayout:
    """Every parameter a robot exposes, in vector order, and the index arrays that write them.

    Built from the raw MJCF model (`base`) and the actuator model. The base
    model's arrays are kept as the reference the writes start from, so writing
    the same vector twice gives the same model.
    """

    def __init__(self, base: mujoco.MjModel, actuator: ActuatorModel,
                 actuator_defaults: Mapping[str, float | np.ndarray], inertia: str = "scale"):
        if inertia not in INERTIA_MODELS:
            raise ValueError(f"unknown inertia model {inertia!r}; choose one of {INERTIA_MODELS}")
        self.actuator = actuator
        self.inertia = inertia
        self.base = {f: np.array(getattr(base, f), dtype=np.float64) for f in WRITTEN_FIELDS}
        self.nq, self.nv, self.nu = base.nq, base.nv, base.nu
        self.act_qadr = np.array([base.jnt_qposadr[base.actuator_trnid[a, 0]] for a in range(base.nu)])
        self.act_dofadr = np.array([base.jnt_dofadr[base.actuator_trnid[a, 0]] for a in range(base.nu)])
        specs: list[ParamSpec] = []

        def add(kind: str, element: str, index: int, nominal: float, unit=None, positive=None):
            u, pos = MODEL_KINDS.get(kind, ("", True))
            specs.append(ParamSpec(f"{kind}:{element}" if element else kind, kind, element, index,
                                   float(nominal), unit or u, pos if positive is None else positive))

        for b in range(1, base.nbody):
            name = _name(base, mujoco.mjtObj.mjOBJ_BODY, b)
            if name and base.body_mass[b] > 0 and inertia == "cholesky":
                chol = inertial_cholesky(base.body_mass[b], base.body_inertia[b], base.body_iquat[b])
                for kind, value in zip(INERTIAL_KINDS, [base.body_mass[b], *base.body_ipos[b], *chol]):
                    add(kind, name, b, value)
            elif name and base.body_mass[b] > 0:
                add("body_mass", name, b, base.body_mass[b])
                add("body_inertia_scale", name, b, 1.0)
                for axis in "xyz":
                    add(f"body_com_{axis}", name, b, 0.0)
        # A dof driven by an actuator model with dof_terms gets those fields from
        # the actuator's parameters alone (two names for one sum would be unidentifiable).
        actuated = set(self.act_dofadr.tolist())
        for j, name in _scalar_joints(base):
            d = base.jnt_dofadr[j]
            for kind in ("dof_damping", "dof_armature", "dof_frictionloss"):
                covered = d in actuated and kind in actuator.dof_terms.values()
                # friction rows exist in MJX only where the MJCF has friction loss
                inert = kind == "dof_frictionloss" and base.dof_frictionloss[d] <= 0
                if not (covered or inert):
                    add(kind, name, d, getattr(base, kind)[d])
        if actuator.name == "torque":
            for a in range(base.nu):
                add("actuator_gain", _name(base, mujoco.mjtObj.mjOBJ_ACTUATOR, a), a,
                    base.actuator_gainprm[a, 0])
        for g in range(base.ngeom):
            name = _name(base, mujoco.mjtObj.mjOBJ_GEOM, g)
            if name and (base.geom_contype[g] or base.geom_conaffinity[g]):
                add("geom_friction", name, g, base.geom_friction[g, 0])
        for kind in actuator.kinds:   # a default is one number for every actuator or one per actuator
            default = np.broadcast_to(np.asarray(actuator_defaults.get(kind, actuator.defaults[kind]),
                                                 np.float64), (base.nu,))
            for a in range(base.nu):
                add(kind, _name(base, mujoco.mjtObj.mjOBJ_ACTUATOR, a), a, default[a],
                    unit=actuator.units.get(kind, ""), positive=kind not in actuator.signed)
        add("latency_s", "", 0, 0.0)
        for j, name in _scalar_joints(base):
            add("sensor_bias", name, base.jnt_qposadr[j], 0.0)
        sensors = mjcf_sensors(base)
        for sensor in sensors:
            for kind, index, nominal, unit, positive in sensor.params():
                add(kind, sensor.name, index, nominal, unit, positive)

        self.specs: tuple[ParamSpec, ...] = tuple(specs)
        self.names: tuple[str, ...] = tuple(s.name for s in specs)
        self.index = {s.name: i for i, s in enumerate(specs)}
        if len(self.index) != len(specs):
            raise ValueError("MJCF element names collide; give every body, joint, geom and actuator a unique name")
        self.nominal = np.array([s.nominal for s in specs])
        self.sensors = SensorLayout(sensors, base.nsensordata,
                                    [(i, s) for i, s in enumerate(specs) if s.element in {x.name for x in sensors}
                                     and s.kind.startswith(("bias", "scale", "misalign_", "delay_s"))])
        self._by_kind = {k: (np.array([i for i, s in enumerate(specs) if s.kind == k], dtype=np.int64),
                             np.array([s.index for s in specs if s.kind == k], dtype=np.int64))
                         for k in {s.kind for s in specs}}

    def of_kind(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the vector, MuJoCo element ids) of every parameter of `kind`."""
        empty = np.zeros(0, dtype=np.int64)
        return self._by_kind.get(kind, (empty, empty))

    def actuator_params(self, theta: Array) -> dict[str, Array]:
        """Actuator-model parameters, {kind: (nu,)}, from theta (P,)."""
        return {k: theta[self.of_kind(k)[0]] for k in self.actuator.kinds}

    def sensor_bias(self, theta: Array) -> Array:
        """Joint-position sensor bias (nq,) in rad: measured q = true q + bias."""
        pos, qadr = self.of_kind("sensor_bias")
        return put(namespace(theta).zeros(self.nq, dtype=theta.dtype), qadr, theta[pos])

    def latency(self, theta: Array) -> Array:
        """Command latency (s), a scalar."""
        return theta[self.index["latency_s"]]


def model_fields(layout: ParamLayout, theta: Array) -> dict[str, Array]:
    """The model arrays determined by theta (P,): {field name: full array}.

    Full inertials (`inertial_*`) write mass, COM, principal moments and axes (`body_inertial`);
    body_mass scales the body's inertia by the same ratio (mass distribution
    kept); body_inertia_scale multiplies the inertia alone; body_com_* offsets
    the centre of mass (m); actuator-model kinds listed in `dof_terms` add to
    the dof field of the joint their actuator drives.
    """
    xp, dt = namespace(theta), theta.dtype
    f = {k: xp.asarray(v, dtype=dt) for k, v in layout.base.items()}
    if layout.inertia == "cholesky":
        pos = np.stack([layout.of_kind(k)[0] for k in INERTIAL_KINDS], axis=1)      # (B, 10)
        ids = layout.of_kind("inertial_mass")[1]
        for field, value in zip(("body_mass", "body_ipos", "body_inertia", "body_iquat"), body_inertial(theta[pos])):
            f[field] = put(f[field], ids, value)
    ones = xp.ones(len(f["body_mass"]), dtype=dt)
    pos, ids = layout.of_kind("body_mass")
    mass_ratio = put(ones, ids, theta[pos] / f["body_mass"][ids])
    f["body_mass"] = put(f["body_mass"], ids, theta[pos])
    pos, ids = layout.of_kind("body_inertia_scale")
    f["body_inertia"] = f["body_inertia"] * (mass_ratio * put(ones, ids, theta[pos]))[:, None]
    for axis, kind in enumerate(("body_com_x", "body_com_y", "body_com_z")):
        pos, ids = layout.of_kind(kind)
        f["body_ipos"] = add_at(f["body_ipos"], (ids, axis), theta[pos])
    for kind in ("dof_damping", "dof_armature", "dof_frictionloss"):
        pos, ids = layout.of_kind(kind)
        f[kind] = put(f[kind], ids, theta[pos])
    for kind, field in layout.actuator.dof_terms.items():
        pos, _ = layout.of_kind(kind)
        f[field] = add_at(f[field], layout.act_dofadr, theta[pos])
    pos, ids = layout.of_kind("actuator_gain")
    f["actuator_gainprm"] = put(f["actuator_gainprm"], (ids, 0), theta[pos])
    pos, ids = layout.of_kind("geom_friction")
    f["geom_friction"] = put(f["geom_friction"], (ids, 0), theta[pos])
    return f


def varying_fields(layout: ParamLayout, thetas: Array) -> dict[str, Array]:
    """The model fields of parameter draws thetas (N, P) that differ between them, {field: (N, ...)} (a
    domain randomisation's table; eager, not for tracing)."""
    xp = namespace(thetas)
    per = [model_fields(layout, theta) for theta in thetas]
    fields = {k: xp.stack([f[k] for f in per]) for k in per[0]}
    return {k: v for k, v in fields.items() if float(xp.max(xp.ptp(v, axis=0))) > 0}


def physical_margins(layout: ParamLayout, theta) -> dict[str, float]:
    """How far theta (P,) is inside physics for every full-inertial body: the smallest mass (kg),
    principal moment and triangle-inequality margin I_j + I_k − I_i (kg·m²); all must be ≥ 0."""
    idx = np.stack([layout.of_kind(k)[0] for k in INERTIAL_KINDS], axis=1)
    if not idx.size:
        raise ValueError("this robot has no full-inertial parameters (MJCF text twin_bayes.inertia = cholesky)")
    mass, _, moments, _ = body_inertial(np.asarray(theta, np.float64)[idx])
    total = moments.sum(axis=1, keepdims=True)
    return {"min_mass": float(mass.min()), "min_moment": float(moments.min()),
            "min_triangle": float((total - 2 * moments).min())}
