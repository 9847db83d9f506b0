"""The predictive: rollouts of posterior particles plus observation noise, as quantile bands."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.compiled import phase
from twin_bayes.models import TwinModel


class Bands(NamedTuple):
    """Predictive quantile bands: q (Q, T, nq) rad, qd (Q, T, nv) rad/s for `quantiles` (Q,).

    `mean_q`, `mean_qd` are the noise-free predictions averaged over particles and start-state draws;
    `samples_q` (S, T, nq) are the predictive draws (noise included) behind the bands.
    """

    quantiles: tuple[float, ...]
    q: np.ndarray
    qd: np.ndarray
    mean_q: np.ndarray
    mean_qd: np.ndarray
    samples_q: np.ndarray
    samples_qd: np.ndarray


def sample_predictive(model: TwinModel, draws_per_particle: int, key, z, q0, qd0, commands, settings):
    """Rollouts of particles z (M, D), K = draws_per_particle each: noise-free (M·K, T, ·) and noisy (M·K, T, ·).

    The measured start state (q0 (nq,), qd0 (nv,)) carries the same sensor noise
    as every other sample, so each rollout starts from it plus a draw of that
    noise at the particle's noise scale; observation noise (Student-t or
    normal, as in the likelihood) is added to each predicted sample.
    """
    zk = jnp.repeat(z, draws_per_particle, axis=0)
    values = jax.vmap(model.constrain)(zk)
    keys = jax.random.split(key, 4)
    start, scale = {"q": q0, "qd": qd0}, {}
    for i, c in enumerate(("q", "qd")):
        scale[c] = values[:, model.names.index(f"noise:{c}")] if c in model.channels else jnp.zeros(zk.shape[0])
        start[c] = start[c] + scale[c][:, None] * jax.random.normal(keys[i], (zk.shape[0],) + start[c].shape)
    q, qd = jax.vmap(lambda zi, a, b: model.predict_clean(zi, a, b, commands, settings))(zk, start["q"], start["qd"])
    noisy = []
    for i, (c, clean) in enumerate((("q", q), ("qd", qd))):
        eps = (jax.random.t(keys[2 + i], model.df, clean.shape) if model.df is not None
               else jax.random.normal(keys[2 + i], clean.shape))
        noisy.append(clean + scale[c][:, None, None] * eps)
    return q, qd, noisy[0], noisy[1]


predictive_samples = phase(sample_predictive, static_argnums=(1,))


@phase(static_argnums=(1,))
def predictive_samples_many(model: TwinModel, draws_per_particle: int, keys, z, q0, qd0, commands, settings):
    """`predictive_samples` for R robots of one model at once: every argument after the draws has a
    leading robot axis (keys (R, 2), z (R, M, D), q0 (R, nq), qd0 (R, nv), commands (R, T, nu),
    settings (R, K))."""
    return jax.vmap(lambda *a: sample_predictive(model, draws_per_particle, *a))(keys, z, q0, qd0, commands, settings)


def _bands(quantiles, q, qd, sq, sqd) -> Bands:
    sq, sqd = np.asarray(sq), np.asarray(sqd)
    qs = np.asarray(quantiles)
    return Bands(tuple(float(x) for x in quantiles), np.quantile(sq, qs, axis=0), np.quantile(sqd, qs, axis=0),
                 np.asarray(q).mean(0), np.asarray(qd).mean(0), sq, sqd)


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
