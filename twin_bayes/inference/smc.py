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
matrix from the particle cloud) on the tempered target. Each stage moves the
particles until they have forgotten where resampling put them (`decorrelating_moves`):
a window that tempers over many stages resamples many times, and a cloud moved
a fixed few times per stage collapses onto copies of a few particles.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.smc import resampling

from twin_bayes.inference.posterior import Particles, ess, moments, normalise
from twin_bayes.models import TwinModel, Window, batch_log_lik


# Acceptance rate the one-step HMC (MALA) moves aim for; step sizes follow it.
TARGET_ACCEPT = 0.6


class GaussianPrior(NamedTuple):
    """N(mean (D,), chol @ chol.T) in unconstrained space; `exact` selects the model's own prior."""

    mean: jnp.ndarray
    chol: jnp.ndarray
    exact: jnp.ndarray


class Moves(NamedTuple):
    """How long each tempered stage moves its particles, scalars: at least `least` and at most `most`
    moves, stopping once the mean correlation of the particles' coordinates with where resampling put
    them is at most `correlation`."""

    least: jnp.ndarray
    most: jnp.ndarray
    correlation: jnp.ndarray


class MoveInfo(NamedTuple):
    """One stage's moves: per particle the mean acceptance (N,) and the share of moves that diverged (N,);
    moves made ()."""

    acceptance_rate: jnp.ndarray
    divergent: jnp.ndarray
    moves: jnp.ndarray


class TemperInfo(NamedTuple):
    """A tempered update's account, all scalars: stages run (the first, move-free one included),
    moves per particle over all stages, β reached, mean acceptance of the moves (NaN where none ran),
    mean share of divergent moves, final ESS, and the step size the next update starts from."""

    stages: jnp.ndarray
    moves: jnp.ndarray
    beta: jnp.ndarray
    acceptance: jnp.ndarray
    divergent: jnp.ndarray
    ess: jnp.ndarray
    step_size: jnp.ndarray


def shrunk_moments(p: Particles) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weighted mean (D,) and covariance (D, D) whose correlations are shrunk toward zero, variances
    kept, by the Schäfer–Strimmer estimate of the weight λ (their target "D"; n = the ESS):

        λ = Σ_{i≠j} Var(r_ij) / Σ_{i≠j} r_ij²,  C = S^{1/2} ((1 − λ) R + λ I) S^{1/2}.

    A cloud of n effective particles in D dimensions, n not ≫ D, gives a sample covariance whose
    small eigenvalues are too small; the next window's prior would be too narrow along them."""
    mean, cov = moments(p)
    w = jnp.exp(normalise(p.log_weights))
    n = jnp.maximum(ess(p.log_weights), 2.0)
    sd = jnp.sqrt(jnp.diag(cov)) + 1e-300
    x = (p.z - mean) / sd                                                     # (N, D)
    products = x[:, :, None] * x[:, None, :]                                  # (N, D, D)
    r = jnp.einsum("n,nij->ij", w, products)
    var_r = n ** 2 / (n - 1) ** 3 * jnp.einsum("n,nij->ij", w, (products - r) ** 2)
    off = 1.0 - jnp.eye(mean.shape[0])
    lam = jnp.clip(jnp.sum(off * var_r) / jnp.maximum(jnp.sum(off * (n / (n - 1) * r) ** 2), 1e-300), 0.0, 1.0)
    return mean, cov * ((1 - lam) * off + jnp.eye(mean.shape[0]))


def gaussian_prior(p: Particles, drift: jnp.ndarray, exact) -> GaussianPrior:
    """The Gaussian fitted to particles (`shrunk_moments`), its variance widened by drift (D,) sd per window."""
    mean, cov = shrunk_moments(p)
    d = mean.shape[0]
    cov = cov + jnp.diag(drift ** 2) + 1e-10 * jnp.eye(d)
    return GaussianPrior(mean, jnp.linalg.cholesky(cov), jnp.asarray(exact))


def _gauss_logpdf(g: GaussianPrior, z):
    y = jax.scipy.linalg.solve_triangular(g.chol, z - g.mean, lower=True)
    return -0.5 * y @ y - jnp.sum(jnp.log(jnp.diag(g.chol)))


def window_log_prior(model: TwinModel, g: GaussianPrior, z):
    """log g(z) of unconstrained z (D,): the config's prior where `g.exact`, else the Gaussian."""
    return jnp.where(g.exact, model.log_prior(z), _gauss_logpdf(g, z))


def first_temperature(ll: jnp.ndarray, target_ess) -> jnp.ndarray:
    """Largest δ in (0, 1] whose weights exp(δ·ll) keep an ESS of at least target_ess·N (bisection)."""
    ll = jnp.where(jnp.isfinite(ll), ll, -jnp.inf)
    top = jnp.max(ll)

    def frac(delta):
        w = jnp.exp(delta * (ll - top))
        return jnp.where(jnp.sum(w) > 0, jnp.sum(w) ** 2 / jnp.sum(w ** 2) / ll.shape[0], 0.0)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = frac(mid) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 60, bisect, (jnp.zeros_like(top), jnp.ones_like(top)))
    return jnp.where(frac(1.0) >= target_ess, 1.0, jnp.maximum(lo, 1e-12))


