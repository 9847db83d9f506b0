"""The torso tilt filter (`policy.fusion`) against exact IMU readings of known motions, and as the estimator
hook of the real humanoid's closed loop (native MuJoCo)."""
import numpy as np
import pytest

from twin_bayes.policy import fusion
from twin_bayes.policy.closed_loop import real_rollout
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.tasks import humanoid_push_task
from twin_bayes.sim import load_robot
from twin_bayes.sim.sensors import rotation

DT = 0.003
OMEGA = np.array([0.4, -0.25, 0.3])           # rad/s, body frame


def spinning(seconds: float, gyro_bias=np.zeros(3), accel_bias=np.zeros(3), misalign=np.zeros(3)):
    """A body turning at the constant rate OMEGA about its IMU from upright: the true up axis (T, 3) at each
    reading and after it, and the IMU's readings (T, 3) each (y = R(δ)ᵀ v + b)."""
    T = int(round(seconds / DT))
    up = np.stack([rotation(OMEGA * DT * k).T @ np.array([0.0, 0.0, 1.0]) for k in range(T + 1)])
    gyro = OMEGA + gyro_bias + np.zeros((T, 3))
    accel = np.einsum("ji,tj->ti", rotation(misalign), fusion.G * up[:-1]) + accel_bias
    return up[:-1], up[1:], gyro, accel


def params(kp=2.0, gate=1.0, gyro_bias=np.zeros(3), accel_bias=np.zeros(3), misalign=np.zeros(3)):
    return fusion.FilterParams(gyro_bias, accel_bias, misalign, np.float64(kp), np.float64(gate))


def test_exact_readings_track_the_true_tilt():
    _, after, gyro, accel = spinning(3.0)
    err = fusion.tilt_error(fusion.run(params(), gyro, accel, DT), after)
    assert err.max() < 1e-12


def test_a_wrong_start_converges_at_rate_kp():
    """Started 0.3 rad off, the error shrinks like exp(−kp·t) (a Mahony filter's linearised error)."""
    kp = 2.0
    _, after, gyro, accel = spinning(3.0)
    up = rotation(np.array([0.3, 0.0, 0.0])).T @ np.array([0.0, 0.0, 1.0])
    errs = []
    for k in range(len(gyro)):
        up = fusion.step(params(kp), up, gyro[k], accel[k], DT)[0]
        errs.append(fusion.tilt_error(up, after[k]))
    t = (np.arange(len(errs)) + 1) * DT
    expected = 0.3 * np.exp(-kp * t)
    assert np.all(np.abs(np.array(errs) - expected) < 0.1 * expected + 1e-9)
    assert errs[-1] < 1e-3


def test_gyro_bias_drifts_without_and_vanishes_with_its_correction():
    """A gyro bias b (rad/s): pure integration (kp = 0) drifts by |b|·t, the complementary filter settles
    at about |b_⊥| / kp; corrected by the true bias, both stay exact."""
    b = np.array([0.03, -0.02, 0.0])
    _, after, gyro, accel = spinning(4.0, gyro_bias=b)
    drift = fusion.tilt_error(fusion.run(params(kp=0.0), gyro, accel, DT), after)
    assert drift[-1] == pytest.approx(np.linalg.norm(b) * 4.0, rel=0.15)
    settled = fusion.tilt_error(fusion.run(params(kp=2.0), gyro, accel, DT), after)[-300:]
    assert np.all(np.abs(settled - np.linalg.norm(b) / 2.0) < 0.3 * np.linalg.norm(b) / 2.0)
    for kp in (0.0, 2.0):
        exact = fusion.tilt_error(fusion.run(params(kp=kp, gyro_bias=b), gyro, accel, DT), after)
        assert exact.max() < 1e-9


def test_accelerometer_bias_and_misalignment_tilt_the_estimate_until_corrected():
    """At rest, an accelerometer bias b and misalignment δ move the estimate by about |b_⊥|/g + δ_⊥ (rad);
    with both corrected the estimate is exact."""
    b, delta = np.array([0.3, -0.2, 0.1]), np.array([0.02, 0.015, 0.01])
    up = np.tile([0.0, 0.0, 1.0], (1000, 1))
    gyro = np.zeros((1000, 3))
    accel = np.einsum("ji,tj->ti", rotation(delta), fusion.G * up) + b
    off = fusion.tilt_error(fusion.run(params(), gyro, accel, DT), up)[-1]
    tilt = np.array([b[0] / fusion.G - delta[1], b[1] / fusion.G + delta[0]])
    assert off == pytest.approx(np.linalg.norm(tilt), rel=0.02)
    fixed = fusion.run(params(accel_bias=b, misalign=delta), gyro, accel, DT)
    assert fusion.tilt_error(fixed, up).max() < 1e-12


def test_the_gate_ignores_readings_far_from_g():
    """At rest, then 0.3 s of a 5 m/s² sideways acceleration: a tight gate keeps the estimate on the gyro,
    (0.2 m/s², |a| is 1.2 above g) an open one follows the accelerometer off the true tilt at rate kp."""
    up = np.tile([0.0, 0.0, 1.0], (200, 1))
    accel = fusion.G * up
    accel[100:, 0] = 5.0
    gyro = np.zeros((200, 3))
    tight = fusion.tilt_error(fusion.run(params(gate=0.2), gyro, accel, DT), up)
    wide = fusion.tilt_error(fusion.run(params(gate=100.0), gyro, accel, DT), up)
    pulled = np.arctan2(5.0, fusion.G) * (1 - np.exp(-2.0 * 100 * DT))         # kp = 2 for 0.3 s
    assert tight.max() < 1e-4
    assert wide[-1] == pytest.approx(pulled, rel=0.05)


