"""Excitation for identification: `tracking_excitation` keeps a hanging humanoid leg off its joint limits, where
open-loop random-sine torques leave it resting on them."""
import numpy as np
import pytest

from twin_bayes.sim import load_robot
from twin_bayes.sim.checks import start_state
from twin_bayes.sim.emulator import emulate, excitation, tracking_excitation

TRUTH = {"body_mass:right_thigh": 5.3, "dof_damping:right_knee": 0.12, "dof_armature:right_hip_y": 0.0125}


@pytest.fixture(scope="module")
def robot():
    return load_robot("humanoid_fixed")


def _limit_share(robot, q) -> float:
    """Share of samples with some right-leg joint within 0.02 rad of a limit of its range."""
    m = robot.mj_model
    leg = [j for j in range(m.njnt) if m.jnt_limited[j] and m.joint(j).name.startswith("right_")
           and ("hip" in m.joint(j).name or "knee" in m.joint(j).name)]
    lo, hi = m.jnt_range[leg].T
    col = q[:, m.jnt_qposadr[leg]]
    return float(np.mean(np.any((col < lo + 0.02) | (col > hi - 0.02), axis=1)))


def test_tracking_keeps_the_leg_off_its_limits_and_replays_open_loop(robot):
    """Over 3 seeds: random-sine torques hold the right leg at a limit in more than a fifth of the samples,
    the PD-tracked sines in none, while each leg joint swings over at least a twentieth of its range and
    some over a quarter; the commands stay in the control range and the replay starts at the returned start."""
    q0 = start_state(robot)[0]
    m = robot.mj_model
    for seed in range(3):
        open_loop = emulate(robot, TRUTH, 1.2, seed=seed, noise={"q": 0, "qd": 0}, q0=q0,
                            commands=excitation(robot, 400, seed, amplitude=0.3))
        assert _limit_share(robot, open_loop.q) > 0.2
        start, u = tracking_excitation(robot, TRUTH, 1.2, seed, q0)
        assert u.shape == (400, robot.nu) and np.all(np.abs(u) <= 0.4)
        tracked = emulate(robot, TRUTH, 1.2, seed=seed, noise={"q": 0, "qd": 0}, q0=start, commands=u)
        assert _limit_share(robot, tracked.q) == 0.0
        hinge = [j for j in range(m.njnt) if m.jnt_limited[j] and m.joint(j).name.startswith("right_")]
        q = tracked.q[:, m.jnt_qposadr[hinge]]
        swing = (q.max(0) - q.min(0)) / np.diff(m.jnt_range[hinge], axis=1)[:, 0]
        assert swing.min() > 0.05 and swing.max() > 0.25, swing
        np.testing.assert_array_equal(tracked.q[0], start)


def test_tracking_excitation_drives_motors_only():
    with pytest.raises(ValueError, match="servos"):
        servo = load_robot("servo_pendulum", "dc_servo")
        tracking_excitation(servo, {}, 0.1, 0, start_state(servo)[0])
