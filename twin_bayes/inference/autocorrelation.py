"""The integrated autocorrelation time of residuals: how many samples one independent observation is worth.

Where a model is wrong its residuals are model error, smooth over many samples; a likelihood that
counts them as independent noise is κ times too confident. Both the whole-log fit and the streaming
engine temper their likelihoods by κ, estimated here by one rule: κ = 1 + 2 Σ_k ρ_k over the lags
before the autocorrelation ρ_k first falls below CUTOFF.
"""
from __future__ import annotations

import jax.numpy as jnp

# Autocorrelations below this end the sum.
CUTOFF = 0.05


def lagged_products(x, mask):
    """Σ_t x_t x_{t+k} and the number of pairs with both samples real, for lags k < T: (T,), (T,).

    x (B, T, C): B independent series of T samples (time on axis 1) in C channels, pooled; mask
    (B, T, C) 1.0 for real samples (x must be 0 where the mask is). By FFT: O(T log T)."""
    T = x.shape[1]

    def lagged(a):
        f = jnp.fft.rfft(a, n=2 * T, axis=1)
        return jnp.sum(jnp.fft.irfft(f * jnp.conj(f), n=2 * T, axis=1)[:, :T], axis=(0, 2))

    return lagged(jnp.asarray(x) * mask), jnp.round(lagged(jnp.asarray(mask, dtype=jnp.result_type(float))))


def integrated_time(products, pairs):
    """κ () ≥ 1 from lagged products and pair counts (K,) (`lagged_products`, possibly summed over
    many windows): ρ_k = (products_k / pairs_k) / (products_0 / pairs_0)."""
    cov = products / jnp.maximum(pairs, 1e-12)
    rho = cov[1:] / jnp.maximum(cov[0], 1e-300)
    counted = jnp.cumprod(rho > CUTOFF) * (pairs[1:] > 0)
    return jnp.maximum(1.0 + 2.0 * jnp.sum(rho * counted), 1.0)
