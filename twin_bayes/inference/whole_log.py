"""Whole-recording fits: each recording simulated open loop from its first state under its commands.

That is how a twin is judged on held-out recordings (`twin_bayes.cli.evaluate_trajectory`), and here
it is also the objective: multiple shooting from measured states fits the one-step dynamics but never
sees the error that accumulates over a recording. The likelihood of the open-loop position residuals
e (R, T, nq) is Gaussian with its sd profiled out, ℓ(z) = −(N / 2κ) · log(Σ e² / N) over the N real
samples, tempered by κ, the residuals' integrated autocorrelation time in steps: a smooth model error
makes neighbouring residuals nearly copies of each other, so N residuals carry about N / κ independent
observations (a generalised-Bayes posterior; κ = 1 would be the i.i.d. likelihood and over-confident).
The mode is found by Adam from the prior mean (the untempered least-squares fit), then polished by
damped Newton steps on the tempered target (`laplace.newton_mode`, the streaming engine's search, with
the exact Hessian); the posterior is its Laplace approximation, N(mode, H⁻¹)
in unconstrained space, returned as equally weighted particles. Open-loop residuals say nothing about
the sensor noise (model error dwarfs it): the noise scales stay at the config's `noise_scale`.
"""
from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from twin_bayes.inference.autocorrelation import integrated_time, lagged_products
from twin_bayes.inference.discrepancy import fit_model_error
from twin_bayes.inference.laplace import Laplace, newton_mode
from twin_bayes.inference.posterior import Particles
from twin_bayes.inference.smc import GaussianPrior
from twin_bayes.models import TwinModel
from twin_bayes.sim.rollout import simulate


# Relative step of the central differences of the gradient that give the Hessian where
# gradients come from forward sensitivities (robots with constraint rows).
HESSIAN_STEP = 1e-5


def value_grad_hessian(f, z, exact: bool):
    """f(z), ∇f (D,) and ∇²f (D, D) at z (D,).

    `exact`: forward over reverse mode. Otherwise (gradients through MJX's
    constraint solver are forward sensitivities, whose second derivatives would
    nest forward mode through the solver) central differences of the exact
    gradient, 2·D gradients in one vmap, symmetrised.
    """
    if exact:
        def grad_aux(x):
            v, gr = jax.value_and_grad(f)(x)
            return gr, (v, gr)

        hess, (value, grad) = jax.jacfwd(grad_aux, has_aux=True)(z)
        return value, grad, hess
    value, grad = jax.value_and_grad(f)(z)
    h = HESSIAN_STEP * (1.0 + jnp.abs(z))
    grads = jax.vmap(jax.grad(f))(z + jnp.concatenate([jnp.diag(h), -jnp.diag(h)]))
    d = z.shape[0]
    hess = (grads[:d] - grads[d:]) / (2.0 * h[:, None])
    return value, grad, 0.5 * (hess + hess.T)


class Recordings(NamedTuple):
    """R recordings padded to T steps: start q0 (R, nq), qd0 (R, nv); commands (R, T, nu), row k acting
    during step k; observed q (R, T, nq) after each step; mask (R, T) 1 for real steps; settings (R, K)."""

    q0: jnp.ndarray
    qd0: jnp.ndarray
    commands: jnp.ndarray
    q: jnp.ndarray
    mask: jnp.ndarray
    settings: jnp.ndarray


class WholeLogFit(NamedTuple):
    """mode (D,) and chol (D, D) of the Laplace covariance (unconstrained), the temper κ (steps),
    residuals (R, T, nq) of the mode's rollouts, and the cost: optimiser steps, simulator evaluations
    (each a rollout of every recording; a Hessian counts D)."""

    mode: jnp.ndarray
    chol: jnp.ndarray
    temper: float
    residuals: np.ndarray
    steps: int
    evaluations: int


def stack(model: TwinModel, trajectories) -> Recordings:
    """Recordings from `Trajectory`s (t, q, qd, ctrl, settings), padded with their last command."""
    if model.sensors:
        raise ValueError(f"{model.cfg.name}: the whole-log engine observes q only; a config observing MJCF sensors "
                         f"({list(model.sensors)}) is fitted by the stream, smc, nuts or svi engines")
    T = max(len(tr.t) for tr in trajectories) - 1
    pad = lambda a, n: np.concatenate([a, np.repeat(a[-1:], n, axis=0)])  # noqa: E731
    rows = [(tr.q[0], tr.qd[0], pad(tr.ctrl[:-1], T + 1 - len(tr.t)), pad(tr.q[1:], T + 1 - len(tr.t)),
             np.r_[np.ones(len(tr.t) - 1), np.zeros(T + 1 - len(tr.t))], model.settings_vector(tr.settings))
            for tr in trajectories]
    return Recordings(*(jnp.asarray(np.stack(col)) for col in zip(*rows)))


@jax.jit
def open_loop(model: TwinModel, z: jnp.ndarray, rec: Recordings) -> jnp.ndarray:
    """Measured-q predictions (R, T, nq) of particle z (D,): each recording simulated whole, no resets."""
    values = model.constrain(z)

    def one(q0, qd0, u, settings):
        u = jnp.concatenate([jnp.repeat(u[:1], model.history, axis=0), u])   # the first command held before
        q, _ = simulate(model.robot, model.theta(values, settings), q0, qd0, u, model.history,
                        free=model.free_idx, state_grad=False)
        return q

    return jax.vmap(one)(rec.q0, rec.qd0, rec.commands, rec.settings)


def log_target(model: TwinModel, rec: Recordings, temper, z):
    """log prior(z) + the tempered profile Gaussian log-likelihood of the open-loop position residuals."""
    resid = (rec.q - open_loop(model, z, rec)) * rec.mask[..., None]
    n = jnp.sum(rec.mask) * rec.q.shape[-1]
    return model.log_prior(z) - 0.5 * n / temper * jnp.log(jnp.sum(resid ** 2) / n)


