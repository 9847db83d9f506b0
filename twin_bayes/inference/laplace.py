"""Laplace proposals: a window posterior's mode by damped Newton, its curvature, importance draws.

The target is log g(z) + Σ_b log p(window_b | z) in unconstrained space (D,),
with g the window's prior (`smc.GaussianPrior`; the config's own prior when
`g.exact`). Newton steps use the exact gradient and the Gauss–Newton
curvature (`value_grad_curvature`: one forward-mode pass through the
simulator, which every robot supports), damped Levenberg–Marquardt style on
its eigenvalues so that steps stay uphill far from the mode. At the mode,
N(mode, H⁻¹) is the
Laplace approximation; draws from it (widened by `PROPOSAL_SCALE`) weighted by
target / proposal are exact importance samples of the window posterior, and
the mean of the unnormalised weights estimates the evidence p(window | past).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.inference.posterior import Particles, ess
from twin_bayes.inference.smc import GaussianPrior, window_log_prior
from twin_bayes.models import TwinModel, Window, batch_log_lik

# Proposal sd relative to the Laplace sd: heavier than the target, so weights stay bounded.
PROPOSAL_SCALE = 1.2
# Trial dampings of one Newton step, in units of the current damping (Levenberg–Marquardt):
# the best of the trials wins; the damping shrinks after a pure Newton step and grows otherwise.
DAMPINGS = (0.0, 0.01, 0.1, 1.0, 10.0)


class Laplace(NamedTuple):
    """mean (D,) the mode, chol (D, D) Cholesky of the covariance H⁻¹, Newton iterations taken."""

    mean: jnp.ndarray
    chol: jnp.ndarray
    iterations: int


def log_target(model: TwinModel, g: GaussianPrior, windows: Window, z):
    return window_log_prior(model, g, z) + batch_log_lik(model, z, windows)


def value_grad_curvature(model: TwinModel, g: GaussianPrior, windows: Window, z):
    """log target at z (D,), its gradient (D,) and its Gauss–Newton Hessian (D, D).

    One forward-mode pass (D tangents) through the simulator gives the
    segment predictions and their Jacobian in z. The target with the
    predictions linearised at z has the same value and gradient at z, and its
    Hessian, cheap because no simulator is inside, is exact in the prior, the
    noise scales and the likelihood's dependence on the predictions. It leaves
    out only the simulator's own second derivatives weighted by the residuals,
    small near a mode that fits; the importance weights correct what is left.
    """
    def predict(x):
        return jax.vmap(model.segment_predictions, in_axes=(None, 0))(x, windows)

    pred, tangent = jax.linearize(predict, z)
    jac = jax.vmap(tangent, out_axes=-1)(jnp.eye(z.shape[0]))     # each leaf (..., D)

    def linearised(x):
        q, qd = jax.tree.map(lambda p, j: p + j @ (x - z), pred, jac)
        ll = jax.vmap(model.segment_log_lik, in_axes=(None, 0, 0, 0))(x, q, qd, windows)
        return window_log_prior(model, g, x) + jnp.sum(ll)

    value, grad = jax.value_and_grad(linearised)(z)
    return value, grad, jax.hessian(linearised)(z)


@partial(jax.jit, static_argnums=0)
def newton_step(model: TwinModel, z, damping, windows: Window, g: GaussianPrior):
    """Damped Newton steps from z (D,): (value at z, trial points (K, D), their values (K,), curvature (D, D)).

    The curvature is the Gauss–Newton −∇² log target with eigenvalues reflected to positive
    (|λ|, floored), so every trial step is an ascent direction; trial k adds
    `damping` × DAMPINGS[k] × the largest eigenvalue to the curvature.
    """
    f = partial(log_target, model, g, windows)
    value, grad, hess = value_grad_curvature(model, g, windows, z)
    lam, vec = jnp.linalg.eigh(-hess)
    lam = jnp.maximum(jnp.abs(lam), 1e-8 * jnp.max(jnp.abs(lam)) + 1e-12)
    damp = damping * jnp.asarray(DAMPINGS)[:, None] * jnp.max(lam)
    steps = ((vec.T @ grad)[None, :] / (lam[None, :] + damp)) @ vec.T
    trials = z[None, :] + steps
    curvature = (vec * lam) @ vec.T
    return value, trials, jax.vmap(f)(trials), curvature


def find_mode(model: TwinModel, z0, windows: Window, g: GaussianPrior, max_iter: int = 100,
              tol: float = 1e-4) -> Laplace:
    """Damped Newton from z0 (D,) to the mode.

    Stops when half the squared Newton decrement, the log density a Newton
    step would still gain, is below `tol`, or when no trial step climbs at the
    largest damping; the curvature of that last point gives the covariance.
    """
    z, damping = jnp.asarray(z0), 1e-3
    for it in range(1, max_iter + 1):
        value, trials, values, curv = newton_step(model, z, damping, windows, g)
        newton = trials[0] - z
        if 0.5 * float(newton @ curv @ newton) < tol:   # Newton decrement: converged
            break
        values = np.where(np.isfinite(values), np.asarray(values), -np.inf)
        best = int(np.argmax(values))
        if values[best] <= float(value):
            if damping >= 1e6:
                break
            damping = min(damping * 1e3, 1e6)
            continue
        z = trials[best]
        damping = float(np.clip(damping * (DAMPINGS[best] if best else 0.01), 1e-9, 1e6))
    cov = jnp.linalg.inv(curv)
    chol = jnp.linalg.cholesky(0.5 * (cov + cov.T))
    return Laplace(z, chol, it)


@partial(jax.jit, static_argnums=0)
def best_start(model: TwinModel, z, windows: Window, g: GaussianPrior) -> jnp.ndarray:
    """The candidate of z (N, D) with the highest log target: where Newton starts from a wide prior."""
    values = jax.vmap(partial(log_target, model, g, windows))(z)
    return z[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]


@partial(jax.jit, static_argnums=(0, 1))
def importance_draws(model: TwinModel, n: int, key, mean, chol, windows: Window, g: GaussianPrior):
    """n draws z (n, D) from N(mean, (s·chol)(s·chol)ᵀ) and their log weights (n,), unnormalised: target − proposal."""
    d = mean.shape[0]
    eps = jax.random.normal(key, (n, d))
    z = mean + PROPOSAL_SCALE * eps @ chol.T
    log_q = (-0.5 * jnp.sum(eps ** 2, -1) - jnp.sum(jnp.log(jnp.diag(chol)))
             - d * jnp.log(PROPOSAL_SCALE) - 0.5 * d * jnp.log(2 * jnp.pi))
    log_p = jax.vmap(partial(log_target, model, g, windows))(z)
    return z, jnp.where(jnp.isfinite(log_p), log_p - log_q, -jnp.inf)


def importance_update(model: TwinModel, key, lap: Laplace, windows: Window, g: GaussianPrior,
                      n: int) -> tuple[Particles, float, float]:
    """Weighted particles of the window posterior, their ESS and log evidence log p(windows | g)."""
    z, log_w = importance_draws(model, n, key, lap.mean, lap.chol, windows, g)
    log_evidence = float(jax.scipy.special.logsumexp(log_w) - np.log(n))
    norm = log_w - jax.scipy.special.logsumexp(log_w)
    return Particles(z, norm), float(ess(norm)), log_evidence
