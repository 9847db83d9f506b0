"""Robots: an MJCF or URDF file, its parameter layout and actuator model, and its Brax System.

Loading a robot needs MuJoCo and NumPy only (the native emulator runs on that); the Brax System and
everything JAX are built on first use (`Robot.sys`).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import difflib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import mujoco
import numpy as np

from twin_bayes.sim.actuators import ActuatorModel, get_actuator_model
from twin_bayes.sim.arrays import namespace
from twin_bayes.sim.params import ParamLayout, ParamSpec, model_fields

ROBOTS_DIR = Path(__file__).resolve().parent.parent / "robots"
SHIPPED = {
    "servo_pendulum": ROBOTS_DIR / "servo_pendulum" / "servo_pendulum.xml",
    "arm2": ROBOTS_DIR / "arm2" / "arm2.xml",
    "humanoid": ROBOTS_DIR / "humanoid" / "humanoid.xml",
    "humanoid_fixed": ROBOTS_DIR / "humanoid" / "humanoid_fixed.xml",
    "arm3": ROBOTS_DIR / "arm3" / "arm3.urdf",
    "panda": ROBOTS_DIR / "panda" / "panda.xml",
}
DESCRIPTION_SUFFIXES = (".xml", ".urdf")
ACTUATOR_KEY = "twin_bayes.actuator"
INERTIA_KEY = "twin_bayes.inertia"


@dataclass(frozen=True, eq=False)
class Robot:
    """A robot twin's simulator: immutable, hashable by identity, safe as a jit static argument.

    `mjcf_path` is the description it was loaded from (an MJCF or a URDF file).
    `mj_model` and `sys` (the Brax System, built with JAX on first use) hold the nominal
    parameters. `grad_mode` is "reverse" when the model has no constraint rows, or when its
    constraint solver takes a single (warm-started) Newton iteration per step: then
    reverse-mode autodiff passes through the scan. It is "forward" when MJX's
    iterative constraint solver runs (friction loss, joint limits, contacts):
    then gradients come from forward-mode sensitivities behind a `custom_vjp`.
    """

    name: str
    mjcf_path: Path
    mj_model: mujoco.MjModel
    layout: ParamLayout
    actuator: ActuatorModel
    dtype: np.dtype

    @functools.cached_property
    def sys(self):
        """The Brax System (MJX) of the nominal model, in `dtype`, with MJX's sensors switched off (a
        rollout that observes sensors switches them on: `sim.rollout`); native MuJoCo keeps them."""
        from twin_bayes import _jax  # noqa: F401  (float64; first, before any array)
        import jax
        import jax.numpy as jnp
        from brax.io import mjcf
        from mujoco import mjx
        # often first asked for inside a trace: computed eagerly all the same, never as tracers
        with warnings.catch_warnings(), jax.ensure_compile_time_eval():
            warnings.filterwarnings("ignore", message="Brax System, piplines and environments")  # MJX is what we use
            sys = mjcf.load_model(self.mj_model)
            sys = sys.replace(opt=sys.opt.replace(disableflags=sys.opt.disableflags | mjx.DisableBit.SENSOR))
            return jax.tree.map(lambda x: x.astype(self.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, sys)

    @functools.cached_property
    def grad_mode(self) -> str:
        import jax
        from mujoco import mjx
        with jax.ensure_compile_time_eval():
            rows = mjx.make_data(self.sys)._impl.efc_J.shape[0] > 0
        return "forward" if rows and self.mj_model.opt.iterations > 1 else "reverse"

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of everything compiled code of this robot depends on: the compiled MuJoCo model
        (with its nominal parameters and custom data), the actuator model, dtype and gradient mode."""
        buffer = np.empty(mujoco.mj_sizeModel(self.mj_model), dtype=np.uint8)
        mujoco.mj_saveModel(self.mj_model, None, buffer)
        extra = repr((self.actuator.name, str(self.dtype), self.grad_mode, self.layout.names)).encode()
        return hashlib.sha256(buffer.tobytes() + extra).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"Robot({self.name!r}, {self.fingerprint})"

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.layout.names

    @property
    def specs(self) -> tuple[ParamSpec, ...]:
        return self.layout.specs

    @property
    def dt(self) -> float:
        return float(self.mj_model.opt.timestep)

    @property
    def nq(self) -> int:
        return self.mj_model.nq

    @property
    def nv(self) -> int:
        return self.mj_model.nv

    @property
    def nu(self) -> int:
        return self.mj_model.nu

    def nominal(self) -> dict[str, float]:
        """{name: nominal value} from the MJCF and the actuator model's defaults."""
        return dict(zip(self.param_names, self.layout.nominal.tolist()))

    def to_vector(self, theta: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """Flat vector (P,) from a {name: value} dict (missing names keep nominal) or a vector."""
        if not isinstance(theta, Mapping):
            vec = namespace(theta).asarray(theta, dtype=self.dtype)
            if vec.shape[-1:] != (len(self.param_names),):
                raise ValueError(f"{self.name}: theta has shape {vec.shape}, expected (..., {len(self.param_names)})")
            return vec
        self.check_names(theta)
        vec = self.layout.nominal.copy()
        for k, v in theta.items():
            vec[self.layout.index[k]] = v
        return vec.astype(self.dtype)

    def to_dict(self, theta: np.ndarray) -> dict[str, float]:
        return dict(zip(self.param_names, np.asarray(theta, dtype=np.float64).tolist()))

    def check_names(self, names) -> None:
        """Raise KeyError naming every unknown parameter, with close matches."""
        unknown = [n for n in names if n not in self.layout.index]
        if unknown:
            def hint(n):  # close names, else every parameter of the same kind
                close = difflib.get_close_matches(n, self.param_names, 3)
                return close or [p for p in self.param_names if p.split(":")[0] == n.split(":")[0]]
            hints = {n: hint(n) for n in unknown}
            raise KeyError(f"{self.name} has no parameter(s) {unknown}; did you mean: {hints}")

    def rollout(self, theta, q0, qd0, commands):
        """Simulate commands (T, nu) from measured q0 (nq,), qd0 (nv,) in the twin (MJX): q (T, nq),
        qd (T, nv), JAX arrays."""
        commands = np.asarray(commands, self.dtype)
        if commands.ndim != 2 or commands.shape[1] != self.nu:
            raise ValueError(f"{self.name}: commands must have shape (T, {self.nu}), got {commands.shape}")
        return rollout_jit()(self, self.to_vector(theta), np.asarray(q0, self.dtype),
                              np.asarray(qd0, self.dtype), commands)

    def model_with(self, theta) -> mujoco.MjModel:
        """A native MjModel copy with theta written into the same fields as the Brax System."""
        m = _copy_model(self.mj_model)
        for field, value in model_fields(self.layout, self.to_vector(theta)).items():
            getattr(m, field)[:] = np.asarray(value, dtype=np.float64)
        return m


@lru_cache(maxsize=None)
def rollout_jit():
    """`sim.rollout.rollout` jitted (the robot static), made on first use: loading a robot imports no JAX."""
    import jax

    from twin_bayes.sim.rollout import rollout
    return jax.jit(rollout, static_argnums=0)


def _copy_model(m: mujoco.MjModel) -> mujoco.MjModel:
    return copy.deepcopy(m)


def _custom(m: mujoco.MjModel) -> tuple[dict[str, str], dict[str, float | np.ndarray]]:
    """The MJCF's <custom> declarations: texts {key: value} (actuator and inertia model) and numeric
    defaults {kind: value}, one number, or one per actuator (`data` with nu numbers)."""
    text = {}
    for i in range(m.ntext):
        adr, size = m.text_adr[i], m.text_size[i]
        text[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_TEXT, i)] = bytes(m.text_data[adr: adr + size - 1]).decode()
    numeric = {}
    for i in range(m.nnumeric):
        key = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_NUMERIC, i) or ""
        if key.startswith("twin_bayes."):
            data = np.array(m.numeric_data[m.numeric_adr[i]: m.numeric_adr[i] + m.numeric_size[i]])
            if len(data) not in (1, m.nu):
                raise ValueError(f"numeric {key}: {len(data)} values; give 1 or one per actuator ({m.nu})")
            numeric[key.removeprefix("twin_bayes.")] = float(data[0]) if len(data) == 1 else data
    return text, numeric