@pytest.fixture(scope="module")
def humanoid():
    robot = load_robot("humanoid")
    task = humanoid_push_task(robot)
    return robot, task, initial_policy(task)


def test_estimator_hook_keeps_the_default_run_and_sees_the_sensor_models(humanoid):
    """A hook that returns the exact reading leaves the run bit for bit as without it; the readings it gets
    are the IMU's under the truth's sensor models (a gyro bias shows in every row)."""
    robot, task, policy = humanoid
    truth = {**robot.nominal(), "bias_x:torso_gyro": 0.5}
    rows = []

    def record(sensors, exact):
        rows.append(sensors[robot.layout.sensors.columns(["torso_gyro"])])
        return exact

    plain = real_rollout(robot, truth, policy, task, seed=2)
    hooked = real_rollout(robot, truth, policy, task, seed=2, estimator=record)
    assert all(np.array_equal(a, b) for a, b in zip(plain, hooked))
    assert len(rows) == len(task.push)
    # row t + 1 is step t's reading: the angular velocity about x before it (exact base rate of state t) + bias
    np.testing.assert_allclose(np.array(rows)[2:, 0], plain.base[:-2, 2] + 0.5, atol=1e-9)


def test_estimator_readings_carry_the_truths_sensor_delay(humanoid):
    """A gyro delayed by two control steps in the truth: the hook's gyro rows are the undelayed ones two
    rows later (the first rows hold the first reading)."""
    robot, task, policy = humanoid
    cols = robot.layout.sensors.columns(["torso_gyro"])
    rows = {}
    for delay in (0.0, 2 * robot.dt):
        rows[delay] = []
        real_rollout(robot, {**robot.nominal(), "delay_s:torso_gyro": delay}, policy, task, seed=0,
                     estimator=lambda s, exact, out=rows[delay]: out.append(s[cols]) or exact)
    plain, delayed = np.array(rows[0.0]), np.array(rows[2 * robot.dt])
    np.testing.assert_allclose(delayed[2:], plain[:-2], atol=1e-12)
    np.testing.assert_allclose(delayed[:2], plain[[0, 0]], atol=1e-12)


def test_the_reflex_acts_on_the_estimators_reading(humanoid):
    """With a reflex, a hook that adds an offset to the exact reading moves the first command by exactly
    −base_gain · offset."""
    robot, task, policy = humanoid
    policy = policy._replace(base_gain=np.full(policy.base_gain.shape, 0.1))
    offset = np.array([0.05, -0.02, 0.1, 0.0])
    plain = real_rollout(robot, robot.nominal(), policy, task, seed=0)
    shifted = real_rollout(robot, robot.nominal(), policy, task, seed=0, estimator=lambda s, exact: exact + offset)
    np.testing.assert_allclose(shifted.u[0] - plain.u[0], -np.asarray(policy.base_gain) @ offset, atol=1e-12)
    assert np.abs(shifted.q - plain.q).max() > 1e-4


def test_calibrated_filter_follows_the_pushed_humanoid(humanoid):
    """Calibrated with the IMU's truth, the filter's tilt on the pushed (and tipping) humanoid stays within
    0.01 of the exact one (measured 0.005); uncalibrated, it is off by more than 0.05 (0.08)."""
    robot, task, policy = humanoid
    truth = {**robot.nominal(), "bias_y:torso_gyro": 0.03, "bias_x:torso_accel": 0.3, "misalign_x:torso_accel": 0.02}
    L = robot.layout.sensors
    cols = L.columns(["torso_gyro"]), L.columns(["torso_accel"])
    noise = {"q": 0.002, "qd": 0.02, "torso_gyro": 0.005, "torso_accel": 0.05}
    calibrated = params(kp=0.05, gate=0.25, gyro_bias=np.array([0.0, 0.03, 0.0]),
                        accel_bias=np.array([0.3, 0.0, 0.0]), misalign=np.array([0.02, 0.0, 0.0]))
    errors = []
    for p in (calibrated, params(kp=1.0, gate=1.0)):
        filt, seen = fusion.Estimator(p, *cols, robot.dt, up0=np.array([0.0, 0.0, 1.0])), []

        def estimate(sensors, exact):
            est = filt(sensors, exact)
            seen.append(est[:2] - exact[:2])
            return exact
        real_rollout(robot, truth, policy, task, seed=1, noise=noise, estimator=estimate)
        errors.append(np.abs(np.array(seen)).max())
    assert errors[0] < 0.01 and errors[1] > 0.05, errors


def test_filter_parameters_from_a_twins_sensor_values():
    """Each sensor-model value lands on its axis; absent ones are 0; batched values keep their batch."""
    p = fusion.from_values({"bias_y:g": 0.1, "bias_x:a": -0.2, "misalign_z:a": 0.02, "bias_x:other": 9.0},
                           "g", "a", 0.5, 2.0)
    np.testing.assert_array_equal(p.gyro_bias, [0.0, 0.1, 0.0])
    np.testing.assert_array_equal(p.accel_bias, [-0.2, 0.0, 0.0])
    np.testing.assert_array_equal(p.accel_misalign, [0.0, 0.0, 0.02])
    assert float(p.kp) == 0.5 and float(p.gate) == 2.0
    batch = fusion.from_values({"bias_z:g": np.array([0.1, 0.2])}, "g", "a", np.array([1.0, 2.0]), 1.0)
    assert batch.gyro_bias.shape == (2, 3) and batch.accel_bias.shape == (3,)     # the filter broadcasts
    np.testing.assert_array_equal(batch.gyro_bias[:, 2], [0.1, 0.2])
