"""Laplace proposals: a window posterior's mode by damped Newton, its curvature, importance draws.

`newton_mode` is the damped Newton search over any log target with a local quadratic model (one
problem, or many independent ones together); `find_mode` runs it on a window's target, and
`find_starts` on each segment's start state (docs/ENGINE.md, Start states).

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
# Each segment's start-state search (`find_starts`): its Newton iterations at most, its decrement at the
# mode and the least gain of a step that does not stop it (nats per segment), and the passes of a window's
# search (start states, then parameters).
START_ITER, START_TOL, START_PASSES = 12, 1e-2, 2


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


def newton_step(curvature_at, target, z, damping, tol: float = TOL, stopped=False):
    """Damped Newton steps from z (*B, D) on a log target to maximise: B independent problems (none for
    one), each with its own damping (*B,), evaluated together.

    curvature_at(z) -> (value (*B,), gradient (*B, D), Hessian or its Gauss–Newton stand-in (*B, D, D),
    aux): the target's local model at z; target(aux, x) -> the target at x (*B, D) (*B,), with what aux
    fixes at z (the windowed target's `Linearisation`; None for the whole-log target). Returns (value at
    z, trial points (*B, K, D), their values (*B, K), curvature (*B, D, D), aux, the Newton decrement at
    z (*B,), trials evaluated ()).

    The curvature is −∇² with eigenvalues reflected to positive (|λ|, floored), so every trial
    step is an ascent direction; trial k adds `damping` × DAMPINGS[k] × the largest eigenvalue
    to the curvature (trial 0 is the pure Newton step). Trials are evaluated in order until every
    problem has one that climbs (one simulation where the Newton step is good, as it is near a mode),
    none for a problem already at its mode (decrement below tol) or `stopped` (*B,); the values of
    trials not evaluated are −inf. The decrement is ½ ΔᵀHΔ of the pure Newton step Δ.
    """
    value, grad, hess, aux = curvature_at(z)
    lam, vec = jnp.linalg.eigh(-hess)
    lam = jnp.maximum(jnp.abs(lam), 1e-8 * jnp.max(jnp.abs(lam), -1, keepdims=True) + 1e-12)
    damp = damping[..., None, None] * jnp.asarray(DAMPINGS)[:, None] * jnp.max(lam, -1)[..., None, None]
    g = jnp.einsum("...ji,...j->...i", vec, grad)                                     # (*B, D) in the eigenbasis
    trials = z[..., None, :] + jnp.einsum("...kj,...ij->...ki", g[..., None, :] / (lam[..., None, :] + damp), vec)
    decrement = 0.5 * jnp.sum(g ** 2 / lam, -1)
    done = (decrement < tol) | stopped

    def evaluate(carry):
        k, values = carry
        v = target(aux, trials[..., k, :])
        return k + 1, values.at[..., k].set(jnp.where(jnp.isfinite(v), v, -jnp.inf))

    def climbing(carry):
        k, values = carry
        return (k < len(DAMPINGS)) & ~jnp.all(jnp.any(values > value[..., None], -1) | done)

    evaluated, values = jax.lax.while_loop(
        climbing, evaluate, (jnp.asarray(0), jnp.full(value.shape + (len(DAMPINGS),), -jnp.inf)))
    curvature = jnp.einsum("...ij,...j,...kj->...ik", vec, lam, vec)
    return value, trials, values, curvature, aux, decrement, evaluated


class _Newton(NamedTuple):
    it: jnp.ndarray
    trials: jnp.ndarray
    z: jnp.ndarray
    damping: jnp.ndarray
    done: jnp.ndarray
    curvature: jnp.ndarray
    aux: object


def newton_mode(curvature_at, target, z0, aux0, max_iter: int = 100, tol: float = TOL,
                min_gain: float = 0.0) -> tuple[Laplace, object]:
    """Damped Newton from z0 (*B, D) to the mode of a log target, under `lax.while_loop` (curvature_at,
    target as in `newton_step`: B independent problems, none for one; aux0: an aux of curvature_at's
    shape). Returns the Laplace fit (mean (*B, D), chol (*B, D, D); iterations and trials () over all
    problems) and the aux of the last point linearised.

    A problem stops at a point whose Newton decrement δ is below tol; after a pure Newton step whose
    gain matched the quadratic model's δ to ε with 9ε² < 4·tol·δ (a cubic remainder ε leaves a
    gradient whose decrement is about 9ε²/4δ: the step landed within tol of the mode, so one
    more linearisation would only confirm it; near a mode, as in streaming, this saves one per
    window); after a step that climbed by less than min_gain (a target whose curvature model stays poor,
    as through contacts, can climb by ever smaller steps while its decrement stays large); or when no
    trial step climbs at the largest damping. The search ends when every problem has stopped. The curvature
    of each problem's last point linearised before it stopped gives its covariance (aux is that of the last
    linearisation of all).
    """
    dampings = jnp.asarray(DAMPINGS)

    def body(s: _Newton) -> _Newton:
        value, trials, values, curv, aux, decrement, evaluated = newton_step(curvature_at, target, s.z, s.damping,
                                                                            tol, s.done)
        converged = decrement < tol
        values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
        best = jnp.argmax(values, -1)
        best_value = jnp.take_along_axis(values, best[..., None], -1)[..., 0]
        climbs = best_value > value
        model_error = values[..., 0] - value - decrement
        last = climbs & (best == 0) & (9.0 * model_error ** 2 < 4.0 * tol * decrement)
        stalled = climbs & (best_value - value < min_gain)
        done = s.done | converged | last | stalled | (~climbs & (s.damping >= 1e6))
        move = ~s.done & ~converged & climbs
        factor = jnp.where(best > 0, dampings[best], 0.01)
        damping = jnp.where(converged | s.done, s.damping, jnp.where(
            climbs, jnp.clip(s.damping * factor, 1e-9, 1e6), jnp.minimum(s.damping * 1e3, 1e6)))
        z = jnp.where(move[..., None], jnp.take_along_axis(trials, best[..., None, None], -2)[..., 0, :], s.z)
        curv = jnp.where(s.done[..., None, None], s.curvature, curv)       # a stopped problem's stays its own
        return _Newton(s.it + 1, s.trials + evaluated, z, damping, done, curv, aux)

    z0 = jnp.asarray(z0)
    batch, d = z0.shape[:-1], z0.shape[-1]
    start = _Newton(jnp.asarray(0), jnp.asarray(0), z0, jnp.full(batch, 1e-3, z0.dtype), jnp.zeros(batch, bool),
                    jnp.broadcast_to(jnp.eye(d, dtype=z0.dtype), batch + (d, d)), aux0)
    s = jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.it < max_iter), body, start)
    cov = jnp.linalg.inv(s.curvature)
    chol = jnp.linalg.cholesky(0.5 * (cov + jnp.swapaxes(cov, -1, -2)))
    return Laplace(s.z, chol, s.it, s.trials), s.aux


def start_curvature(model: TwinModel, z, windows: Window):
    """Each segment's start log density at its offset windows.start (B, S, nq + nv) from its measured
    start (`TwinModel.start_log_density`, parameters z (D,)): value (B, S), gradient (B, S, r), Gauss–Newton
    Hessian (B, S, r, r), from one forward-mode pass through the simulator; and None (no aux).

    Segments are independent, so one tangent that moves every segment's start along the same axis gives
    column i of every segment's Hessian block at once: r forward-over-reverse passes of the linearised
    density, not S·r."""
    pred, _, state_jac = map_rows(model.linearised_predictions, (z,), windows)
    windows = jax.lax.stop_gradient(windows._replace(state_jac=state_jac))
    pred = jax.lax.stop_gradient(pred)

    def one(w, q, qd, s):
        def value_grad(step):                       # (S,), (S, r): each segment's gradient is in its own row
            value, pullback = jax.vjp(lambda x: model.start_log_density(z, q, qd, s, w, x), step)
            return value, pullback(jnp.ones_like(value))[0]

        step = jnp.zeros_like(w.start)
        value, grad = value_grad(step)
        column = lambda axis: jax.jvp(lambda x: value_grad(x)[1], (step,),  # noqa: E731
                                      (jnp.broadcast_to(axis, step.shape),))[1]
        hess = jnp.moveaxis(jax.vmap(column)(jnp.eye(step.shape[-1], dtype=step.dtype)), 0, -1)   # (S, r, r)
        return value, grad, hess

    return (*jax.vmap(one)(windows, *pred), None)


def find_starts(model: TwinModel, z, windows: Window, max_iter=START_ITER) -> tuple[Window, jnp.ndarray]:
    """The windows (B, ...) with each segment's start state at its mode given parameters z (D,)
    (`Window.start`: the offset from the measured start maximising log p(y | e, z) + log N(e; 0, Σ0)), by
    `newton_mode` over the B·S independent segments from windows.start; and the Newton iterations ().

    Through contacts a segment's predictions are far from linear over the measured start's noise (on the
    floating humanoid, 2 mm of root height changes the feet's contact forces): linearised about the measured
    start, the likelihood is biased; about the mode it is the Laplace approximation of the start-marginal one.
    """
    def target(_, e):
        moved = windows._replace(start=e)
        return map_rows(lambda w: model.start_log_density(z, *model.segment_predictions(z, w), w), (), moved)

    lap, _ = newton_mode(lambda e: start_curvature(model, z, windows._replace(start=e)), target, windows.start,
                         None, max_iter, START_TOL, START_TOL)
    return windows._replace(start=jax.lax.stop_gradient(lap.mean)), lap.iterations


def find_mode(model: TwinModel, z0, windows: Window, g: GaussianPrior,
              max_iter=MAX_ITER) -> tuple[Laplace, Window, Linearisation]:
    """The mode of a window posterior from z0 (D,) (`newton_mode` on `value_grad_curvature`); returns
    the Laplace fit, the windows (B, ...) with their start-state sensitivities and start states' linearisation
    points (`Window.start`) at the last point linearised, and that point's `Linearisation` (its predictions at
    the mode, `lin.at(mode)`, need no further simulation). Each step linearises the sensitivities at its own
    point. Where the config searches start states (`inference.start_search`), START_PASSES passes: each
    segment's start state at its mode given the parameters (`find_starts`), then the parameters' mode with
    those start states; else one pass from the windows' own starts. max_iter may be traced (0: z0 itself,
    nothing linearised, the windows' own starts)."""
    search = model.numbers.start_search

    def one_pass(_, carry):
        z, w, lap, lin = carry
        w, _ = find_starts(model, z, w, jnp.where(search, jnp.minimum(max_iter, START_ITER), 0))
        new, lin = newton_mode(lambda x: value_grad_curvature(model, g, w, x),
                               lambda lin, x: log_target(model, g, w._replace(state_jac=lin.state_jac), x),
                               z, Linearisation.zeros(model, w, z), max_iter)
        new = new._replace(iterations=lap.iterations + new.iterations, trials=lap.trials + new.trials)
        return new.mean, w, new, lin

    z0 = jnp.asarray(z0)
    d = z0.shape[0]
    blank = Laplace(z0, jnp.eye(d, dtype=z0.dtype), jnp.asarray(0), jnp.asarray(0))
    _, windows, lap, lin = jax.lax.fori_loop(0, jnp.where(search, START_PASSES, 1), one_pass,
                                             (z0, windows, blank, Linearisation.zeros(model, windows, z0)))
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
