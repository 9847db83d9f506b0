"""Actuator models: pure functions from (command, joint state, parameters) to joint torque.

Each model acts per actuator. Arrays below have a trailing axis of length nu
(one entry per actuator, in MJCF order); `q` and `qd` are the positions (rad)
and velocities (rad/s) of the joints the actuators drive, as the robot's
sensors report them. Parameters are named `<kind>:<actuator name>`; the model's
`dof_terms` says which kinds also act through MuJoCo joint fields (armature,
friction, damping) so that stiction and implicit damping stay MuJoCo's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import jax.numpy as jnp

Array = jnp.ndarray

# Dynamixel firmware: duty = g * kp * (goal - q), with g in 1/(rad * kp unit):
# 4096 encoder ticks per turn, P gain scaled by 1/256 and duty by 1/885.
DYNAMIXEL_DUTY_PER_RAD_PER_KP = (4096.0 / (2.0 * jnp.pi)) / (256.0 * 885.0)


def direct_torque(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """Commands are motor controls; the MJCF actuator (gear, gain) makes the torque."""
    return command


def pd_servo(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """Position servo: kp (N·m/rad) on position error, kd (N·m·s/rad) on velocity, clipped."""
    tau = p["pd_kp"] * (command - q) - p["pd_kd"] * qd
    return jnp.clip(tau, -p["pd_torque_limit"], p["pd_torque_limit"])


def dc_servo(command: Array, q: Array, qd: Array, p: Mapping[str, Array]) -> Array:
    """DC-motor voltage servo (Dynamixel-style firmware P loop).

    duty = clip(g · kp · (goal − q), −1, 1); V = vin · duty;
    τ = kt · (V − kt · ω) / R  [N·m], with kt (N·m/A), R (Ω), vin (V).
    Rotor armature, Coulomb and viscous friction act through the joint
    (`dof_terms`), not here.
    """
    duty = jnp.clip(DYNAMIXEL_DUTY_PER_RAD_PER_KP * p["servo_kp"] * (command - q), -1.0, 1.0)
    volts = p["servo_vin"] * duty
    return p["servo_kt"] * (volts - p["servo_kt"] * qd) / p["servo_R"]


@dataclass(frozen=True)
class ActuatorModel:
    """An actuator model: its torque function, parameter kinds with defaults and units.

    `torque` maps (command (..., nu), q (..., nu), qd (..., nu), params {kind: (..., nu)})
    to joint torque (..., nu) that is applied as the MJCF motor's control.
    `dof_terms` maps a parameter kind to the MuJoCo dof field it adds to.
    `settings` are kinds known per recording (firmware gain, supply voltage),
    set from data rather than estimated.
    """

    name: str
    torque: Callable[[Array, Array, Array, Mapping[str, Array]], Array]
    defaults: Mapping[str, float] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    dof_terms: Mapping[str, str] = field(default_factory=dict)
    settings: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def needs_state(self) -> bool:
        return self.torque is not direct_torque


ACTUATOR_MODELS: dict[str, ActuatorModel] = {
    "torque": ActuatorModel("torque", direct_torque),
    "pd": ActuatorModel(
        "pd",
        pd_servo,
        defaults={"pd_kp": 50.0, "pd_kd": 1.0, "pd_torque_limit": 10.0},
        units={"pd_kp": "N·m/rad", "pd_kd": "N·m·s/rad", "pd_torque_limit": "N·m"},
    ),
    "dc_servo": ActuatorModel(
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
    ),
}


def get_actuator_model(name: str) -> ActuatorModel:
    try:
        return ACTUATOR_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown actuator model {name!r}; choose one of {sorted(ACTUATOR_MODELS)}"
        ) from None