def autocorrelation_time(residuals: np.ndarray, mask: np.ndarray) -> float:
    """Integrated autocorrelation time (steps) of residuals (R, T, nq) with mask (R, T)
    (`inference.autocorrelation`, the streaming engine's rule)."""
    m = np.broadcast_to(np.asarray(mask, np.float64)[..., None], residuals.shape)
    return float(integrated_time(*lagged_products(np.asarray(residuals) * m, m)))


@partial(jax.jit, static_argnames="steps")
def _adam(model: TwinModel, rec: Recordings, z, noise, learning_rate, steps: int):
    """`steps` Adam steps (under `lax.scan`) on the untempered target from z (P,), the noise scales
    (unconstrained, fixed) appended."""
    opt = optax.adam(learning_rate)
    grad = jax.grad(lambda x: -log_target(model, rec, 1.0, jnp.concatenate([x, noise])))

    def step(carry, _):
        x, state = carry
        update, state = opt.update(grad(x), state)
        return (optax.apply_updates(x, update), state), None

    (z, _), _ = jax.lax.scan(step, (z, opt.init(z)), length=steps)
    return z


@partial(jax.jit, static_argnames="max_iter")
def _newton(model: TwinModel, rec: Recordings, z, noise, temper, tol, max_iter: int) -> Laplace:
    """The tempered target's mode and Laplace fit by `laplace.newton_mode` from z (P,), the exact
    Hessian at each iterate (`value_grad_hessian`)."""
    f = lambda x: log_target(model, rec, temper, jnp.concatenate([x, noise]))  # noqa: E731
    exact = model.robot.grad_mode == "reverse"
    lap, _ = newton_mode(lambda x: (*value_grad_hessian(f, x, exact), None), lambda _, x: f(x), z, None,
                         max_iter, tol)
    return lap


def fit(model: TwinModel, rec: Recordings, adam_steps: int = 50, learning_rate: float = 0.05,
        newton_steps: int = 10, tol: float = 1e-3) -> WholeLogFit:
    """The tempered whole-recording posterior's mode and Laplace covariance (see the module docstring)."""
    p = len(model.param_names)
    noise = jnp.stack([t.inv(model.cfg.observation.noise_scale[c])
                       for c, t in zip(model.channels, model.transforms[p:])])
    full = lambda x: jnp.concatenate([x, noise])  # noqa: E731
    z = jnp.stack([t.inv(d.mean) for d, t in zip(model.priors[:p], model.transforms[:p])])
    z = _adam(model, rec, z, noise, learning_rate, steps=adam_steps)
    temper = autocorrelation_time(np.asarray(rec.q - open_loop(model, full(z), rec)), np.asarray(rec.mask))
    lap = _newton(model, rec, z, noise, temper, tol, max_iter=newton_steps)
    chol = jnp.zeros((model.dim, model.dim)).at[:p, :p].set(lap.chol)
    resid = np.asarray(rec.q - open_loop(model, full(lap.mean), rec))
    iterations, trials = int(lap.iterations), int(lap.trials)
    # Adam's gradients and the two open-loop residuals are one evaluation each, a Hessian counts P
    return WholeLogFit(full(lap.mean), chol, temper, resid, adam_steps + iterations,
                       adam_steps + 2 + iterations * p + trials)


def _positive_chol(chol: jnp.ndarray) -> jnp.ndarray:
    """The Laplace Cholesky factor with the unestimated noise scales' zero rows given a tiny scale, so that
    it is a valid window prior for streaming on (their values stay put)."""
    d = jnp.diag(chol)
    return chol + jnp.diag(jnp.where(d > 0, 0.0, 1e-6))


def particles(result: WholeLogFit, key, n: int) -> Particles:
    """n equally weighted draws (n, D) of the Laplace approximation N(mode, chol cholᵀ)."""
    eps = jax.random.normal(key, (n, result.mode.shape[0]))
    return Particles(result.mode + eps @ result.chol.T, jnp.full(n, -jnp.log(n)))


def fit_twin(twin, trajectories, adam_steps: int = 50, newton_steps: int = 10) -> dict:
    """Fit `twin` (a `Twin`) on whole recordings (`Trajectory`s): its posterior becomes the Laplace
    approximation as `cfg.inference.particles` particles, and its model error is learned from the
    mode's residuals (`inference.discrepancy`). Returns the fit's cost and figures (JSON-ready)."""
    start = time.perf_counter()
    rec = stack(twin.model, trajectories)
    res = fit(twin.model, rec, adam_steps=adam_steps, newton_steps=newton_steps)
    twin.restore(particles(res, jax.random.PRNGKey(twin.cfg.inference.seed), twin.cfg.inference.particles), 1)
    twin.state = twin.state._replace(prior=GaussianPrior(res.mode, _positive_chol(res.chol), jnp.asarray(False)))
    twin.model_error = fit_model_error(res.residuals, rec.mask, rec.settings, twin.model.robot.dt)
    steps = int(np.sum(np.asarray(rec.mask)))
    return {"engine": "whole-log", "method": "whole-log Laplace (Adam + damped Newton)",
            "recordings": len(trajectories), "wall_time_s": time.perf_counter() - start,
            "optimiser_steps": res.steps, "simulator_evaluations": res.evaluations,
            "simulated_steps": res.evaluations * steps, "temper_autocorrelation_steps": res.temper,
            "fit_mae": float(np.sum(np.abs(res.residuals[..., 0]) * np.asarray(rec.mask)) / steps),
            "model_error": twin.model_error.as_dict()}
