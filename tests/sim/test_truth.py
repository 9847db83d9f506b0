"""Truth files and misspecified physics: parsed and validated, and each misspecification changes native
MuJoCo's trajectory against the exact emulator by its documented amount (docs/EMULATOR.md)."""
import math

import numpy as np
import pytest

from twin_bayes.sim import load_robot
from twin_bayes.sim.emulator import excitation
from twin_bayes.sim.native import NativeRobot
from twin_bayes.sim.truth import Misspecification, colored_noise, parse_truth

HANGING = np.array([math.pi / 2, 0.0])  # arm2 hanging straight down: no gravity torque


@pytest.fixture(scope="module")
def arm2():
    return load_robot("arm2")


def test_a_full_truth_is_parsed(arm2):
    truth = parse_truth({"body_mass:forearm": 0.7, "latency_s": 0.004,
                         "misspecified": {"dof_frictionloss:shoulder": 0.15, "backlash:elbow": 0.01},
                         "sensor": {"q_sd": 0.001, "ar1": 0.8, "q_resolution": 0.0015}}, arm2)
    assert truth.params == {**arm2.nominal(), "body_mass:forearm": 0.7, "latency_s": 0.004}
    assert truth.misspecified == Misspecification({"shoulder": 0.15}, {"elbow": 0.01}, 0.8, 0.0015)
    assert truth.noise == {"q": 0.001}  # qd keeps the config's
    assert parse_truth({}, arm2).misspecified.none


@pytest.mark.parametrize("data, message", [
    ({"body_mass:link9": 1.0}, "no parameter(s) ['body_mass:link9']"),
    ({"body_mass:forearm": "heavy"}, "must be finite numbers"),
    ({"body_mass:forearm": math.nan}, "must be finite numbers"),
    ({"body_mass:forearm": True}, "must be finite numbers"),
    ({"misspecified": 3}, "misspecified must be a table"),
    ({"misspecified": {"stiction:elbow": 0.1}}, "expected <kind>:<joint>"),
    ({"misspecified": {"backlash:wrist": 0.1}}, "expected <kind>:<joint>"),
    ({"misspecified": {"backlash:elbow": -0.1}}, "backlash:elbow = -0.1 must be a number >= 0.0"),
    ({"misspecified": {"dof_frictionloss:elbow": "some"}}, "must be a number >= 0.0"),
    ({"sensor": {"q_sd": 0.1, "bias": 0.1}}, "[sensor] has no key(s) ['bias']"),
    ({"sensor": {"ar1": 1.0}}, "ar1 = 1.0 must be a number in [0.0, 1.0)"),
    ({"sensor": {"qd_sd": math.inf}}, "qd_sd = inf must be a number >= 0.0"),
])
def test_bad_truth_is_a_clear_error(arm2, data, message):
    with pytest.raises(ValueError) as e:
        parse_truth(data, arm2, "t.toml")
    assert str(e.value).startswith("t.toml") and message in str(e.value)


def test_friction_loss_the_twin_has_belongs_at_the_top_level(tmp_path):
    xml = (tmp_path / "rubbing.xml")
    xml.write_text("""<mujoco><worldbody><body name="link"><joint name="hinge" type="hinge" frictionloss="0.1"/>
        <geom name="link" type="sphere" size="0.1" mass="1" contype="0" conaffinity="0"/></body></worldbody>
        <actuator><motor name="hinge" joint="hinge"/></actuator></mujoco>""")
    robot = load_robot(xml)
    assert parse_truth({"dof_frictionloss:hinge": 0.2}, robot).params["dof_frictionloss:hinge"] == 0.2
    with pytest.raises(ValueError, match="is a parameter of the rubbing twin; give its true value at the top"):
        parse_truth({"misspecified": {"dof_frictionloss:hinge": 0.2}}, robot)


def _run(robot, commands, q0=None, truth=None, spec=None):
    q0 = np.array(robot.mj_model.qpos0) if q0 is None else q0
    return NativeRobot(robot, truth or robot.nominal(), q0, np.zeros(robot.nv), misspecified=spec).step(commands)


