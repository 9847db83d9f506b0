"""The parameter map: named physical quantities <-> a flat vector <-> MuJoCo model fields.

Names are `<kind>:<MJCF element name>` (`latency_s` alone). A `ParamLayout` is
built once per robot from its `MjModel`; `model_fields(layout, theta)` is a pure
JAX function from the flat vector `theta` (P,) to the full model arrays it
determines, which `twin_bayes.sim.rollout` writes into the Brax `System` with
`tree_replace` and `twin_bayes.sim.native` into a native `MjModel`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import jax.numpy as jnp
import mujoco
import numpy as np

from twin_bayes.sim.actuators import ActuatorModel

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
}
# Fields of the Brax System / MjModel that parameters write.
WRITTEN_FIELDS = (
    "body_mass", "body_inertia", "body_ipos", "dof_damping", "dof_armature",
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


class ParamLayout:
    """Every parameter a robot exposes, in vector order, and the index arrays that write them.

    Built from the raw MJCF model (`base`) and the actuator model. The base
    model's arrays are kept as the reference the writes start from, so writing
    the same vector twice gives the same model.
    """

    def __init__(self, base: mujoco.MjModel, actuator: ActuatorModel,
                 actuator_defaults: Mapping[str, float]):
        self.actuator = actuator
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
            if name and base.body_mass[b] > 0:
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
        for kind in actuator.kinds:
            for a in range(base.nu):
                add(kind, _name(base, mujoco.mjtObj.mjOBJ_ACTUATOR, a), a,
                    actuator_defaults.get(kind, actuator.defaults[kind]),
                    unit=actuator.units.get(kind, ""), positive=True)
        add("latency_s", "", 0, 0.0)
        for j, name in _scalar_joints(base):
            add("sensor_bias", name, base.jnt_qposadr[j], 0.0)

        self.specs: tuple[ParamSpec, ...] = tuple(specs)
        self.names: tuple[str, ...] = tuple(s.name for s in specs)
        self.index = {s.name: i for i, s in enumerate(specs)}
        if len(self.index) != len(specs):
            raise ValueError("MJCF element names collide; give every body, joint, geom and actuator a unique name")
        self.nominal = np.array([s.nominal for s in specs])
        self._by_kind = {k: (np.array([i for i, s in enumerate(specs) if s.kind == k], dtype=np.int64),
                             np.array([s.index for s in specs if s.kind == k], dtype=np.int64))
                         for k in {s.kind for s in specs}}

    def of_kind(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the vector, MuJoCo element ids) of every parameter of `kind`."""
        empty = np.zeros(0, dtype=np.int64)
        return self._by_kind.get(kind, (empty, empty))

    def actuator_params(self, theta: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Actuator-model parameters, {kind: (nu,)}, from theta (P,)."""
        return {k: theta[self.of_kind(k)[0]] for k in self.actuator.kinds}

    def sensor_bias(self, theta: jnp.ndarray) -> jnp.ndarray:
        """Joint-position sensor bias (nq,) in rad: measured q = true q + bias."""
        pos, qadr = self.of_kind("sensor_bias")
        return jnp.zeros(self.nq, theta.dtype).at[qadr].set(theta[pos])

    def latency(self, theta: jnp.ndarray) -> jnp.ndarray:
        """Command latency (s), a scalar."""
        return theta[self.index["latency_s"]]


def model_fields(layout: ParamLayout, theta: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """The model arrays determined by theta (P,): {field name: full array}.

    body_mass scales the body's inertia by the same ratio (mass distribution
    kept); body_inertia_scale multiplies the inertia alone; body_com_* offsets
    the centre of mass (m); actuator-model kinds listed in `dof_terms` add to
    the dof field of the joint their actuator drives.
    """
    dt = theta.dtype
    f = {k: jnp.asarray(v, dt) for k, v in layout.base.items()}
    ones = jnp.ones(len(f["body_mass"]), dt)
    pos, ids = layout.of_kind("body_mass")
    mass_ratio = ones.at[ids].set(theta[pos] / f["body_mass"][ids])
    f["body_mass"] = f["body_mass"].at[ids].set(theta[pos])
    pos, ids = layout.of_kind("body_inertia_scale")
    f["body_inertia"] = f["body_inertia"] * (mass_ratio * ones.at[ids].set(theta[pos]))[:, None]
    for axis, kind in enumerate(("body_com_x", "body_com_y", "body_com_z")):
        pos, ids = layout.of_kind(kind)
        f["body_ipos"] = f["body_ipos"].at[ids, axis].add(theta[pos])
    for kind in ("dof_damping", "dof_armature", "dof_frictionloss"):
        pos, ids = layout.of_kind(kind)
        f[kind] = f[kind].at[ids].set(theta[pos])
    for kind, field in layout.actuator.dof_terms.items():
        pos, _ = layout.of_kind(kind)
        f[field] = f[field].at[layout.act_dofadr].add(theta[pos])
    pos, ids = layout.of_kind("actuator_gain")
    f["actuator_gainprm"] = f["actuator_gainprm"].at[ids, 0].set(theta[pos])
    pos, ids = layout.of_kind("geom_friction")
    f["geom_friction"] = f["geom_friction"].at[ids, 0].set(theta[pos])
    return f
