"""Batch NUTS over a fleet of robots (`twin_bayes.models.fleet`): per-robot and population posteriors.

`fit_fleet` runs `batch.fit_nuts` (dense mass matrix) on the fleet's flat
vector; `FleetFit` turns the chains into each robot's posterior (an ordinary
twin posterior over the config's names) and the population's: the location
μ of each hierarchical parameter (physical units), its spread τ
(unconstrained units) and the value of an unseen robot of the fleet
(μ + τ·ε_new). `save_fleet` writes each robot's posterior with the twin
posterior store (so `twin-bayes evaluate --posterior OUT/<robot>` works)
plus the population's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.diagnostics import save_netcdf, summarize, to_inference_data
from twin_bayes.inference import batch
from twin_bayes.inference.posterior import Particles, Posterior
from twin_bayes.inference.store import save_posterior
from twin_bayes.inference.twin import Twin, constrain_all
from twin_bayes.models import FleetModel, Window

ROBOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
POPULATION = "population"
FLEET_STATE = "fleet.npz"


def check_robot_ids(ids: list[str]) -> None:
    """Robot ids name output folders: letters, digits, `_.-`, unique, not 'population'."""
    bad = [i for i in ids if not ROBOT_ID.fullmatch(i) or i == POPULATION]
    if bad:
        raise ValueError(f"robot ids {bad} are not usable: letters, digits and _.- only, not {POPULATION!r}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"robot ids {repeated} given more than once")


def stack_fleet_windows(fleet: FleetModel, windows: list[list[Window]], z_ref: jnp.ndarray) -> Window:
    """Each robot's windows (lists, robot order), linearised at z_ref (D,), as fleet windows (B, R, ...).

    B is the most windows any robot has; shorter lists are padded with masked
    copies of their first window (no likelihood), so every robot shares one shape.
    """
    model = fleet.model
    if len(windows) != fleet.robots or any(len(ws) == 0 for ws in windows):
        raise ValueError(f"need at least one window for each of the {fleet.robots} robots, "
                         f"got {[len(ws) for ws in windows]}")
    for ws in windows:
        for w in ws:
            model.check_window(w)
    lin = [[model.with_state_jacobian(w, z_ref) for w in ws] for ws in windows]
    n = max(len(ws) for ws in lin)
    padded = [ws + [ws[0]._replace(mask=jnp.zeros_like(ws[0].mask))] * (n - len(ws)) for ws in lin]
    rows = [jax.tree.map(lambda *x: jnp.stack(x), *[ws[b] for ws in padded]) for b in range(n)]
    return jax.tree.map(lambda *x: jnp.stack(x), *rows)


class FleetFit(NamedTuple):
    robot_ids: tuple[str, ...]
    fleet: FleetModel
    result: batch.BatchResult      # NUTS over the fleet vector: chains (C, S, dim)
    robot_chains: np.ndarray       # (R, C, S, D) each robot's unconstrained TwinModel vector
    new_robot_chains: np.ndarray   # (C, S, D) an unseen robot of the fleet
    windows: tuple[int, ...]       # windows with data, per robot

    def _values(self, chains: np.ndarray) -> np.ndarray:
        """Physical values (C, S, D) of unconstrained chains (C, S, D)."""
        d = self.fleet.model.dim
        return np.asarray(constrain_all(self.fleet.model, jnp.asarray(chains.reshape(-1, d)))).reshape(chains.shape)

    def robot_posterior(self, robot: str) -> Posterior:
        """Robot `robot`'s posterior: equally weighted draws over the config's names."""
        z = jnp.asarray(self.robot_chains[self.robot_ids.index(robot)].reshape(-1, self.fleet.model.dim))
        particles = Particles(z, jnp.full(z.shape[0], -jnp.log(z.shape[0])))
        return Posterior(self.fleet.model.names, particles, np.asarray(constrain_all(self.fleet.model, z)), 1)

    def population_draws(self) -> dict[str, np.ndarray]:
        """(C, S) draws of `population:<name>` (physical μ), `spread:<name>` (τ) and `new_robot:<name>`."""
        model = self.fleet.model
        chains = self.result.chains
        location = self._values(chains[..., :model.dim])
        new = self._values(self.new_robot_chains)
        out = {}
        for k, (name, i) in enumerate(zip(self.fleet.hierarchical, self.fleet.hier_idx)):
            out[f"population:{name}"] = location[..., i]
            out[f"spread:{name}"] = np.exp(chains[..., model.dim + k])
            out[f"new_robot:{name}"] = new[..., i]
        return out

    def robot_draws(self, robot: str) -> dict[str, np.ndarray]:
        values = self._values(self.robot_chains[self.robot_ids.index(robot)])
        return {n: values[..., i] for i, n in enumerate(self.fleet.model.names)}

    def summary(self) -> dict:
        """Per robot and for the population: per name mean, sd, q05, q50, q95, r_hat, ess_bulk, ess_tail."""
        diverging = {"diverging": self.result.divergent}
        robots = {r: summarize(to_inference_data(self.robot_draws(r), sample_stats=diverging)) for r in self.robot_ids}
        population = summarize(to_inference_data(self.population_draws()))
        return {"robots": robots, "population": population, "windows": dict(zip(self.robot_ids, self.windows)),
                "divergences": int(np.sum(self.result.divergent)), "evaluations": self.result.evaluations}


def fit_fleet(fleet: FleetModel, key: jax.Array, robot_ids: list[str], windows: list[list[Window]],
              num_warmup: int = 300, num_samples: int = 300, num_chains: int = 2) -> FleetFit:
    """NUTS over the fleet: `windows[r]` are robot `robot_ids[r]`'s windows.

    Start-state sensitivities are linearised at the prior medians, where the
    chains start too.
    """
    check_robot_ids(list(robot_ids))
    model = fleet.model
    z_ref = jnp.median(model.sample_prior(jax.random.PRNGKey(0), 2001), axis=0)
    stacked = stack_fleet_windows(fleet, windows, z_ref)
    k_nuts, k_new = jax.random.split(key)
    res = batch.fit_nuts(fleet, k_nuts, stacked, num_warmup=num_warmup, num_samples=num_samples,
                         num_chains=num_chains)
    flat = jnp.asarray(res.chains.reshape(-1, fleet.dim))
    c, s = res.chains.shape[:2]
    robot_chains = np.asarray(jax.vmap(fleet.robot_z)(flat)).reshape(c, s, fleet.robots, model.dim)
    new = np.asarray(fleet.new_robot_z(k_new, flat)).reshape(c, s, model.dim)
    info = {**res.info, "engine": "nuts-fleet"}
    return FleetFit(tuple(robot_ids), fleet, res._replace(info=info), robot_chains.transpose(2, 0, 1, 3), new,
                    tuple(len(ws) for ws in windows))


def save_fleet(fit: FleetFit, out: str | Path, twin_summary: dict | None = None) -> dict:
    """Write OUT/<robot>/ (the twin posterior store, per robot), OUT/population/posterior.nc,
    OUT/fleet.npz (the fleet chains, unconstrained, with names) and OUT/summary.json; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, res = fit.fleet.model, fit.result
    summary = {**(twin_summary or {}), **fit.summary()}
    for i, robot in enumerate(fit.robot_ids):
        twin = Twin(model.cfg, model)
        post = fit.robot_posterior(robot)
        twin.restore(post.particles, 1)
        twin.last_batch = res._replace(particles=post.particles, chains=fit.robot_chains[i], warm=None)
        save_posterior(twin, out / robot, {"robot": robot, "parameters": summary["robots"][robot]})
    (out / POPULATION).mkdir(exist_ok=True)
    save_netcdf(to_inference_data(fit.population_draws(), sample_stats={"diverging": res.divergent},
                                  attrs={"config": str(model.cfg.source), "engine": "nuts-fleet"}),
                out / POPULATION / "posterior.nc")
    np.savez(out / FLEET_STATE, z=np.asarray(res.chains), names=np.array(fit.fleet.names),
             robots=np.array(fit.robot_ids), divergent=np.asarray(res.divergent))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
