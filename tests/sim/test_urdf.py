"""URDF robots: compiled by MuJoCo with every link kept and a torque motor per joint, checked against
native MuJoCo, and identified from emulated telemetry like the MJCF arm."""
import numpy as np
import pytest

from twin_bayes import Twin
from twin_bayes.config import load_config
from twin_bayes.sim import checks, load_robot
from twin_bayes.sim.emulator import emulate

TRUTH = {   # inside the arm3 prior: |log(truth / nominal)| < 1 prior sd
    "body_mass:upper_arm": 1.15, "body_mass:forearm": 0.52, "body_mass:hand": 0.34,
    "dof_damping:shoulder": 0.07, "dof_damping:elbow": 0.022, "dof_damping:wrist": 0.026,
}


def test_urdf_links_and_joints_name_the_parameters():
    robot = load_robot("arm3")
    assert robot.mjcf_path.suffix == ".urdf" and robot.nu == 3 and robot.grad_mode == "reverse"
    for name in ("body_mass:upper_arm", "body_mass:tool", "body_com_x:forearm", "dof_damping:wrist",
                 "actuator_gain:elbow", "sensor_bias:shoulder"):
        assert name in robot.param_names
    m = robot.mj_model
    assert m.body("tool").id > 0                     # a link behind a fixed joint stays its own body
    assert robot.nominal()["body_mass:hand"] == pytest.approx(0.3)
    assert robot.nominal()["dof_damping:shoulder"] == pytest.approx(0.05)
    np.testing.assert_allclose(sorted(m.body_inertia[m.body("upper_arm").id]), [0.0004, 0.0075, 0.0075])


def test_urdf_without_mujoco_tag_keeps_static_links(tmp_path):
    text = load_robot("arm3").mjcf_path.read_text()
    bare = tmp_path / "bare.urdf"
    bare.write_text(text.split("<mujoco>")[0] + text.split("</mujoco>")[1])
    robot = load_robot(bare)
    assert robot.name == "bare" and "body_mass:tool" in robot.param_names and robot.nu == 3


def test_bad_urdf_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot name='x'><link name='a'/><joint name='j' type='revolute'><parent link='a'/>"
                      "<child link='nowhere'/></joint></robot>")
    with pytest.raises(ValueError, match="broken.urdf: URDF does not compile"):
        load_robot(broken)


def test_urdf_arm_agrees_with_native_mujoco():
    fig = checks.agreement(load_robot("arm3"))
    assert fig["max_abs_err"] < 1e-9, fig
    assert min(v for k, v in fig.items() if k.startswith("motion_range_")) > 0.5   # the check moved the arm


@pytest.mark.slow   # a fresh twin's first update compiles: 9.4 min on the loaded 2-core machine
def test_urdf_arm_fits_from_emulated_telemetry(tmp_path):
    """Two 0.5 s windows of native-MuJoCo telemetry streamed through the shipped arm3 twin (0.5 s
    windows): every truth inside its 90 % interval, each interval narrower than the prior's."""
    path = tmp_path / "arm3_small.toml"
    path.write_text(load_config("arm3").source.read_text().replace("window_s = 1.0", "window_s = 0.5"))
    twin = Twin.from_config(path)
    prior = twin.posterior.summary()
    T = twin.model.window_samples
    rec = emulate(twin.model.robot, TRUTH, 2 * (T - 1) * twin.model.robot.dt, seed=3)
    for k in range(2):
        rows = slice(k * (T - 1), k * (T - 1) + T)
        report = twin.update({"q": rec.q[rows], "qd": rec.qd[rows], "ctrl": rec.ctrl[rows]})
        assert report.accepted, report.reason
    post = twin.posterior.summary()
    for name, truth in TRUTH.items():
        s = post[name]
        assert s["q05"] <= truth <= s["q95"], (name, truth, s)
        assert s["q95"] - s["q05"] < 0.5 * (prior[name]["q95"] - prior[name]["q05"]), (name, s, prior[name])
