"""Actuator models: pure functions from (command, joint state, parameters) to joint torque.

Each model acts per actuator. Arrays below have a trailing axis of length nu
(one entry per actuator, in MJCF order); `q` and `qd` are the positions (rad)
and velocities (rad/s) of the joints the actuators drive, as the robot's
sensors report them. Parameters are named `<kind>:<actuator name>`; the model's
`dof_terms` says which kinds also act through MuJoCo joint fields (armature,
friction, damping) so that stiction and implicit damping stay MuJoCo's own.
The formulas run on NumPy (the native emulator) and under JAX (the twin) alike (`sim.arrays`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twin_bayes.data.bam import SERVO_TORQUE_OFF
from twin_bayes.sim.arrays import namespace

Array = Any   # a NumPy or a JAX array

# Dynamixel firmware: duty = g * kp * (goal - q), with g in 1/(rad * kp unit):
# 4096 encoder ticks per turn, P gain scaled by 1/256 and duty by 1/885 (the XL330's PWM limit);
# the published bam model of this servo uses the same g (≈ 2.88e-3) and a duty limit of 1.
DYNAMIXEL_DUTY_PER_RAD_PER_KP = (4096.0 / (2.0 * math.pi)) / (256.0 * 885.0)
# A servo goal at or above SERVO_TORQUE_OFF (rad) means "torque off" (defined with the recordings
# that mark it, twin_bayes.data.bam, which load no JAX).


def direct_torque(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """Commands are motor controls; the MJCF actuator (gear, gain) makes the torque."""
    return command


def pd_servo(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """Position servo: kp (N·m/rad) on position error, kd (N·m·s/rad) on velocity, clipped."""
    xp = namespace(command, q, qd, *p.values())
    tau = p["pd_kp"] * (command - q) - p["pd_kd"] * qd
    return xp.clip(tau, -p["pd_torque_limit"], p["pd_torque_limit"])


def dc_servo(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """DC-motor voltage servo (Dynamixel-style firmware P loop).

    duty = clip(g · kp · (goal − q), −1, 1); V = vin · duty;
    τ = kt · (V − kt · ω) / R  [N·m], with kt (N·m/A), R (Ω), vin (V).
    Rotor armature, Coulomb and viscous friction act through the joint
    (`dof_terms`), not here. τ = 0 while the command is `SERVO_TORQUE_OFF`.
    """
    xp = namespace(command, q, qd, *p.values())
    duty = xp.clip(DYNAMIXEL_DUTY_PER_RAD_PER_KP * p["servo_kp"] * (command - q), -1.0, 1.0)
    volts = p["servo_vin"] * duty
    tau = p["servo_kt"] * (volts - p["servo_kt"] * qd) / p["servo_R"]
    return xp.where(command >= SERVO_TORQUE_OFF, 0.0, tau)


# Friction inside the actuator torque uses a smooth sign, tanh(ω / ε) with ε in rad/s: the model then
# has no constraint rows (MJX runs no solver, gradients are plain reverse mode) and stays
# differentiable. A small ε stands in for stiction (the published bam model clips the whole friction
# budget to the torque that stops the joint within one step): with ε = 0.2 rad/s the servo crept
# through friction on the kp = 400 plateaus where the real one stalls (held-out MAE 0.058 → 0.049 rad
# at 0.05). It is explicit in MuJoCo's Euler step, smooth while f/ε · dt / I < 2 (XL330 rig: dt = 5 ms,
# I ≈ 0.0069 kg·m², f up to 0.14 N·m); a larger f makes the sign chatter around ω = 0 with an
# amplitude of at most f · dt / I rad/s (bounded, like a stick–slip limit cycle), not diverge.
FRICTION_SIGN_VELOCITY = 0.05


def _sign(qd: Array) -> Array:
    return namespace(qd).tanh(qd / FRICTION_SIGN_VELOCITY)


def _stribeck(qd: Array, p: Mapping[str, Array]) -> Array:
    """Stribeck friction magnitude f_s · exp(−(ω/ω_s)²) (N·m): extra friction at low speed."""
    xp = namespace(qd, *p.values())
    return p["servo_friction_stribeck"] * xp.exp(-((qd / p["servo_stribeck_velocity"]) ** 2))


def dc_servo_coulomb(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """`dc_servo` with its Coulomb friction in the torque: τ − f_c · tanh(ω/ε)  [N·m]."""
    return dc_servo(command, q, qd, p) - p["servo_friction_coulomb"] * _sign(qd)


def dc_servo_stribeck(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """`dc_servo_coulomb` plus a Stribeck term: τ − (f_c + f_s · exp(−(ω/ω_s)²)) · tanh(ω/ε)  [N·m]."""
    friction = p["servo_friction_coulomb"] + _stribeck(qd, p)
    return dc_servo(command, q, qd, p) - friction * _sign(qd)


def dc_servo_load(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """`dc_servo_stribeck` plus gearbox friction proportional to the motor torque it transmits:
    τ − (f_c + f_s · exp(−(ω/ω_s)²) + μ · |τ|) · tanh(ω/ε)  [N·m], μ dimensionless.

    The published load-dependent class uses μ' · |τ_ext − τ| with τ_ext the gravity torque; the
    actuator sees no external torque, and where the servo holds or slowly moves the load
    |τ_ext − τ| ≈ 2 |τ|, so μ ≈ 2 μ' (published range μ' ∈ [0, 0.5]: μ ∈ [0, 1]).
    """
    tau = dc_servo(command, q, qd, p)
    friction = p["servo_friction_coulomb"] + _stribeck(qd, p) + p["servo_friction_load"] * abs(tau)
    return tau - friction * _sign(qd)


def joint_torque_friction(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """Measured joint torque in, friction out: τ = (u − o) − τ_f(ω)  [N·m].

    u is the joint torque sensor's reading, o its offset (`torque_offset`); τ_f is smooth Coulomb
    friction with a velocity offset φ and sign width ε plus viscous friction b:
    τ_f(ω) = f_c · (tanh((ω + φ)/ε) − tanh(φ/ε)) + b · ω, zero at rest. With f_c = A/2 and
    ε = 2/α it is the sigmoid friction A/(1 + e^{−α(ω+φ)}) − A/(1 + e^{−αφ}) of the Panda's
    published identification (Gaz et al., RA-L 2019) plus a viscous term.
    """
    xp = namespace(command, qd, *p.values())
    phi, eps = p["joint_friction_offset"], p["joint_friction_width"]
    coulomb = p["joint_friction_coulomb"] * (xp.tanh((qd + phi) / eps) - xp.tanh(phi / eps))
    return command - p["torque_offset"] - coulomb - p["joint_friction_viscous"] * qd


@dataclass(frozen=True)
class ActuatorModel:
    """An actuator model: its torque function, parameter kinds with defaults and units.

    `torque` maps (command (..., nu), q (..., nu), qd (..., nu), params {kind: (..., nu)})
    to joint torque (..., nu) that is applied as the MJCF motor's control.
    `dof_terms` maps a parameter kind to the MuJoCo dof field it adds to.
    `settings` are kinds known per recording (firmware gain, supply voltage),
    set from data rather than estimated. `signed` kinds may take either sign (offsets); all
    others are positive.
    """

    name: str
    torque: Callable[[Array, Array, Array, Mapping[str, Array]], Array]
    defaults: Mapping[str, float] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    dof_terms: Mapping[str, str] = field(default_factory=dict)
    settings: tuple[str, ...] = ()
    signed: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def needs_state(self) -> bool:
        return self.torque is not direct_torque


_DC_SERVO = ActuatorModel(
    "dc_servo",
    dc_servo,
    defaults={
        "servo_kt": 0.6,
        "servo_R": 2.0,
        "servo_armature": 0.005,
        "servo_friction_coulomb": 0.05,
        "servo_friction_viscous": 0.02,
        "servo_kp": 400.0,
        "servo_vin": 7.4,
    },
    units={
        "servo_kt": "N·m/A",
        "servo_R": "Ω",
        "servo_armature": "kg·m²",
        "servo_friction_coulomb": "N·m",
        "servo_friction_viscous": "N·m·s/rad",
        "servo_kp": "firmware units",
        "servo_vin": "V",
    },
    dof_terms={
        "servo_armature": "dof_armature",
        "servo_friction_coulomb": "dof_frictionloss",
        "servo_friction_viscous": "dof_damping",
    },
    settings=("servo_kp", "servo_vin"),
)
_STRIBECK = {"servo_friction_stribeck": (0.02, "N·m"), "servo_stribeck_velocity": (0.5, "rad/s")}
_LOAD = {"servo_friction_load": (0.05, "1")}


def _smooth_friction_servo(name: str, torque, extra: Mapping[str, tuple[float, str]]) -> ActuatorModel:
    """The dc_servo class with all friction but the viscous part in its torque (no MuJoCo friction
    loss, so no constraint rows) and extra friction kinds {kind: (default, unit)}."""
    return ActuatorModel(name, torque,
                         defaults={**_DC_SERVO.defaults, **{k: v for k, (v, _) in extra.items()}},
                         units={**_DC_SERVO.units, **{k: u for k, (_, u) in extra.items()}},
                         dof_terms={k: v for k, v in _DC_SERVO.dof_terms.items() if v != "dof_frictionloss"},
                         settings=_DC_SERVO.settings)


ACTUATOR_MODELS: dict[str, ActuatorModel] = {
    "torque": ActuatorModel("torque", direct_torque),
    "pd": ActuatorModel(
        "pd",
        pd_servo,
        defaults={"pd_kp": 50.0, "pd_kd": 1.0, "pd_torque_limit": 10.0},
        units={"pd_kp": "N·m/rad", "pd_kd": "N·m·s/rad", "pd_torque_limit": "N·m"},
    ),
    "dc_servo": _DC_SERVO,
    "joint_torque_friction": ActuatorModel(
        "joint_torque_friction",
        joint_torque_friction,
        defaults={"torque_offset": 0.0, "joint_friction_coulomb": 0.3, "joint_friction_viscous": 0.0,
                  "joint_friction_offset": 0.0, "joint_friction_width": 0.2},
        units={"torque_offset": "N·m", "joint_friction_coulomb": "N·m", "joint_friction_viscous": "N·m·s/rad",
               "joint_friction_offset": "rad/s", "joint_friction_width": "rad/s"},
        signed=("torque_offset", "joint_friction_offset"),
    ),
    "dc_servo_coulomb": _smooth_friction_servo("dc_servo_coulomb", dc_servo_coulomb, {}),
    "dc_servo_stribeck": _smooth_friction_servo("dc_servo_stribeck", dc_servo_stribeck, _STRIBECK),
    "dc_servo_load": _smooth_friction_servo("dc_servo_load", dc_servo_load, {**_STRIBECK, **_LOAD}),
}


def get_actuator_model(name: str) -> ActuatorModel:
    try:
        return ACTUATOR_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown actuator model {name!r}; choose one of {sorted(ACTUATOR_MODELS)}"
        ) from None
