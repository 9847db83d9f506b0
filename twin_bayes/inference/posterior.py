"""The posterior: versioned weighted particles in unconstrained space, with names and transforms."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Particles(NamedTuple):
    """Weighted particles: z (N, D) unconstrained, log_weights (N,) normalised (logsumexp = 0)."""

    z: jnp.ndarray
    log_weights: jnp.ndarray


def normalise(log_weights: jnp.ndarray) -> jnp.ndarray:
    return log_weights - jax.scipy.special.logsumexp(log_weights)


def ess(log_weights: jnp.ndarray) -> jnp.ndarray:
    """Kish effective sample size of normalised log-weights (N,)."""
    return 1.0 / jnp.sum(jnp.exp(2.0 * normalise(log_weights)))


def moments(p: Particles) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weighted mean (D,) and covariance (D, D) of the particles in unconstrained space."""
    w = jnp.exp(normalise(p.log_weights))
    mean = w @ p.z
    d = p.z - mean
    return mean, (w[:, None] * d).T @ d


def weighted_quantiles(x: np.ndarray, w: np.ndarray, qs) -> np.ndarray:
    """Quantiles of weighted samples x (N,) with weights w (N,) summing to 1."""
    order = np.argsort(x)
    cdf = np.cumsum(w[order]) - 0.5 * w[order]
    return np.interp(qs, cdf, x[order])


class Posterior:
    """A posterior version: particles, their constrained values and a summary.

    `values` (N, D) are physical values (SI units of each parameter) in
    `names` order; `weights` (N,) sum to one. `stale` marks a posterior kept
    because the last update was rejected, with `reason`.
    """

    def __init__(self, names, particles: Particles, values: np.ndarray, version: int,
                 stale: bool = False, reason: str = ""):
        self.names = tuple(names)
        self.particles = particles
        self.values = np.asarray(values, dtype=np.float64)
        log_w = np.asarray(particles.log_weights, dtype=np.float64)
        w = np.exp(log_w - np.max(log_w))
        self.weights = w / np.sum(w)
        self.version = version
        self.stale = stale
        self.reason = reason

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def ess(self) -> float:
        return float(1.0 / np.sum(self.weights ** 2))

    def mean(self) -> dict[str, float]:
        return dict(zip(self.names, (self.weights @ self.values).tolist()))

    def summary(self, quantiles=(0.05, 0.5, 0.95)) -> dict[str, dict[str, float]]:
        """Per parameter: mean, sd and the given quantiles (keys 'q05', 'q50', ...)."""
        out = {}
        for i, name in enumerate(self.names):
            x = self.values[:, i]
            mean = float(self.weights @ x)
            sd = float(np.sqrt(max(self.weights @ (x - mean) ** 2, 0.0)))
            qv = weighted_quantiles(x, self.weights, quantiles)
            out[name] = {"mean": mean, "sd": sd,
                         **{f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(quantiles, qv)}}
        return out

    def resample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Indices of n equally weighted draws (systematic resampling)."""
        n = n or len(self)
        positions = (rng.random() + np.arange(n)) / n
        return np.minimum(np.searchsorted(np.cumsum(self.weights), positions), len(self) - 1)