def load_robot(name_or_path: str | Path, actuator: str | None = None, dtype=np.float64,
               solver_iterations: int | None = None) -> Robot:
    """Load a shipped robot by name, or any MJCF (`.xml`) or URDF (`.urdf`) file by path.

    URDF is compiled by MuJoCo with static links kept (each link stays a body named as
    the link) and one torque motor (gear 1) added per hinge or slide joint, named as
    the joint (`_compile_urdf`).

    The actuator model comes from `actuator`, else the MJCF's
    `<text name="twin_bayes.actuator" data="..."/>`, else "torque".
    `solver_iterations` overrides the MJCF's constraint-solver iterations per
    step (native and MJX alike). 1 is the MuJoCo Playground setting for
    locomotion: each step takes one Newton iteration from the previous step's
    accelerations, so that gradients through contacts are reverse-mode, one
    backward pass for any number of policy or model parameters, at the price
    of a less converged contact solve than the real robot's.
    Robots are cached: the same arguments give the same object (and so
    share compiled rollouts).
    """
    path = SHIPPED.get(str(name_or_path))
    if path is None:
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() not in DESCRIPTION_SUFFIXES or not path.is_file():
            raise ValueError(f"unknown robot {str(name_or_path)!r}: not a shipped robot "
                             f"({', '.join(SHIPPED)}) and not an MJCF (.xml) or URDF (.urdf) file")
    if solver_iterations is not None and solver_iterations < 1:
        raise ValueError(f"solver_iterations must be at least 1, got {solver_iterations}")
    return _load(path.resolve(), actuator, np.dtype(dtype), solver_iterations)