def test_friction_loss_holds_the_joints_under_torques_below_it_and_gives_way_above(arm2):
    below = np.tile([0.10, 0.05], (500, 1))  # 1 s, both torques below 0.2 N·m
    spec = Misspecification(frictionloss={"shoulder": 0.2, "elbow": 0.2})
    q_free, _ = _run(arm2, below, HANGING)
    q_held, qd_held = _run(arm2, below, HANGING, spec=spec)
    assert np.abs(q_free - HANGING).max(axis=0).min() > 0.03     # without it both joints swing
    assert np.abs(q_held - HANGING).max() < 2e-5                  # with it they stay still
    assert np.abs(qd_held).max() < 2e-5
    q_pushed, _ = _run(arm2, np.tile([0.3, 0.0], (500, 1)), HANGING, spec=spec)
    assert abs(q_pushed[-1, 0] - HANGING[0]) > 0.03 and abs(q_pushed[-1, 1] - HANGING[1]) < 2e-5


def test_backlash_reads_the_joint_through_the_play(arm2):
    u = excitation(arm2, 1000, 0)
    q, qd = _run(arm2, u)
    q_bl, qd_bl = _run(arm2, u, spec=Misspecification(backlash={"elbow": 0.02}))
    gap = q_bl[:, 1] - q[:, 1]
    np.testing.assert_array_equal(q_bl[:, 0], q[:, 0])        # a torque robot's dynamics are unchanged
    assert np.abs(gap).max() == pytest.approx(0.01, abs=1e-12)  # never more than b/2 from the joint
    on_flank = np.isclose(np.abs(gap), 0.01, atol=1e-12)
    assert 0.5 < on_flank.mean() < 1.0                           # pushed most of the time, not always
    np.testing.assert_array_equal(qd_bl[on_flank & (qd_bl[:, 1] != 0), 1], qd[on_flank & (qd_bl[:, 1] != 0), 1])
    inside = ~on_flank
    assert (qd_bl[inside, 1] == 0).all() and inside.any()       # inside the play the reading stands still
    m = np.concatenate([[arm2.mj_model.qpos0[1]], q_bl[:, 1]])
    np.testing.assert_allclose(m[1:], np.clip(m[:-1], q[:, 1] - 0.01, q[:, 1] + 0.01), atol=1e-15)


def test_a_servo_closes_its_loop_through_the_play():
    servo = load_robot("servo_pendulum")
    goals = np.full((400, 1), 0.3)
    q, _ = _run(servo, goals)
    q_bl, _ = _run(servo, goals, spec=Misspecification(backlash={"servo": 0.05}))
    assert np.abs(q_bl - q).max() > 0.01  # the servo acts on what it reads: the joint moves otherwise


def test_latency_and_bias_the_config_does_not_estimate(arm2):
    u = excitation(arm2, 300, 1)
    q, qd = _run(arm2, u)
    truth = {**arm2.nominal(), "latency_s": 3 * arm2.dt, "sensor_bias:elbow": 0.01}
    q_late, qd_late = _run(arm2, u, np.array(arm2.mj_model.qpos0) + [0.0, 0.01], truth)  # same true start
    shifted = np.vstack([np.repeat(u[:1], 3, axis=0), u[:-3]])  # three whole steps later, first held
    q_shift, qd_shift = _run(arm2, shifted)
    np.testing.assert_allclose(q_late - [0.0, 0.01], q_shift, atol=1e-12)
    np.testing.assert_allclose(qd_late, qd_shift, atol=1e-12)
    assert np.abs(q_late - q).max() > 0.01


def test_colored_noise_keeps_its_sd_and_has_its_lag_one_correlation():
    rng = np.random.default_rng(0)
    e = colored_noise(rng, None, 20_000, 2, 0.01, 0.9)
    assert e.std(axis=0) == pytest.approx([0.01, 0.01], rel=0.05)
    r1 = [np.corrcoef(e[:-1, k], e[1:, k])[0, 1] for k in range(2)]
    assert r1 == pytest.approx([0.9, 0.9], abs=0.01)
    white = colored_noise(np.random.default_rng(3), None, 50, 2, 0.01, 0.0)
    np.testing.assert_array_equal(white, np.random.default_rng(3).normal(0, 0.01, (50, 2)))
