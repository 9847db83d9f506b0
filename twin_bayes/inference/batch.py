"""Batch refits over many windows: NUTS (NumPyro, warm-started), SVI (NumPyro), tempered SMC from the prior."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.infer.initialization import init_to_median
from numpyro.optim import Adam

from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from twin_bayes.config import InferenceSection
from twin_bayes.inference.engine import REASONS
from twin_bayes.inference.posterior import Particles, ess, moments
from twin_bayes.inference.smc import GaussianPrior, tempered_update
from twin_bayes.models import TwinModel, Window, batch_log_lik


class WarmStart(NamedTuple):
    """Where a NUTS refit starts: positions (C, D), step size (None: NumPyro finds one), dense inverse mass (D, D)."""

    z: jnp.ndarray
    step_size: float | None
    inverse_mass: jnp.ndarray


def warm_from_particles(p: Particles, key, num_chains: int) -> WarmStart:
    """A warm start from a posterior's particles: chains at weighted draws, inverse mass their covariance."""
    mean, cov = moments(p)
    idx = jax.random.choice(key, p.z.shape[0], (num_chains,), p=jnp.exp(p.log_weights))
    return WarmStart(p.z[idx], None, cov + 1e-12 * jnp.eye(cov.shape[0]))


class BatchResult(NamedTuple):
    particles: Particles          # equally weighted draws (chains·draws, D) or weighted SMC particles
    chains: np.ndarray | None     # (C, S, D) unconstrained draws, for R-hat; None for SVI/SMC
    divergent: np.ndarray | None  # (C, S) bool
    warm: WarmStart | None
    evaluations: int              # log-density (gradient) evaluations, for cost comparisons
    info: dict


def fit_nuts(model: TwinModel, key, windows: Window, num_warmup=300, num_samples=300, num_chains=2,
             warm: WarmStart | None = None) -> BatchResult:
    """NUTS (dense mass matrix) over all windows (B stacked), from `warm` or else the prior medians.

    A warm start gives the chains' positions, the inverse mass matrix (kept:
    the posterior's covariance keeps trajectories short however the parameters
    correlate, and warm-up only tunes the step size) and the step size warm-up
    starts from. Without one, warm-up adapts a dense mass matrix from scratch.
    """
    def potential(z):
        return -(model.log_prior(z) + batch_log_lik(model, z, windows))

    kwargs = {}
    if warm is not None:
        kwargs = {"inverse_mass_matrix": warm.inverse_mass}
        if warm.step_size is not None:
            kwargs["step_size"] = warm.step_size
        init_z = warm.z
    else:
        init_z = jnp.median(model.sample_prior(jax.random.PRNGKey(0), 2001), axis=0)
    init_z = jnp.broadcast_to(init_z, (num_chains, model.dim))
    kernel = NUTS(potential_fn=potential, target_accept_prob=0.85, max_tree_depth=6, dense_mass=True,
                  adapt_mass_matrix=warm is None, **kwargs)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(key, init_params=init_z, extra_fields=("diverging", "num_steps"))
    z = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    state = mcmc.last_state
    inverse_mass = jnp.asarray(state.adapt_state.inverse_mass_matrix).reshape(-1, model.dim, model.dim)
    warm_next = WarmStart(z[:, -1], float(jnp.mean(state.adapt_state.step_size)), jnp.mean(inverse_mass, axis=0))
    flat = z.reshape(-1, model.dim)
    evals = int(np.sum(np.asarray(extra["num_steps"]))) * (num_warmup + num_samples) // max(num_samples, 1)
    return BatchResult(Particles(flat, jnp.full(flat.shape[0], -jnp.log(flat.shape[0]))), np.asarray(z),
                       np.asarray(extra["diverging"]), warm_next, evals, {"engine": "nuts"})


