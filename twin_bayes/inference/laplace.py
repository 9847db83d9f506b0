"""Laplace proposals: a window posterior's mode by damped Newton, its curvature, importance draws.

`newton_mode` is the damped Newton search over any log target with a local quadratic model;
`find_mode` runs it on a window's target.

The target is log g(z) + Σ_b log p(window_b | z) in unconstrained space (D,),
with g the window's prior (`smc.GaussianPrior`; the config's own prior when
`g.exact`). Newton steps use the exact gradient and the Gauss–Newton
curvature (`value_grad_curvature`: one forward-mode pass through the
simulator, which every robot supports, also giving the start-state sensitivities and the predictions
at the iterate, linearised, so nothing at the mode needs another simulation), damped Levenberg–Marquardt style on
its eigenvalues so that steps stay uphill far from the mode (the first of the trial
dampings that climbs is taken). At the mode,
N(mode, H⁻¹) is the
Laplace approximation; draws from it (widened by `PROPOSAL_SCALE`) weighted by
target / proposal are exact importance samples of the window posterior, and
the mean of the unnormalised weights estimates the evidence p(window | past).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from twin_bayes.inference.posterior import Particles, ess
from twin_bayes.inference.smc import GaussianPrior, window_log_prior
from twin_bayes.models import TwinModel, Window, batch_log_lik, map_rows

# Proposal sd relative to the Laplace sd: heavier than the target, so weights stay bounded.
PROPOSAL_SCALE = 1.2
# Trial dampings of one Newton step, in units of the current damping (Levenberg–Marquardt):
# the best of the trials wins; the damping shrinks after a pure Newton step and grows otherwise.
DAMPINGS = (0.0, 0.01, 0.1, 1.0, 10.0)
# Newton iterations at most in a window's search.
MAX_ITER = 100
# The Newton decrement (half the squared decrement: the log density a Newton step would still
# gain, nats) at which a point is the mode.
TOL = 1e-4


class Laplace(NamedTuple):
    """mean (D,) the mode, chol (D, D) Cholesky of the covariance H⁻¹, Newton iterations taken () and
    trial points evaluated () (each one simulation of the target)."""

    mean: jnp.ndarray
    chol: jnp.ndarray
    iterations: jnp.ndarray
    trials: jnp.ndarray


def log_target(model: TwinModel, g: GaussianPrior, windows: Window, z):
    return window_log_prior(model, g, z) + batch_log_lik(model, z, windows)


class Linearisation(NamedTuple):
    """The windows' segment predictions at z (D,), first order: q (B, S, L, nq), qd (B, S, L, nv), sensor
    readings s (B, S, L, R), their Jacobians in z jq (B, S, L, nq, D), jqd (B, S, L, nv, D), js
    (B, S, L, R, D), and the start-state sensitivities (B, S, L·C, nq + nv) at z."""

    z: jnp.ndarray
    q: jnp.ndarray
    qd: jnp.ndarray
    s: jnp.ndarray
    jq: jnp.ndarray
    jqd: jnp.ndarray
    js: jnp.ndarray
    state_jac: jnp.ndarray

    def at(self, x) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """The predictions (q, qd, s) at x (D,), linearised at z: exact at z, second-order small near it."""
        dx = x - self.z
        return self.q + self.jq @ dx, self.qd + self.jqd @ dx, self.s + self.js @ dx

    @staticmethod
    def zeros(model: TwinModel, windows: Window, z) -> "Linearisation":
        """A linearisation of zeros with the shapes of windows (B, ...) and z (D,) (a loop's initial carry)."""
        b, s = windows.state_jac.shape[:2]
        r, L, d = model.robot, model.segment_steps, z.shape[0]
        zeros = lambda *shape: jnp.zeros(shape, z.dtype)  # noqa: E731
        k = len(model.readings)
        return Linearisation(zeros(d), zeros(b, s, L, r.nq), zeros(b, s, L, r.nv), zeros(b, s, L, k),
                             zeros(b, s, L, r.nq, d), zeros(b, s, L, r.nv, d), zeros(b, s, L, k, d),
                             jnp.zeros_like(windows.state_jac))


def value_grad_curvature(model: TwinModel, g: GaussianPrior, windows: Window, z):
    """log target at z (D,), its gradient (D,), its Gauss–Newton Hessian (D, D), and the windows'
    `Linearisation` at z.

    One forward-mode pass (D + nq + nv tangents) through the simulator gives the segment
    predictions, their Jacobian in z and their sensitivity to the start states
    (`TwinModel.linearised_predictions`). The target is that of the windows with start-state
    sensitivities at z. With the predictions linearised at z it has the same value and gradient
    at z, and its Hessian, cheap because no simulator is inside, is exact in the prior, the
    noise scales and the likelihood's dependence on the predictions. It leaves out only the
    simulator's own second derivatives weighted by the residuals, small near a mode that fits;
    the importance weights correct what is left.
    """
    pred, jac, state_jac = map_rows(model.linearised_predictions, (z,), windows)
    lin = jax.lax.stop_gradient(Linearisation(z, *pred, *jac, state_jac))
    windows = windows._replace(state_jac=lin.state_jac)

    def linearised(x):
        ll = jax.vmap(model.segment_log_lik, in_axes=(None, 0, 0, 0, 0))(x, *lin.at(x), windows)
        return window_log_prior(model, g, x) + jnp.sum(ll)

    value, grad = jax.value_and_grad(linearised)(z)
    return value, grad, jax.hessian(linearised)(z), lin


def newton_step(curvature_at, target, z, damping, tol: float = TOL):
    """Damped Newton steps from z (D,) on a log target to maximise.

    curvature_at(z) -> (value, gradient (D,), Hessian or its Gauss–Newton stand-in (D, D), aux):
    the target's local model at z; target(aux, x) -> the target at x, with what aux fixes at z
    (the windowed target's `Linearisation`; None for the whole-log target). Returns (value at z,
    trial points (K, D), their values (K,), curvature (D, D), aux, the Newton decrement at z (),
    trials evaluated ()).

    The curvature is −∇² with eigenvalues reflected to positive (|λ|, floored), so every trial
    step is an ascent direction; trial k adds `damping` × DAMPINGS[k] × the largest eigenvalue
    to the curvature (trial 0 is the pure Newton step). Trials are evaluated in order until one
    climbs (one simulation where the Newton step is good, as it is near a mode), none where z
    is already the mode (decrement below tol); the values of trials not evaluated are −inf. The
    decrement is ½ ΔᵀHΔ of the pure Newton step Δ.
    """
    value, grad, hess, aux = curvature_at(z)
    lam, vec = jnp.linalg.eigh(-hess)
    lam = jnp.maximum(jnp.abs(lam), 1e-8 * jnp.max(jnp.abs(lam)) + 1e-12)
    damp = damping * jnp.asarray(DAMPINGS)[:, None] * jnp.max(lam)
    steps = ((vec.T @ grad)[None, :] / (lam[None, :] + damp)) @ vec.T
    trials = z[None, :] + steps
    decrement = 0.5 * jnp.sum((vec.T @ grad) ** 2 / lam)

    def evaluate(carry):
        k, values = carry
        v = target(aux, trials[k])
        return k + 1, values.at[k].set(jnp.where(jnp.isfinite(v), v, -jnp.inf))

    def climbing(carry):
        k, values = carry
        return (k < len(DAMPINGS)) & ~jnp.any(values > value) & (decrement >= tol)

    evaluated, values = jax.lax.while_loop(climbing, evaluate, (jnp.asarray(0), jnp.full(len(DAMPINGS), -jnp.inf)))
    curvature = (vec * lam) @ vec.T
    return value, trials, values, curvature, aux, decrement, evaluated


class _Newton(NamedTuple):
    it: jnp.ndarray
    trials: jnp.ndarray
    z: jnp.ndarray
    damping: jnp.ndarray
    done: jnp.ndarray
    curvature: jnp.ndarray
    aux: object


def newton_mode(curvature_at, target, z0, aux0, max_iter: int = 100, tol: float = TOL) -> tuple[Laplace, object]:
    """Damped Newton from z0 (D,) to the mode of a log target, under `lax.while_loop` (curvature_at,
    target as in `newton_step`; aux0: an aux of curvature_at's shape). Returns the Laplace fit and
    the aux of the last point linearised.

    Stops at a point whose Newton decrement δ is below tol; after a pure Newton step whose gain
    matched the quadratic model's δ to ε with 9ε² < 4·tol·δ (a cubic remainder ε leaves a
    gradient whose decrement is about 9ε²/4δ: the step landed within tol of the mode, so one
    more linearisation would only confirm it; near a mode, as in streaming, this saves one per
    window); or when no trial step climbs at the largest damping. The curvature of the last
    point linearised gives the covariance.
    """
    dampings = jnp.asarray(DAMPINGS)

    def body(s: _Newton) -> _Newton:
        value, trials, values, curv, aux, decrement, evaluated = newton_step(curvature_at, target, s.z, s.damping,
                                                                            tol)
        converged = decrement < tol
        values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
        best = jnp.argmax(values)
        climbs = values[best] > value
        model_error = values[0] - value - decrement
        last = climbs & (best == 0) & (9.0 * model_error ** 2 < 4.0 * tol * decrement)
        done = converged | last | (~climbs & (s.damping >= 1e6))
        move = ~converged & climbs
        factor = jnp.where(best > 0, dampings[best], 0.01)
        damping = jnp.where(converged, s.damping, jnp.where(
            climbs, jnp.clip(s.damping * factor, 1e-9, 1e6), jnp.minimum(s.damping * 1e3, 1e6)))
        return _Newton(s.it + 1, s.trials + evaluated, jnp.where(move, trials[best], s.z), damping, done, curv, aux)

    z0 = jnp.asarray(z0)
    d = z0.shape[0]
    start = _Newton(jnp.asarray(0), jnp.asarray(0), z0, jnp.asarray(1e-3, z0.dtype), jnp.asarray(False),
                    jnp.eye(d, dtype=z0.dtype), aux0)
    s = jax.lax.while_loop(lambda s: ~s.done & (s.it < max_iter), body, start)
    cov = jnp.linalg.inv(s.curvature)
    chol = jnp.linalg.cholesky(0.5 * (cov + cov.T))
    return Laplace(s.z, chol, s.it, s.trials), s.aux


def find_mode(model: TwinModel, z0, windows: Window, g: GaussianPrior,
              max_iter=MAX_ITER) -> tuple[Laplace, Window, Linearisation]:
    """The mode of a window posterior from z0 (D,) (`newton_mode` on `value_grad_curvature`); returns
    the Laplace fit, the windows (B, ...) with their start-state sensitivities at the last point
    linearised, and that point's `Linearisation` (its predictions at the mode, `lin.at(mode)`, need
    no further simulation). Each step linearises the sensitivities at its own point. max_iter may be
    traced (0: z0 itself, nothing linearised)."""
    def curvature_at(z):
        return value_grad_curvature(model, g, windows, z)

    def target(lin, x):
        return log_target(model, g, windows._replace(state_jac=lin.state_jac), x)

    lap, lin = newton_mode(curvature_at, target, z0, Linearisation.zeros(model, windows, z0), max_iter)
    return lap, windows._replace(state_jac=lin.state_jac), lin


def importance_draws(key, lap: Laplace, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """n draws z (n, D) from the proposal N(mean, (s·chol)(s·chol)ᵀ), s = PROPOSAL_SCALE, and their
    log proposal densities (n,)."""
    d = lap.mean.shape[0]
    eps = jax.random.normal(key, (n, d))
    z = lap.mean + PROPOSAL_SCALE * eps @ lap.chol.T
    log_q = (-0.5 * jnp.sum(eps ** 2, -1) - jnp.sum(jnp.log(jnp.diag(lap.chol)))
             - d * jnp.log(PROPOSAL_SCALE) - 0.5 * d * jnp.log(2 * jnp.pi))
    return z, log_q


def importance_weights(z, log_p, log_q) -> tuple[Particles, jnp.ndarray, jnp.ndarray]:
    """Draws z (n, D) weighted by target / proposal (log_p, log_q (n,)): the particles of the window
    posterior, their ESS () and the log evidence log p(windows | g) ()."""
    log_w = jnp.where(jnp.isfinite(log_p), log_p - log_q, -jnp.inf)
    log_evidence = jax.scipy.special.logsumexp(log_w) - jnp.log(log_w.shape[0])
    norm = log_w - jax.scipy.special.logsumexp(log_w)
    return Particles(z, norm), ess(norm), log_evidence
