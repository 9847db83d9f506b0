"""MJCF sensors in the twin against native MuJoCo, and the sensor models against their formulas and
finite differences (docs/SENSORS.md).

One small robot serves most tests: arm2 with a tilted site on the forearm carrying one sensor of
every modelled type (`arm2_sensors.xml`); its rollout with all readings compiles once
(`_readings`). The humanoid_fixed's torso IMU and joint torques check the path with constraint rows.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from twin_bayes.sim import load_robot
from twin_bayes.sim.native import native_rollout
from twin_bayes.sim.emulator import emulate
from twin_bayes.sim.rollout import simulate
from twin_bayes.sim.sensors import quaternion, rotation
from twin_bayes.sim.truth import parse_truth

ROBOT = Path(__file__).with_name("arm2_sensors.xml")
STEPS = 40
Q0, QD0 = np.array([0.3, -0.5]), np.array([0.2, 1.0])


@pytest.fixture(scope="module")
def robot():
    return load_robot(ROBOT)


@pytest.fixture(scope="module")
def commands():
    return np.random.default_rng(0).standard_normal((STEPS, 2))


def sensor_truth(robot, seed: int, delays: bool = True) -> dict[str, float]:
    """Every sensor parameter of the robot drawn away from nominal."""
    rng = np.random.default_rng(seed)
    theta = robot.nominal()
    for name in robot.param_names:
        kind = name.split(":")[0]
        if kind.startswith("bias"):
            theta[name] = 0.1 * rng.standard_normal()
        elif kind.startswith("scale"):
            theta[name] = 1 + 0.05 * rng.standard_normal()
        elif kind.startswith("misalign"):
            theta[name] = 0.05 * rng.standard_normal()
        elif kind == "delay_s" and delays:
            theta[name] = rng.uniform(0.0, 3.0) * robot.dt
    return theta


@jax.jit
def _readings(theta, q0, qd0, commands):
    robot = load_robot(ROBOT)
    return simulate(robot, theta, q0, qd0, commands, readings=tuple(range(robot.mj_model.nsensordata)))[2]


def test_every_modelled_sensor_type_has_its_parameters(robot):
    sensors = robot.layout.sensors.by_name
    assert {s.type for s in sensors.values()} == {"gyro", "accelerometer", "framequat", "framepos", "jointpos",
                                                   "jointvel", "actuatorfrc", "jointactuatorfrc", "force", "torque"}
    names = set(robot.param_names)
    assert {"bias_x:gyro", "scale_z:gyro", "misalign_y:gyro", "delay_s:gyro", "bias:elbow_tau", "scale:elbow_tau",
            "misalign_x:quat", "bias_z:pos"} <= names
    assert not {"bias_x:quat", "misalign_x:pos", "misalign_x:elbow_tau"} & names
    assert robot.layout.specs[robot.layout.index["bias_x:acc"]].unit == "m/s²"


@pytest.mark.parametrize("delays", [False, True])
def test_readings_agree_with_native_mujoco(robot, commands, delays):
    """Every reading of every sensor, with every sensor parameter away from nominal (misaligned, scaled,
    biased and, here, delayed), agrees with native MuJoCo's sensordata through the same formulas."""
    theta = sensor_truth(robot, seed=1, delays=delays)
    _, _, native = native_rollout(robot, theta, Q0, QD0, commands, sensors=True)
    twin = np.asarray(_readings(robot.to_vector(theta), Q0, QD0, commands))
    assert native.shape == twin.shape == (STEPS, robot.mj_model.nsensordata)
    assert np.abs(native).max() > 1.0                       # the readings move
    err = np.abs(twin - native).max()
    assert err < 1e-9, err                                  # measured: 1.2e-14


def test_readings_are_mujocos_sensordata_of_each_step(robot, commands):
    """At nominal sensor parameters the readings are MuJoCo's own: row t from step t's forward pass."""
    m = robot.model_with(robot.nominal())
    d = mujoco.MjData(m)
    d.qpos[:], d.qvel[:] = Q0, QD0
    rows = []
    for u in commands[:5]:
        d.ctrl[:] = u
        mujoco.mj_step(m, d)
        rows.append(d.sensordata.copy())
    _, _, native = native_rollout(robot, robot.nominal(), Q0, QD0, commands[:5], sensors=True)
    np.testing.assert_array_equal(native, np.array(rows))


def test_sensors_do_not_change_the_dynamics(robot, commands):
    arm2 = load_robot("arm2")
    theta = sensor_truth(robot, seed=2)
    q, qd = native_rollout(arm2, {k: v for k, v in theta.items() if k in arm2.layout.index}, Q0, QD0, commands)
    q_s, qd_s, _ = native_rollout(robot, theta, Q0, QD0, commands, sensors=True)
    np.testing.assert_array_equal(q, q_s)
    np.testing.assert_array_equal(qd, qd_s)


