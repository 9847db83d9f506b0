"""The tracking tasks of the sim-to-real experiments, for the shipped robots."""
from __future__ import annotations

import mujoco
import numpy as np

from twin_bayes.config import TwinConfig, load_config
from twin_bayes.policy.controller import Task, make_task
from twin_bayes.sim.checks import start_state
from twin_bayes.sim.robot import Robot


def _swing(t: np.ndarray, centre, amplitude, freq_hz):
    """q = centre + amplitude·(1 − cos 2πft)/2 per joint (starts at rest) and its derivative."""
    w = 2 * np.pi * np.asarray(freq_hz)
    q = np.asarray(centre) + np.asarray(amplitude) * (1 - np.cos(w * t[:, None])) / 2
    qd = np.asarray(amplitude) * w * np.sin(w * t[:, None]) / 2
    return q, qd


def arm2_task(robot: Robot, seconds: float = 1.0, knots: int = 11, scale: float = 1.0) -> Task:
    """Arm2 lifts and lowers its (payload-carrying) forearm: shoulder −0.3→0.3 rad, elbow 0.2→1.0 rad
    (swing amplitudes × `scale`).

    Torque commands (N·m); gains bounded by 30 N·m/rad and 3 N·m·s/rad (a
    compliant arm), error scaled by 0.05 rad, effort weight 1e-4 per (N·m)².
    """
    t = np.arange(1, int(round(seconds / robot.dt)) + 1) * robot.dt
    q, qd = _swing(t, [-0.3, 0.2], [0.6 * scale, 0.8 * scale], [1.0 / seconds, 1.0 / seconds])
    return make_task(q, qd, q0=[-0.3, 0.2], knots=knots, kp_max=30.0, kd_max=3.0, q_scale=0.05, effort=1e-4)


def servo_task(robot: Robot, seconds: float = 1.0, knots: int = 11, amplitude: float = 2.0,
               freq_hz: float = 1.0) -> Task:
    """The servo pendulum swings 0→`amplitude` rad and back at `freq_hz`, near the servo's torque limit.

    Commands are goal positions (rad); the outer loop's gains are bounded by
    2 rad/rad and 0.2 rad/(rad/s); error scaled by 0.05 rad.
    """
    t = np.arange(1, int(round(seconds / robot.dt)) + 1) * robot.dt
    q, qd = _swing(t, [0.0], [amplitude], [freq_hz])
    return make_task(q, qd, q0=[0.0], knots=knots, kp_max=2.0, kd_max=0.2, q_scale=0.05)


def _humanoid_task(robot: Robot, q_ref, qd_ref, knots: int, push=None) -> Task:
    """A humanoid task from standing (`sim.checks.start_state`): commands in control units (±0.4 before
    the motor gears), gains bounded by 4 per rad and `deadbeat_kd(robot, q0)` (about 0.05) per rad/s,
    joint error scaled by 0.1 rad, base tilt by 0.05 (about 3°) and its rate by 0.5 rad/s, effort weight
    1 per unit²."""
    q0, qd0 = start_state(robot)
    q0[robot.layout.act_qadr] = standing_posture(robot)
    return make_task(q_ref, qd_ref, q0, knots=knots, kp_max=4.0, kd_max=deadbeat_kd(robot, q0), q_scale=0.1,
                     effort=1.0, qd0=qd0, base_scale=[0.05, 0.05, 0.5, 0.5], push=push)


def deadbeat_kd(robot: Robot, q) -> float:
    """The velocity gain (command units per rad/s, the same on every actuated joint) at which the
    controller's explicit damping removes one control step's velocity error at configuration q (nq,):
    the largest eigenvalue of dt·M⁻¹·G·kd·S is 1, with M (nv, nv) the mass matrix, G (nv, nu) the motor
    gears and S (nu, nv) the actuated velocities. Twice this gain is the stability limit: above it the
    joints chatter at half the control rate. Contacts only lower these eigenvalues."""
    m = robot.mj_model
    d = mujoco.MjData(m)
    d.qpos[:] = q
    mujoco.mj_forward(m, d)
    mass = np.zeros((m.nv, m.nv))
    mujoco.mj_fullM(m, d, mass)
    dof, cols = robot.layout.act_dofadr, np.arange(m.nu)
    gears, select = np.zeros((m.nv, m.nu)), np.zeros((m.nu, m.nv))
    gears[dof, cols], select[cols, dof] = m.actuator_gear[:, 0], 1.0
    return 1.0 / float(np.linalg.eigvals(robot.dt * np.linalg.solve(mass, gears @ select)).real.max())


def standing_posture(robot: Robot) -> np.ndarray:
    """The humanoid's standing joint angles (nu,) (rad): the MJCF's, with the knees just inside their range."""
    q = start_state(robot)[0][robot.layout.act_qadr]
    for name in ("right_knee", "left_knee"):
        q[_actuated(robot, name)] = -0.05
    return q


