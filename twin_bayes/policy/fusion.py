"""Torso tilt from a strapdown IMU: a complementary filter on the gravity direction (Mahony's, on S²).

The filter keeps û (..., 3), the world's up axis in the body (IMU) frame; its x and y components are the
tilt the balance reflex reads (`controller.base_reading`). Each step it corrects the readings with the
calibration (the inverse of the sensor model of `sim.sensors`, y = R(δ)ᵀ v + b with unit scale):

    ω = ω_m − b_g                           gyro (rad/s)
    a = R(δ_a) (a_m − b_a),  v = a / |a|    accelerometer (m/s²): at rest it reads +g along up
    ω_c = ω + k_p · w(|a|) · (v × û)        Mahony's correction: pulls û toward v at rate k_p (1/s)
    û ← R(ω_c·dt)ᵀ û                        the up axis in a frame that turned by ω_c·dt (exact exp map)

w(|a|) = exp(−(|a| − g)² / (2 σ_a²)) trusts the accelerometer as a gravity sensor only while it reads
about g (σ_a, m/s²: the gate): under a push it reads the push too.

Why this filter: the reflex needs tilt only, and tilt is what an accelerometer and a gyro observe (yaw
is not, without a magnetometer), so the state is one unit vector and the filter has two interpretable
gains: k_p is the crossover frequency below which the accelerometer wins over the integrated gyro
(a gyro bias b leaves a tilt error of about b / k_p, an accelerometer bias b leaves b / g whatever k_p),
σ_a how far from g a reading still counts. An EKF would need noise covariances for a process whose
real error is the unmodelled linear acceleration, and would learn biases online that the twin's posterior
gives directly. All functions take NumPy arrays with any leading batch shape (e.g. posterior draws ×
gains), so one pass scores many calibrations.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from twin_bayes.sim.sensors import rotation

G = 9.81    # m/s², the gravity of the shipped MJCFs


class FilterParams(NamedTuple):
    """Calibration and gains, each with an optional leading batch shape (...):
    gyro_bias (..., 3) rad/s, accel_bias (..., 3) m/s², accel_misalign (..., 3) rad (δ of `sim.sensors`),
    kp (...) 1/s, gate (...) m/s²."""

    gyro_bias: np.ndarray
    accel_bias: np.ndarray
    accel_misalign: np.ndarray
    kp: np.ndarray
    gate: np.ndarray


def from_values(values, gyro: str, accel: str, kp, gate) -> FilterParams:
    """The filter corrected by sensor-model values {parameter name: value or (...) array} of a twin's
    gyro and accelerometer (`bias_x|y|z:<gyro>`, `bias_x|y|z:<accel>`, `misalign_x|y|z:<accel>`; 0
    where absent: the uncalibrated filter), with gains kp (...) 1/s and gate (...) m/s²."""
    def axes(kind, sensor):
        return np.stack(np.broadcast_arrays(*(np.asarray(values.get(f"{kind}_{a}:{sensor}", 0.0), np.float64)
                                              for a in "xyz")), -1)
    return FilterParams(axes("bias", gyro), axes("bias", accel), axes("misalign", accel),
                        np.asarray(kp, np.float64), np.asarray(gate, np.float64))


def corrected(params: FilterParams, gyro, accel):
    """Calibrated angular velocity (..., 3) rad/s and specific force (..., 3) m/s² of readings (..., 3)."""
    omega = gyro - params.gyro_bias
    a = np.einsum("...ij,...j->...i", rotation(np.broadcast_to(params.accel_misalign, np.shape(accel))),
                  accel - params.accel_bias)
    return omega, a


def initial(params: FilterParams, accel) -> np.ndarray:
    """The up axis (..., 3) read from one accelerometer reading (..., 3) (the robot at rest)."""
    a = corrected(params, np.zeros_like(accel), accel)[1]
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def step(params: FilterParams, up, gyro, accel, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """One filter step: the up axis (..., 3) before the readings gyro (..., 3) rad/s, accel (..., 3) m/s²
    were taken, to the up axis dt (s) later; also returns the calibrated angular velocity (..., 3)."""
    omega, a = corrected(params, gyro, accel)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    trust = np.exp(-0.5 * ((norm - G) / np.asarray(params.gate)[..., None]) ** 2)
    omega_c = omega + np.asarray(params.kp)[..., None] * trust * np.cross(a / norm, up)
    new = np.einsum("...ji,...j->...i", rotation(omega_c * dt), up)
    return new / np.linalg.norm(new, axis=-1, keepdims=True), omega


def run(params: FilterParams, gyro, accel, dt: float, up0=None) -> np.ndarray:
    """Filter a recording gyro, accel (T, ..., 3) from the up axis up0 (3,) (default: `initial` on the first
    accelerometer row): the up axis (T, ..., 3) after each row, row k the estimate at the state after the
    readings of row k."""
    up, out = initial(params, accel[0]) if up0 is None else np.broadcast_to(up0, np.shape(accel[0])), []
    for k in range(len(gyro)):
        up = step(params, up, gyro[k], accel[k], dt)[0]
        out.append(up)
    return np.stack(out)


def base(up, omega) -> np.ndarray:
    """The balance reflex's base reading (..., 4) from the up axis and the angular velocity (..., 3):
    tilt toward x and y (the up axis's x, y components) and the rates about x and y (rad/s)."""
    return np.concatenate([up[..., :2], omega[..., :2]], axis=-1)


def tilt_error(up_est, up_true) -> np.ndarray:
    """Angle (rad) between estimated and true up axes (..., 3)."""
    return np.arctan2(np.linalg.norm(np.cross(up_est, up_true), axis=-1), np.sum(up_est * up_true, axis=-1))


class Estimator:
    """The filter as `closed_loop.real_rollout`'s estimator hook: each call gets the IMU's latest measured
    readings (the whole sensordata row (nsensordata,); `gyro_cols`, `accel_cols` its 3 columns each) and
    returns the base reading (4,) at the current state. The first call (the readings at the start state)
    only starts it, at the up axis up0 (3,) (default: that call's accelerometer reading's, `initial`); each
    later one steps it by dt (s) over the readings of the step before."""

    def __init__(self, params: FilterParams, gyro_cols, accel_cols, dt: float, up0=None):
        self.params, self.dt, self.up0 = params, dt, up0
        self.gyro_cols, self.accel_cols = np.asarray(gyro_cols), np.asarray(accel_cols)
        self.up: np.ndarray | None = None

    def __call__(self, sensors: np.ndarray, exact_base: np.ndarray) -> np.ndarray:
        gyro, accel = sensors[self.gyro_cols], sensors[self.accel_cols]
        if self.up is None:
            self.up = initial(self.params, accel) if self.up0 is None else np.asarray(self.up0, np.float64)
            omega = corrected(self.params, gyro, accel)[0]
        else:
            self.up, omega = step(self.params, self.up, gyro, accel, self.dt)
        return base(self.up, omega)
