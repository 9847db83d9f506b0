"""Predicted sensor readings (`Twin.predict`, `Bands.readings`) against the native-MuJoCo emulator.

arm2 with the tilted forearm IMU (tests/sim/arm2_sensors.xml) observing a gyro, an accelerometer, a frame
orientation, a frame position and a joint velocity, each sensor with hidden bias, scale, misalignment or delay
(three of them delayed). The posterior is collapsed onto the truth, so the predictive is the sensor models'
and the noise model's alone: one compiled predictive (one horizon, one particle count) serves every test here.
"""
from pathlib import Path

import jax
import numpy as np
import pytest

from twin_bayes.config import parse_config
from twin_bayes.inference import Twin
from twin_bayes.inference.posterior import Particles
from twin_bayes.models import TwinModel
from twin_bayes.sim.emulator import emulate

ROBOT = Path(__file__).resolve().parents[1] / "sim" / "arm2_sensors.xml"
DT = 0.002
SENSORS = ("gyro", "acc", "quat", "pos", "elbow_vel")
NOISE = {"q": 0.002, "qd": 0.02, "gyro": 0.01, "acc": 0.05, "quat": 0.002, "pos": 0.001, "elbow_vel": 0.02}
TRUTH = {"body_mass:forearm": 0.55, "bias_y:gyro": 0.02, "scale_y:gyro": 1.03, "misalign_x:gyro": 0.02,
         "delay_s:gyro": 3.5 * DT, "bias_x:acc": -0.1, "scale_x:acc": 1.05, "misalign_z:acc": -0.03,
         "misalign_y:quat": 0.02, "delay_s:quat": 1.3 * DT, "bias_z:pos": 0.01, "scale_x:pos": 0.98,
         "bias:elbow_vel": 0.05, "scale:elbow_vel": 1.1, "delay_s:elbow_vel": 0.6 * DT}
HORIZON = 50          # steps (0.1 s)
PARTICLES = 32


def prior(name: str, value: float) -> dict:
    """A prior around the truth: lognormal for masses and scales, bounded for delays, normal for the rest."""
    kind = name.split(":")[0]
    if kind == "delay_s":
        return {"dist": "truncnormal", "loc": 0.004, "scale": 0.003, "low": 0.0, "high": 0.01}
    if kind.startswith(("scale", "body_mass")):
        return {"dist": "lognormal", "scale": 0.1}
    return {"dist": "normal", "loc": 0.0, "scale": 2 * abs(value)}


@pytest.fixture(scope="module")
def model():
    cfg = parse_config({
        "name": "arm2_predicted_readings", "robot": {"name": str(ROBOT)},
        "parameters": {n: prior(n, v) for n, v in TRUTH.items()},
        "observation": {"sensors": list(SENSORS), "noise_scale": NOISE, "noise": "normal"},
        "inference": {"window_s": 0.5, "particles": PARTICLES, "max_latency_s": 0.01}})
    return TwinModel(cfg)


def collapsed_twin(model: TwinModel, noise: dict[str, float]) -> Twin:
    """A twin whose posterior is every particle at the truth, with these noise scales."""
    values = np.array([TRUTH[n] for n in model.param_names] + [noise[n.split(":", 1)[1]] for n in model.noise_names])
    z = np.tile(np.asarray(model.unconstrain(values)), (PARTICLES, 1))
    twin = Twin(model.cfg, model)
    twin.restore(Particles(z, np.full(PARTICLES, -np.log(PARTICLES))), 1)
    return twin


def measured_readings(model: TwinModel, rec, start: int) -> np.ndarray:
    """The recording's readings of the model's sensors (HORIZON, R), rows start … start + HORIZON − 1."""
    return np.concatenate([rec.sensors[n][start:start + HORIZON] for n in model.sensors], axis=1)


def scored(model: TwinModel) -> np.ndarray:
    """(HORIZON, R): the rows the likelihood scores (a delayed sensor's first rows reach before the start)."""
    return np.arange(HORIZON)[:, None] >= np.asarray(model.unscored_rows)


def test_predicted_readings_at_the_true_parameters_are_the_emulators(model):
    """At the truth (noise scales 1e-12), the predicted mean readings from a measured state under the recorded
    commands are the noise-free emulator's readings (native MuJoCo through the truth's sensor models, one
    continuous rollout) to 1e-9 on every row the likelihood scores, delays included; a delayed sensor's rows
    that reach before the start hold the start state's reading. Readings have the model's columns."""
    assert model.unscored_rows == (5,) * 3 + (0,) * 3 + (5,) * 4 + (0,) * 3 + (5,)      # delayed: gyro, quat, elbow_vel
    twin = collapsed_twin(model, dict.fromkeys(NOISE, 1e-12))
    rec = emulate(model.robot, TRUTH, 0.6, seed=5, noise=dict.fromkeys(NOISE, 0.0))
    r = len(model.readings)
    for start in (0, 120, 240):
        b = twin.predict(rec.q[start], rec.qd[start], rec.ctrl[start:start + HORIZON], key=jax.random.PRNGKey(start))
        assert b.readings.shape == (3, HORIZON, r) and b.mean_readings.shape == (HORIZON, r)
        assert b.samples_readings.shape == (PARTICLES * 8, HORIZON, r)
        expected, rows = measured_readings(model, rec, start), scored(model)
        assert np.abs(expected).max() > 1.0                                                 # the readings move
        err = np.abs(b.mean_readings - expected)[rows].max()
        assert err < 1e-9, err                                                             # measured: 1.0e-12
        np.testing.assert_allclose(b.mean_q, rec.q[start + 1:start + 1 + HORIZON], atol=1e-9)
        gyro = b.mean_readings[:4, :3]                                                     # τ = 3.5 steps
        np.testing.assert_array_equal(gyro, np.repeat(gyro[:1], 4, axis=0))
        assert np.abs(b.mean_readings[4, :3] - gyro[0]).max() > 1e-6


def test_90_percent_bands_of_predicted_readings_cover_noisy_emulated_readings(model):
    """With the emulator's noise scales, the 90 % bands of the readings predicted from measured (noisy) states
    hold 0.85-0.95 of the noisy emulated readings on the rows the likelihood scores: 37 starts of 50 steps,
    14 columns (measured: 0.908; per sensor 0.89-0.92). The start state's noise, carried through the dynamics,
    is in the bands: without it they hold 0.81 (the gyro's 0.70)."""
    twin = collapsed_twin(model, NOISE)
    rec = emulate(model.robot, TRUTH, 2.0, seed=6, noise=NOISE)
    inside, rows = [], scored(model)
    for start in range(0, len(rec.q) - HORIZON - 1, 26):
        b = twin.predict(rec.q[start], rec.qd[start], rec.ctrl[start:start + HORIZON], quantiles=(0.05, 0.95),
                         key=jax.random.PRNGKey(start))
        y = measured_readings(model, rec, start)
        inside.append(np.where(rows, (b.readings[0] <= y) & (y <= b.readings[1]), np.nan))
    inside = np.array(inside)
    per_sensor = {}
    for name, end, width in zip(model.sensors, np.cumsum(model.sensor_widths), model.sensor_widths):
        per_sensor[name] = float(np.nanmean(inside[..., end - width:end]))
    coverage = float(np.nanmean(inside))
    print(f"90 % band coverage of noisy readings over {len(inside)} starts: {coverage:.3f}, per sensor {per_sensor}")
    assert 0.85 <= coverage <= 0.95, (coverage, per_sensor)
    assert all(0.8 <= c <= 0.97 for c in per_sensor.values()), per_sensor
