"""Model error of open-loop predictions: an autocorrelated discrepancy added to the predictive.

Where the model class is wrong, parameter uncertainty and sensor noise do not explain how far an
open-loop prediction strays: the rest is model error, smooth in time. It is represented as an AR(1)
process on each measured position, started at zero at the measured start state,

    d_0 = 0,  d_t = φ d_{t−1} + s √(1 − φ²) η_t,  η_t ~ N(0, 1),  φ = exp(−dt / τ),

so that its sd after t steps is s √(1 − φ^{2t}) (rad): it grows from zero over the time constant τ (s)
to the stationary sd s. s may scale with the recording's settings (e.g. a firmware gain):
log s = log s_0 + Σ_k β_k log(setting_k / reference_k) over the settings that vary among the fit
recordings. s_0, τ and β are estimated from the residuals of open-loop rollouts of the fit recordings
only, by the composite likelihood of their marginals e_t ~ N(0, s² (1 − φ^{2t})) (what a band must
match; the innovations of such bursty errors are far from Gaussian).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.optimize import minimize

from twin_bayes.inference.predictive import Bands


class ModelError(NamedTuple):
    """sd (nq,) stationary sd s_0 (rad) at `reference` settings (K,), time_const_s τ (s),
    gain (K,) exponents β of the settings (0 for settings that did not vary in the fit)."""

    sd: np.ndarray
    time_const_s: float
    reference: np.ndarray
    gain: np.ndarray

    def scale(self, settings) -> np.ndarray:
        """Stationary sd (nq,) for a recording's settings (K,)."""
        ratio = np.log(np.asarray(settings, np.float64) / self.reference)
        return self.sd * np.exp(float(self.gain @ ratio))

    def as_dict(self) -> dict:
        return {"sd_rad": self.sd.tolist(), "time_const_s": self.time_const_s,
                "reference_settings": self.reference.tolist(), "settings_exponents": self.gain.tolist()}

    @classmethod
    def from_dict(cls, d: dict, nq: int, n_settings: int) -> ModelError:
        """The inverse of `as_dict`, checked: ValueError names what is missing, misshapen or not positive."""
        try:
            me = cls(np.asarray(d["sd_rad"], np.float64), float(d["time_const_s"]),
                     np.asarray(d["reference_settings"], np.float64), np.asarray(d["settings_exponents"], np.float64))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"model error: missing or non-numeric field ({err})") from None
        if me.sd.shape != (nq,) or me.reference.shape != (n_settings,) or me.gain.shape != (n_settings,):
            raise ValueError(f"model error: expected sd_rad ({nq},) and settings ({n_settings},), got "
                             f"{me.sd.shape}, {me.reference.shape}, {me.gain.shape}")
        values = np.concatenate([me.sd, me.reference, me.gain, [me.time_const_s]])
        if not np.isfinite(values).all() or (me.sd <= 0).any() or (me.reference <= 0).any() or me.time_const_s <= 0:
            raise ValueError("model error: sd, time constant and reference settings must be finite and > 0")
        return me


def fit_model_error(residuals: np.ndarray, mask: np.ndarray, settings: np.ndarray, dt: float) -> ModelError:
    """Estimate the discrepancy from open-loop residuals (R, T, nq) with mask (R, T) and settings (R, K)."""
    residuals, mask, settings = (np.asarray(a, np.float64) for a in (residuals, mask, settings))
    reference = np.exp(np.mean(np.log(settings), axis=0))
    varies = np.ptp(np.log(settings), axis=0) > 1e-9
    x = jnp.asarray(np.log(settings / reference)[:, varies])                      # (R, K')
    steps = jnp.arange(1, residuals.shape[1] + 1)
    e2, m = jnp.asarray(residuals ** 2), jnp.asarray(mask)[..., None]
    nq = residuals.shape[2]

    def nll(p):                   # p = (log s_0 (nq,), log τ, β (K',))
        log_s = p[:nq][None, :] + (x @ p[nq + 1:])[:, None]                     # (R, nq)
        phi = jnp.exp(-dt / jnp.exp(p[nq]))
        var = jnp.exp(2 * log_s)[:, None, :] * (1 - phi ** (2 * steps))[None, :, None]
        return jnp.sum(m * (e2 / var + jnp.log(var))) / jnp.sum(m)

    start = jnp.concatenate([jnp.log(jnp.sqrt(jnp.sum(e2 * m, (0, 1)) / jnp.sum(m))), jnp.zeros(1),
                             jnp.zeros(int(varies.sum()))])
    p = np.asarray(minimize(nll, start, method="BFGS").x)
    gain = np.zeros(settings.shape[1])
    gain[varies] = p[nq + 1:]
    return ModelError(np.exp(p[:nq]), float(np.exp(p[nq])), reference, gain)


@partial(jax.jit, static_argnums=3)
def ar1_paths(key, sd, phi, noise_shape):
    """AR(1) paths (S, T, nq) from zero with stationary sd (nq,) and coefficient phi."""
    eta = jax.random.normal(key, noise_shape) * sd * jnp.sqrt(1 - phi ** 2)

    def step(d, e):
        d = phi * d + e
        return d, d

    _, d = jax.lax.scan(step, jnp.zeros(noise_shape[::2]), jnp.swapaxes(eta, 0, 1))
    return jnp.swapaxes(d, 0, 1)


def add_model_error(b: Bands, me: ModelError, key, settings, dt: float) -> Bands:
    """The bands with the model error added to every predictive draw of q (draws and quantiles)."""
    phi = float(np.exp(-dt / me.time_const_s))
    d = np.asarray(ar1_paths(key, jnp.asarray(me.scale(settings)), phi, b.samples_q.shape))
    samples = b.samples_q + d
    return b._replace(q=np.quantile(samples, np.asarray(b.quantiles), axis=0), samples_q=samples)
