"""The predictive: rollouts of posterior particles plus observation noise, as quantile bands."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.compiled import phase
from twin_bayes.models import TwinModel


class Bands(NamedTuple):
    """Predictive quantile bands: q (Q, T, nq) rad, qd (Q, T, nv) rad/s for `quantiles` (Q,), and the observed
    sensors' readings (Q, T, R), R = the model's reading columns in `TwinModel.readings` order (0 for a twin
    without sensors), each in its sensor's unit.

    Row k of q and qd is the state after command k; row k of the readings is read at the state command k starts
    from (row 0: the start state; `TwinModel.predict_clean`, which says what a delayed sensor's first rows hold).
    `mean_q`, `mean_qd`, `mean_readings` are the noise-free predictions averaged over particles and start-state
    draws; `samples_q` (S, T, nq), `samples_qd`, `samples_readings` (S, T, R) are the predictive draws (noise
    included) behind the bands.
    """

    quantiles: tuple[float, ...]
    q: np.ndarray
    qd: np.ndarray
    mean_q: np.ndarray
    mean_qd: np.ndarray
    samples_q: np.ndarray
    samples_qd: np.ndarray
    readings: np.ndarray
    mean_readings: np.ndarray
    samples_readings: np.ndarray


def _noisy(model: TwinModel, key, clean, scale):
    """clean (N, T, C) plus observation noise of scale (N, 1 or C): Student-t or normal, as in the likelihood."""
    eps = jax.random.t(key, model.df, clean.shape) if model.df is not None else jax.random.normal(key, clean.shape)
    return clean + scale[:, None, :] * eps


def sample_predictive(model: TwinModel, draws_per_particle: int, key, z, q0, qd0, commands, settings):
    """Rollouts of particles z (M, D), K = draws_per_particle each, under commands (T, nu): noise-free q (M·K, T, nq),
    qd (M·K, T, nv), then noisy q, qd, then noise-free readings (M·K, T, R) and noisy readings.

    The measured start state (q0 (nq,), qd0 (nv,)) carries the same sensor noise
    as every other sample, so each rollout starts from it plus a draw of that
    noise at the particle's noise scale; observation noise (Student-t or
    normal, as in the likelihood) is added to each predicted sample, each sensor's at its
    `noise:<sensor>` scale (drawn from `fold_in(key, 2)`: q and qd draw what they drew before readings existed).
    """
    zk = jnp.repeat(z, draws_per_particle, axis=0)
    values = jax.vmap(model.constrain)(zk)
    keys = jax.random.split(key, 4)
    start, scale = {"q": q0, "qd": qd0}, {}
    for i, c in enumerate(("q", "qd")):
        scale[c] = values[:, model.names.index(f"noise:{c}")] if c in model.channels else jnp.zeros(zk.shape[0])
        start[c] = start[c] + scale[c][:, None] * jax.random.normal(keys[i], (zk.shape[0],) + start[c].shape)
    q, qd, readings = jax.vmap(lambda zi, a, b: model.predict_clean(zi, a, b, commands, settings))(
        zk, start["q"], start["qd"])
    sensor_noise = np.repeat(np.asarray([model.names.index(f"noise:{n}") for n in model.sensors], np.int64),
                             model.sensor_widths)                                   # per reading column
    return (q, qd, _noisy(model, keys[2], q, scale["q"][:, None]), _noisy(model, keys[3], qd, scale["qd"][:, None]),
            readings, _noisy(model, jax.random.fold_in(key, 2), readings, values[:, sensor_noise]))


predictive_samples = phase(sample_predictive, static_argnums=(1,))


@phase(static_argnums=(1,))
def predictive_samples_many(model: TwinModel, draws_per_particle: int, keys, z, q0, qd0, commands, settings):
    """`predictive_samples` for R robots of one model at once: every argument after the draws has a
    leading robot axis (keys (R, 2), z (R, M, D), q0 (R, nq), qd0 (R, nv), commands (R, T, nu),
    settings (R, K))."""
    return jax.vmap(lambda *a: sample_predictive(model, draws_per_particle, *a))(keys, z, q0, qd0, commands, settings)


def _bands(quantiles, q, qd, sq, sqd, s, ss) -> Bands:
    """Bands of `sample_predictive`'s outputs."""
    sq, sqd, ss = np.asarray(sq), np.asarray(sqd), np.asarray(ss)
    qs = np.asarray(quantiles)
    return Bands(tuple(float(x) for x in quantiles), np.quantile(sq, qs, axis=0), np.quantile(sqd, qs, axis=0),
                 np.asarray(q).mean(0), np.asarray(qd).mean(0), sq, sqd, np.quantile(ss, qs, axis=0),
                 np.asarray(s).mean(0), ss)


def bands(model: TwinModel, key, z, q0, qd0, commands, settings, quantiles=(0.05, 0.5, 0.95),
          draws_per_particle: int = 8) -> Bands:
    """Quantile bands of the predictive from equally weighted particles z (M, D)."""
    return _bands(quantiles, *predictive_samples(model, draws_per_particle, key, jnp.asarray(z), jnp.asarray(q0),
                                                 jnp.asarray(qd0), jnp.asarray(commands), jnp.asarray(settings)))


def bands_many(model: TwinModel, keys, z, q0, qd0, commands, settings, quantiles=(0.05, 0.5, 0.95),
               draws_per_particle: int = 8) -> list[Bands]:
    """`bands` for R robots of one model in one call (arguments as in `predictive_samples_many`)."""
    out = jax.device_get(predictive_samples_many(model, draws_per_particle, *(jnp.asarray(a) for a in (
        keys, z, q0, qd0, commands, settings))))
    return [_bands(quantiles, *(x[r] for x in out)) for r in range(len(z))]
