"""The predictive: rollouts of posterior particles plus observation noise, as quantile bands."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.models import TwinModel


class Bands(NamedTuple):
    """Predictive quantile bands: q (Q, T, nq) rad, qd (Q, T, nv) rad/s for `quantiles` (Q,).

    `mean_q`, `mean_qd` are the noise-free predictions averaged over particles;
    `samples_q` (S, T, nq) are the predictive draws (noise included) behind the bands.
    """

    quantiles: tuple[float, ...]
    q: np.ndarray
    qd: np.ndarray
    mean_q: np.ndarray
    mean_qd: np.ndarray
    samples_q: np.ndarray
    samples_qd: np.ndarray


@partial(jax.jit, static_argnums=(0, 1))
def predictive_samples(model: TwinModel, draws_per_particle: int, key, z, q0, qd0, commands, settings):
    """Noise-free rollouts (M, T, ·) of particles z (M, D) and noisy draws (M·K, T, ·)."""
    q, qd = jax.vmap(lambda zi: model.predict_clean(zi, q0, qd0, commands, settings))(z)
    values = jax.vmap(model.constrain)(z)
    out = []
    for c, clean in (("q", q), ("qd", qd)):
        if c in model.channels:
            scale = values[:, model.names.index(f"noise:{c}")]
        else:
            scale = jnp.zeros(z.shape[0])
        key, sub = jax.random.split(key)
        shape = (draws_per_particle,) + clean.shape
        eps = (jax.random.t(sub, model.df, shape) if model.df is not None else jax.random.normal(sub, shape))
        noisy = clean[None] + scale[None, :, None, None] * eps
        out.append(noisy.reshape((-1,) + clean.shape[1:]))
    return q, qd, out[0], out[1]


def bands(model: TwinModel, key, z, q0, qd0, commands, settings, quantiles=(0.05, 0.5, 0.95),
          draws_per_particle: int = 8) -> Bands:
    """Quantile bands of the predictive from equally weighted particles z (M, D)."""
    q, qd, sq, sqd = predictive_samples(model, draws_per_particle, key, jnp.asarray(z), jnp.asarray(q0),
                                        jnp.asarray(qd0), jnp.asarray(commands), jnp.asarray(settings))
    sq, sqd = np.asarray(sq), np.asarray(sqd)
    qs = np.asarray(quantiles)
    return Bands(tuple(float(x) for x in quantiles), np.quantile(sq, qs, axis=0), np.quantile(sqd, qs, axis=0),
                 np.asarray(q).mean(0), np.asarray(qd).mean(0), sq, sqd)