def fit_svi(model: TwinModel, key, windows: Window, steps=1500, lr=0.01, num_draws=400) -> BatchResult:
    """SVI with a full-rank Gaussian guide in unconstrained space, started at the prior medians;
    its draws become equal-weight particles."""
    guide = AutoMultivariateNormal(model.numpyro_model, init_loc_fn=init_to_median)
    svi = SVI(model.numpyro_model, guide, Adam(lr), Trace_ELBO())
    k1, k2 = jax.random.split(key)
    result = svi.run(k1, steps, windows, progress_bar=False)
    draws = guide.sample_posterior(k2, result.params, sample_shape=(num_draws,))
    values = jnp.stack([draws[n] for n in model.names], axis=-1)
    z = jax.vmap(model.unconstrain)(values)
    return BatchResult(Particles(z, jnp.full(num_draws, -jnp.log(num_draws))), None, None, None, steps,
                       {"engine": "svi", "final_loss": float(result.losses[-1])})


def fit_smc(model: TwinModel, key, windows: Window, particles: int, max_stages=200) -> BatchResult:
    """Tempered SMC from the prior to the posterior of all windows at once, each stage moving as the
    config's `mcmc_steps`, `max_mcmc_steps` and `move_correlation` say."""
    k1, k2 = jax.random.split(key)
    z0 = model.sample_prior(k1, particles)
    p, info = _tempered_from_prior(model, k2, z0, windows, jnp.asarray(max_stages))
    stages, moves = int(info.stages), int(info.moves)
    evals = particles * (2 * stages + 2 * moves)
    return BatchResult(p, None, None, None, evals, {"engine": "smc", "stages": stages, "moves": moves,
                                                    "beta": float(info.beta), "divergent": float(info.divergent),
                                                    "ess": float(info.ess)})


@jax.jit
def _tempered_from_prior(model: TwinModel, key, z0, windows: Window, max_stages):
    d = z0.shape[1]
    g = GaussianPrior(jnp.zeros(d), jnp.eye(d), jnp.asarray(True))
    return tempered_update(model, key, z0, windows, g, 0.5, max_stages)


def gate(res: BatchResult, inf: InferenceSection) -> tuple[str, str] | tuple[()]:
    """() when a batch fit may become the posterior, else (REASONS entry, the figures that failed).

    Every engine: finite draws and weights. SMC: β = 1 and the effective sample size. NUTS
    (chains (C, S, D)): split R-hat at most `inf.max_rhat`, divergent share at most
    `inf.max_divergent`, bulk ESS at least `inf.min_ess` of the draws. SVI: a finite final loss.
    """
    p = res.particles
    if not (np.isfinite(np.asarray(p.z)).all() and np.isfinite(np.asarray(p.log_weights)).all()):
        return REASONS[1], "the fit's draws or weights are not finite"
    info = res.info
    if info.get("engine") == "smc":
        if info["beta"] < 1.0:
            return REASONS[2], f"batch SMC stopped at beta = {info['beta']:.3g} after {info['stages']} stages"
        if float(ess(p.log_weights)) < inf.min_ess * p.z.shape[0]:
            return REASONS[4], f"ESS {float(ess(p.log_weights)):.1f} of {p.z.shape[0]} particles"
    if info.get("engine") == "svi" and not np.isfinite(info["final_loss"]):
        return REASONS[6], f"SVI's final loss is {info['final_loss']}"
    if res.chains is not None and res.chains.shape[0] > 1:
        chains = np.asarray(res.chains)
        rhat = float(np.max(split_gelman_rubin(chains)))
        if not rhat <= inf.max_rhat:
            return REASONS[5], f"max split R-hat {rhat:.3f} > {inf.max_rhat}"
        share = float(np.mean(res.divergent))
        if share > inf.max_divergent:
            return REASONS[3], f"{share:.0%} divergent transitions > {inf.max_divergent:.0%}"
        bulk = float(np.min(effective_sample_size(chains)))
        if bulk < inf.min_ess * chains.shape[0] * chains.shape[1]:
            return REASONS[4], f"min bulk ESS {bulk:.0f} of {chains.shape[0] * chains.shape[1]} draws"
    return ()
