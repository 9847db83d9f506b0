"""Streaming SMC: one window at a time, BlackJAX adaptive tempering with gradient-based moves.

The prior of a window is the posterior of the windows before it: the config's
prior for the first window, afterwards a Gaussian fitted to the particle cloud
in unconstrained space (widened by random-walk drift or forgetting), i.e. an
assumed-density filter with SMC inside each window. Each window starts from
fresh draws of that prior, so the cloud never impoverishes across windows.
They are reweighted by the window's likelihood in tempered stages: the first
step needs no move (the draws are exact for it); where the window is too
informative for one step, BlackJAX `adaptive_tempered_smc` stages follow, each
picking the largest temperature step that keeps the target ESS, resampling,
and moving every particle with a one-step HMC kernel (MALA with a dense mass
matrix from the particle cloud) on the tempered target.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.smc import resampling

from twin_bayes.inference.posterior import Particles, ess, moments
from twin_bayes.models import TwinModel, Window, batch_log_lik


# Acceptance rate the one-step HMC (MALA) moves aim for; step sizes follow it.
TARGET_ACCEPT = 0.6


class GaussianPrior(NamedTuple):
    """N(mean (D,), chol @ chol.T) in unconstrained space; `exact` selects the model's own prior."""

    mean: jnp.ndarray
    chol: jnp.ndarray
    exact: jnp.ndarray


class StageInfo(NamedTuple):
    beta: jnp.ndarray
    acceptance: jnp.ndarray
    divergent: jnp.ndarray
    log_evidence: jnp.ndarray
    ess: jnp.ndarray


def gaussian_prior(p: Particles, drift: jnp.ndarray, exact: bool) -> GaussianPrior:
    """The Gaussian fitted to particles, its variance widened by drift (D,) sd per window."""
    mean, cov = moments(p)
    d = mean.shape[0]
    cov = cov + jnp.diag(drift ** 2) + 1e-10 * jnp.eye(d)
    return GaussianPrior(mean, jnp.linalg.cholesky(cov), jnp.asarray(exact))


def _gauss_logpdf(g: GaussianPrior, z):
    y = jax.scipy.linalg.solve_triangular(g.chol, z - g.mean, lower=True)
    return -0.5 * y @ y - jnp.sum(jnp.log(jnp.diag(g.chol)))


def window_log_prior(model: TwinModel, g: GaussianPrior, z):
    """log g(z) of unconstrained z (D,): the config's prior where `g.exact`, else the Gaussian."""
    return jnp.where(g.exact, model.log_prior(z), _gauss_logpdf(g, z))


@partial(jax.jit, static_argnums=(0, 1))
def smc_stage(model: TwinModel, num_mcmc_steps: int, key, state, windows: Window, g: GaussianPrior,
              step_size, inverse_mass):
    """One adaptive tempering stage over all particles; windows carry a leading batch axis (B, ...)."""
    target_ess = model.cfg.inference.target_ess
    kernel = blackjax.adaptive_tempered_smc(
        partial(window_log_prior, model, g),
        partial(batch_log_lik, model, windows=windows),
        blackjax.hmc.build_kernel(),
        blackjax.hmc.init,
        blackjax.smc.extend_params({"step_size": step_size, "inverse_mass_matrix": inverse_mass,
                                    "num_integration_steps": 1}),
        resampling.systematic,
        target_ess,
        num_mcmc_steps=num_mcmc_steps,
    )
    new, info = kernel.step(key, state)
    upd = info.update_info
    log_w = jnp.log(jnp.maximum(new.weights, 1e-300))
    return new, StageInfo(new.tempering_param, jnp.mean(upd.acceptance_rate), jnp.mean(upd.is_divergent),
                          info.log_likelihood_increment, ess(log_w))


@partial(jax.jit, static_argnums=0)
def particle_log_liks(model: TwinModel, z, windows: Window):
    """Log-likelihood (N,) of each particle z (N, D) for windows (B, ...): one vmapped rollout."""
    return jax.vmap(lambda zi: batch_log_lik(model, zi, windows))(z)


def first_temperature(ll: np.ndarray, target_ess: float) -> float:
    """Largest δ in (0, 1] whose weights exp(δ·ll) keep an ESS of at least target_ess·N."""
    ll = np.asarray(ll, dtype=np.float64)
    ll = np.where(np.isfinite(ll), ll, -np.inf)

    def frac(delta):
        w = np.exp(delta * (ll - ll.max()))
        return (w.sum() ** 2 / (w ** 2).sum()) / len(ll) if w.sum() > 0 else 0.0

    if frac(1.0) >= target_ess:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if frac(mid) >= target_ess else (lo, mid)
    return max(lo, 1e-12)


def tempered_update(model: TwinModel, key, z0: jnp.ndarray, windows: Window, g: GaussianPrior,
                    step_size: float, max_stages: int, num_mcmc_steps: int = 1):
    """Temper the windows' likelihood (B windows stacked) into particles z0 (N, D) drawn from the prior g.

    The first temperature step needs no move: z0 are exact draws from the
    stage-0 target, so they are only reweighted. When that step cannot reach
    β = 1 with the target ESS, BlackJAX adaptive tempering stages follow
    (resample, move, reweight). Before each of them the (dense) inverse mass
    matrix is set to the particles' covariance, so moves follow the
    correlations between parameters the data cannot tell apart, and the step
    size follows the last acceptance rate.
    Returns (Particles, [StageInfo per stage as floats], reached β, step size).
    """
    target = model.cfg.inference.target_ess
    ll = np.asarray(particle_log_liks(model, z0, windows))
    delta = first_temperature(ll, target)
    log_w = np.where(np.isfinite(ll), delta * ll, -np.inf)
    log_w = log_w - np.logaddexp.reduce(log_w)
    w = np.exp(log_w)
    stages = [StageInfo(delta, float("nan"), 0.0, float(np.logaddexp.reduce(delta * ll) - np.log(len(ll))),
                        float(1.0 / np.sum(w ** 2)))]
    state = blackjax.smc.tempered.init(z0)._replace(weights=jnp.asarray(w), tempering_param=jnp.asarray(delta))
    beta = delta
    while beta < 1.0 and len(stages) < max_stages:
        key, sub = jax.random.split(key)
        inverse_mass = jnp.cov(state.particles.T, aweights=state.weights) + 1e-10 * jnp.eye(state.particles.shape[1])
        state, info = smc_stage(model, num_mcmc_steps, sub, state, windows, g, jnp.asarray(step_size), inverse_mass)
        info = StageInfo(*(float(x) for x in info))
        stages.append(info)
        beta = info.beta
        if np.isfinite(info.acceptance):
            step_size = float(np.clip(step_size * np.exp(info.acceptance - TARGET_ACCEPT), 0.02, 2.0))
    log_w = jnp.log(jnp.maximum(state.weights, 1e-300))
    return Particles(state.particles, log_w - jax.scipy.special.logsumexp(log_w)), stages, beta, step_size