def _compile_urdf(path: Path) -> mujoco.MjModel:
    """A URDF file compiled by MuJoCo, with a torque motor on every hinge and slide joint.

    MuJoCo's URDF reader fuses links joined by fixed joints into their parent unless
    told not to (`<mujoco><compiler fusestatic="false"/></mujoco>` in the file); it is
    told here, so every link keeps its name. URDF has no actuators: each 1-dof joint
    gets a motor named as the joint, control = joint torque (N·m) or force (N).
    Free (floating) joints get none.
    """
    spec = mujoco.MjSpec.from_file(str(path))
    spec.compiler.fusestatic = False
    spec.compiler.discardvisual = True
    one_dof = (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
    for joint in spec.joints:
        if joint.type in one_dof:
            motor = spec.add_actuator(name=joint.name, target=joint.name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
            motor.gear[0] = 1.0
    return spec.compile()


def _compile(path: Path) -> mujoco.MjModel:
    try:
        if path.suffix.lower() == ".urdf":
            return _compile_urdf(path)
        return mujoco.MjModel.from_xml_path(str(path))
    except ValueError as err:
        kind = "URDF" if path.suffix.lower() == ".urdf" else "MJCF"
        raise ValueError(f"{path}: {kind} does not compile: {err}") from None


@lru_cache(maxsize=None)
def _load(path: Path, actuator: str | None, dtype: np.dtype, solver_iterations: int | None) -> Robot:
    base = _compile(path)
    if solver_iterations is not None:
        base.opt.iterations = solver_iterations
    text, numeric = _custom(base)
    model = get_actuator_model(actuator or text.get(ACTUATOR_KEY) or "torque")
    if model.needs_state:
        bad = [a for a in range(base.nu) if base.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT
               or base.actuator_gear[a, 0] != 1.0]
        if bad:
            raise ValueError(f"{path}: the {model.name} actuator model needs joint motors with gear 1")
    try:
        layout = ParamLayout(base, model, numeric, inertia=text.get(INERTIA_KEY, "scale"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    mj_model = _copy_model(base)
    for field, value in model_fields(layout, layout.nominal).items():
        getattr(mj_model, field)[:] = value
    name = next((k for k, v in SHIPPED.items() if v == path), path.stem)
    return Robot(name, path, mj_model, layout, model, dtype)