def test_emulator_records_readings_through_the_true_sensor_models(robot):
    """Row k of an emulated recording's readings is read at state k under command k (the last row too),
    through the truth's sensor models; `[sensor] <name>_sd` adds white noise of that sd."""
    parsed = parse_truth(sensor_truth(robot, seed=6) | {"sensor": {"gyro_sd": 0.01}}, robot)
    assert parsed.noise == {"gyro": 0.01}
    exact = emulate(robot, parsed.params, 0.1, seed=3, noise={"q": 0.0, "qd": 0.0})
    _, _, native = native_rollout(robot, parsed.params, exact.q[0], exact.qd[0], exact.ctrl, sensors=True)
    for sensor in robot.layout.sensors.sensors:
        assert exact.sensors[sensor.name].shape == (51, sensor.dim)
        np.testing.assert_array_equal(exact.sensors[sensor.name], native[:, sensor.adr: sensor.adr + sensor.dim])
    noisy = emulate(robot, parsed.params, 0.1, seed=3, noise={"q": 0.0, "qd": 0.0} | parsed.noise)
    assert np.std(noisy.sensors["gyro"] - exact.sensors["gyro"]) == pytest.approx(0.01, rel=0.2)
    np.testing.assert_array_equal(noisy.sensors["acc"], exact.sensors["acc"])
    with pytest.raises(ValueError, match=r"\[sensor\] has no key\(s\) \['gyr_sd'\].*'gyro_sd'"):
        parse_truth({"sensor": {"gyr_sd": 0.01}}, robot)


def test_rotation_and_quaternion_are_the_exact_exp_map():
    """R(δ) and q(δ) against MuJoCo's axis-angle formulas, on both sides of the Taylor branch (0.01 rad)."""
    rng = np.random.default_rng(3)
    for norm in (1e-7, 0.009, 0.011, 0.3, 2.0):
        delta = rng.standard_normal(3)
        delta *= norm / np.linalg.norm(delta)
        quat = np.zeros(4)
        mujoco.mju_axisAngle2Quat(quat, delta / norm, norm)
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, quat)
        np.testing.assert_allclose(quaternion(delta), quat, atol=1e-15)
        np.testing.assert_allclose(rotation(delta), mat.reshape(3, 3), atol=1e-15)
        np.testing.assert_allclose(rotation(jnp.asarray(delta)), mat.reshape(3, 3), atol=1e-15)


@pytest.mark.parametrize("point", ["nominal", "away"])
def test_sensor_model_gradients_match_finite_differences(robot, commands, point):
    """d(readings)/d(bias, scale, misalignment, delay), forward mode through the twin, against central
    differences of native MuJoCo, at nominal sensor parameters (δ = 0: the Taylor branch; delay 0) and
    away from them (delays 0.2-2.9 samples, inside sample intervals)."""
    theta = robot.nominal() if point == "nominal" else sensor_truth(robot, seed=4)
    names = ["bias_y:gyro", "scale_x:acc", "misalign_z:acc", "misalign_x:quat", "misalign_y:trq", "scale:elbow_tau",
             "delay_s:gyro", "delay_s:elbow_tau"]
    if point == "nominal":
        theta.update({"delay_s:gyro": 0.3 * robot.dt, "delay_s:elbow_tau": 0.6 * robot.dt})
    vec = robot.to_vector(theta)
    idx = np.array([robot.layout.index[n] for n in names])
    jac = jax.jacfwd(lambda x: _readings(jnp.asarray(vec).at[idx].set(x), Q0, QD0, commands))(jnp.asarray(vec[idx]))
    for k, name in enumerate(names):
        h = 1e-7 if name.startswith("delay") else 1e-6
        up, down = dict(theta), dict(theta)
        up[name] += h
        down[name] -= h
        fd = (native_rollout(robot, up, Q0, QD0, commands, sensors=True)[2]
              - native_rollout(robot, down, Q0, QD0, commands, sensors=True)[2]) / (2 * h)
        scale = np.abs(fd).max()
        assert scale > 1e-3, name                                   # the parameter moves the readings
        err = np.abs(np.asarray(jac[..., k]) - fd).max() / scale
        assert err < 1e-6, (name, err)


def test_humanoid_imu_and_joint_torques_agree_with_native_mujoco():
    """The shipped humanoid_fixed's torso IMU and joint torque sensors (constraint rows: joint limits),
    with IMU bias, scale and misalignment, against native MuJoCo."""
    robot = load_robot("humanoid_fixed")
    assert {"torso_gyro", "torso_accel", "right_knee_torque"} <= set(robot.layout.sensors.by_name)
    theta = robot.nominal() | {"bias_x:torso_gyro": 0.01, "scale_z:torso_accel": 1.03,
                               "misalign_y:torso_accel": 0.02, "bias:right_knee_torque": 0.5}
    rng = np.random.default_rng(5)
    u = 0.3 * rng.standard_normal((20, robot.nu))
    q0 = np.array(robot.mj_model.qpos0)
    _, _, native = native_rollout(robot, theta, q0, np.zeros(robot.nv), u, sensors=True)
    cols = tuple(range(robot.mj_model.nsensordata))
    twin = np.asarray(jax.jit(simulate, static_argnums=(0, 5, 6, 7, 8))(
        robot, robot.to_vector(theta), q0, np.zeros(robot.nv), u, 0, None, True, cols)[2])
    assert np.abs(native[:, 3:6]).max() > 5.0                       # the accelerometer reads gravity
    err = np.abs(twin - native).max()
    assert err < 1e-9, err