def humanoid_push_task(robot: Robot, seconds: float = 0.8, force_n: float = 60.0, at_s: float = 0.1,
                       for_s: float = 0.1, knots: int = 6) -> Task:
    """The floating humanoid stands and is pushed forward: `force_n` (N) on the torso along +x for `for_s`
    seconds from `at_s`; it should hold its posture and stay upright."""
    T = int(round(seconds / robot.dt))
    t = np.arange(1, T + 1) * robot.dt
    push = np.zeros((T, 6))
    push[(t > at_s) & (t <= at_s + for_s), 0] = force_n
    q = np.repeat(standing_posture(robot)[None], T, axis=0)
    return _humanoid_task(robot, q, np.zeros_like(q), knots, push)


def humanoid_squat_task(robot: Robot, seconds: float = 1.2, hip_rad: float = -0.25, knee_rad: float = -0.5,
                        knots: int = 8) -> Task:
    """The floating humanoid squats and rises: both hips flex by `hip_rad` and both knees by `knee_rad`
    (rad) and come back, (1 − cos) in time over `seconds`, with the torso upright."""
    T = int(round(seconds / robot.dt))
    t = np.arange(1, T + 1) * robot.dt
    stand = standing_posture(robot)
    depth = [0.0] * robot.nu
    for name, value in (("right_hip_y", hip_rad), ("left_hip_y", hip_rad), ("right_knee", knee_rad),
                        ("left_knee", knee_rad)):
        depth[_actuated(robot, name)] = value
    q, qd = _swing(t, stand, depth, [1.0 / seconds] * robot.nu)
    return _humanoid_task(robot, q, qd, knots)


def _actuated(robot: Robot, joint: str) -> int:
    """Index of a joint among the actuated joints."""
    jid = robot.mj_model.joint(joint).id
    return int(np.flatnonzero(robot.mj_model.actuator_trnid[:, 0] == jid)[0])


def servo_twin_config() -> TwinConfig:
    """The shipped servo_pendulum twin config with its Coulomb friction inside the actuator torque.

    The real servo (the shipped MJCF) applies Coulomb friction as the joint's
    friction loss, whose constraint rows make MJX gradients forward-mode
    sensitivities (identification and policy kernels then compiled for more
    than 25 minutes on 2 cores). The twin's `dc_servo_coulomb` applies the same
    friction as f_c·tanh(ω/ε) in the torque: no constraint rows, reverse mode,
    and a twin that approximates its robot's friction, as real twins do.
    """
    cfg = load_config("servo_pendulum")
    return cfg.model_copy(update={"robot": cfg.robot.model_copy(update={"actuator": "dc_servo_coulomb"})})


# Hidden truths of the experiments' real robots. arm2 carries an unknown payload
# (forearm mass above the nominal 0.6 kg) with joint damping and armature off nominal.
ARM2_TRUTHS = [
    {"body_mass:upper_arm": 1.1, "body_mass:forearm": 0.78, "dof_damping:shoulder": 0.07,
     "dof_damping:elbow": 0.04, "dof_armature:shoulder": 0.012, "dof_armature:elbow": 0.006},
    {"body_mass:upper_arm": 0.9, "body_mass:forearm": 0.9, "dof_damping:shoulder": 0.04,
     "dof_damping:elbow": 0.02, "dof_armature:shoulder": 0.008, "dof_armature:elbow": 0.004},
    {"body_mass:upper_arm": 1.2, "body_mass:forearm": 1.0, "dof_damping:shoulder": 0.09,
     "dof_damping:elbow": 0.05, "dof_armature:shoulder": 0.014, "dof_armature:elbow": 0.007},
]
# The servo pendulum's motor constants and friction (nominal kt 0.6 N·m/A, R 2 Ω,
# armature 0.005 kg·m², Coulomb 0.05 N·m, viscous 0.02 N·m·s/rad).
SERVO_TRUTHS = [
    {"servo_kt:servo": 0.5, "servo_R:servo": 2.4, "servo_armature:servo": 0.006,
     "servo_friction_coulomb:servo": 0.08, "servo_friction_viscous:servo": 0.03},
    {"servo_kt:servo": 0.7, "servo_R:servo": 1.7, "servo_armature:servo": 0.004,
     "servo_friction_coulomb:servo": 0.03, "servo_friction_viscous:servo": 0.015},
    {"servo_kt:servo": 0.45, "servo_R:servo": 2.2, "servo_armature:servo": 0.007,
     "servo_friction_coulomb:servo": 0.1, "servo_friction_viscous:servo": 0.04},
]
# The real humanoid's torso mass (nominal 8.9 kg), hip flexion damping (5 N·m·s/rad) and foot friction (1):
# a heavier torso with stiffer hips on slippery feet, and a lighter one with looser hips on grippy feet.
HUMANOID_TRUTHS = [
    {"body_mass:torso": 12.0, "dof_damping:right_hip_y": 7.5, "dof_damping:left_hip_y": 7.0,
     "geom_friction:right_foot": 0.7, "geom_friction:left_foot": 0.75},
    {"body_mass:torso": 7.0, "dof_damping:right_hip_y": 3.0, "dof_damping:left_hip_y": 3.5,
     "geom_friction:right_foot": 1.3, "geom_friction:left_foot": 1.2},
]