def _mean_correlation(x0: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Mean over coordinates of the correlation across particles between x0 and x (N, D)."""
    a, b = x0 - x0.mean(0), x - x.mean(0)
    r = jnp.sum(a * b, 0) / jnp.sqrt(jnp.sum(a ** 2, 0) * jnp.sum(b ** 2, 0) + 1e-300)
    return jnp.mean(r)


def decorrelating_moves(moves: Moves):
    """A BlackJAX SMC update strategy (`update_strategy` of `tempered.build_kernel`): every particle
    takes the MCMC kernel's moves together under `lax.while_loop`, at least `moves.least`, then until
    the cloud's mean correlation with its resampled start falls to `moves.correlation` (the criterion
    of PyMC's SMC samplers), at most `moves.most`."""

    def strategy(mcmc_init_fn, logposterior_fn, shared_step_fn, num_mcmc_steps, n_particles, batch_size=0):
        del num_mcmc_steps, batch_size

        def update(keys, positions, params):
            init = jax.vmap(mcmc_init_fn, in_axes=(0, None))(positions, logposterior_fn)
            move = jax.vmap(lambda k, st, pr: shared_step_fn(k, st, logposterior_fn, **pr))

            def body(carry):
                k, states, acc, div = carry
                states, info = move(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, k), states, params)
                return k + 1, states, acc + info.acceptance_rate, div + info.is_divergent

            def more(carry):
                k, states = carry[0], carry[1]
                return (k < moves.least) | ((k < moves.most)
                                            & (_mean_correlation(positions, states.position) > moves.correlation))

            n = positions.shape[0]
            k, states, acc, div = jax.lax.while_loop(
                more, body, (jnp.asarray(0), init, jnp.zeros(n, positions.dtype), jnp.zeros(n, positions.dtype)))
            return states.position, MoveInfo(acc / jnp.maximum(k, 1), div / jnp.maximum(k, 1), k)

        return update, n_particles

    return strategy


def tempered_update(model: TwinModel, key, z0: jnp.ndarray, windows: Window, g: GaussianPrior,
                    step_size, max_stages) -> tuple[Particles, TemperInfo]:
    """Temper the windows' likelihood (B windows stacked) into particles z0 (N, D) drawn from the prior g.

    The first temperature step needs no move: z0 are exact draws from the
    stage-0 target, so they are only reweighted. When that step cannot reach
    β = 1 with the target ESS, BlackJAX adaptive tempering stages follow
    (resample, move, reweight) under `lax.while_loop`, at most `max_stages` in
    all. Before each of them the (dense) inverse mass matrix is set to the
    particles' covariance, so moves follow the correlations between
    parameters the data cannot tell apart, and the step size follows the last
    acceptance rate; each stage moves as long as the config's `mcmc_steps`,
    `max_mcmc_steps` and `move_correlation` say (`decorrelating_moves`). Pure:
    runs under `jit` and `vmap`.
    """
    nums = model.numbers
    target, moves = nums.target_ess, Moves(nums.min_moves, nums.max_moves, nums.move_correlation)
    log_prior = partial(window_log_prior, model, g)
    log_lik = partial(batch_log_lik, model, windows=windows)
    ll = jax.vmap(log_lik)(z0)
    delta = first_temperature(ll, target)
    log_w = jnp.where(jnp.isfinite(ll), delta * ll, -jnp.inf)
    w = jnp.exp(log_w - jax.scipy.special.logsumexp(log_w))
    state = blackjax.smc.tempered.init(z0)._replace(weights=w, tempering_param=delta)
    d = z0.shape[1]

    def stage(carry):
        key, state, step, stages, moved_total, acc_sum, acc_n, div_sum = carry
        key, sub = jax.random.split(key)
        inverse_mass = jnp.cov(state.particles.T, aweights=state.weights) + 1e-10 * jnp.eye(d)
        kernel = blackjax.adaptive_tempered_smc(
            log_prior, log_lik, blackjax.hmc.build_kernel(), blackjax.hmc.init,
            blackjax.smc.extend_params({"step_size": step, "inverse_mass_matrix": inverse_mass,
                                        "num_integration_steps": 1}),
            resampling.systematic, target, update_strategy=decorrelating_moves(moves))
        state, info = kernel.step(sub, state)
        acc = jnp.mean(info.update_info.acceptance_rate)
        moved = jnp.isfinite(acc)
        step = jnp.where(moved, jnp.clip(step * jnp.exp(acc - TARGET_ACCEPT), 0.02, 2.0), step)
        return (key, state, step, stages + 1, moved_total + info.update_info.moves,
                acc_sum + jnp.where(moved, acc, 0.0), acc_n + moved, div_sum + jnp.mean(info.update_info.divergent))

    carry = (key, state, jnp.asarray(step_size, z0.dtype), jnp.asarray(1), jnp.asarray(0), jnp.zeros(()),
             jnp.asarray(0), jnp.zeros(()))
    _, state, step, stages, moved_total, acc_sum, acc_n, div_sum = jax.lax.while_loop(
        lambda c: (c[1].tempering_param < 1.0) & (c[3] < max_stages), stage, carry)
    log_w = jnp.log(jnp.maximum(state.weights, 1e-300))
    log_w = log_w - jax.scipy.special.logsumexp(log_w)
    info = TemperInfo(stages, moved_total, state.tempering_param,
                      jnp.where(acc_n > 0, acc_sum / jnp.maximum(acc_n, 1), jnp.nan),
                      div_sum / stages, ess(log_w), step)
    return Particles(state.particles, log_w), info
