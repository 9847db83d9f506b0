"""Hierarchical priors for a fleet of R robots of one design (one twin config with a `[fleet]` section).

Parameters the config marks as hierarchical vary from robot to robot around a
population; everything else is shared. In the unconstrained space of each
hierarchical parameter's prior (log for lognormal, logit of the bounds for
truncnormal/uniform, identity for normal) robot r's value is non-centred:

    u_r = μ + τ · ε_r,    ε_r ~ N(0, 1),    τ ~ HalfNormal(fleet.spread_scale),

and robot r's physical value is the prior's transform of u_r, so positivity
and physical bounds hold for every robot. The population location μ keeps the
config's prior for that parameter. Shared, and why: the other estimated
parameters are what the config says is common to the design (a robot that
differs in them is a different design or a fault, which per-robot drift and
maintenance bands watch), and the noise scales describe one sensor model; both
are then learned from every robot's data, which is where the pooling helps a
robot with little data most.

The flat unconstrained vector of the fleet (dimension D + H + R·H, H hierarchical):

    z = [ z_shared (D,)   the TwinModel's vector; hierarchical entries hold μ,
          log τ (H,),
          ε (R·H,)        robot-major ]

A fleet window is one `Window` per robot stacked on a leading robot axis (R, ...):
`log_lik(z, w)` vmaps `TwinModel.log_lik` over the robots, so a batch of fleet
windows (B, R, ...) goes through `inference.batch.fit_nuts` unchanged. A robot with
fewer recordings is padded with masked windows (mask 0: no likelihood).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from twin_bayes.models.twin_model import TwinModel, Window


class FleetModel:
    """The hierarchical model of `robots` robots sharing `model`'s config (which needs a `[fleet]` section)."""

    def __init__(self, model: TwinModel, robots: int):
        fleet = model.cfg.fleet
        if fleet is None:
            raise ValueError(f"{model.cfg.name}: config has no [fleet] section "
                             "(e.g. [fleet] hierarchical = [\"body_mass:forearm\"])")
        if robots < 2:
            raise ValueError(f"a fleet needs at least 2 robots, got {robots}")
        self.model, self.robots = model, robots
        self.hierarchical = tuple(fleet.hierarchical)
        self.hier_idx = np.array([model.param_names.index(n) for n in self.hierarchical], dtype=np.int64)
        self.spread_prior = dist.HalfNormal(fleet.spread_scale)
        self.names = (tuple(f"population:{n}" if n in self.hierarchical else n for n in model.names)
                      + tuple(f"spread:{n}" for n in self.hierarchical)
                      + tuple(f"offset:{n}[{r}]" for r in range(robots) for n in self.hierarchical))

    @property
    def dim(self) -> int:
        return self.model.dim + len(self.hierarchical) * (1 + self.robots)

    def split(self, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """z (dim,) -> shared (D,), log spread (H,), offsets (R, H)."""
        d, h = self.model.dim, len(self.hierarchical)
        return z[:d], z[d:d + h], z[d + h:].reshape(self.robots, h)

    def robot_z(self, z: jnp.ndarray) -> jnp.ndarray:
        """Each robot's unconstrained TwinModel vector (R, D): the shared vector with μ + τ·ε_r."""
        shared, log_spread, offsets = self.split(z)
        per_robot = jnp.broadcast_to(shared, (self.robots, shared.shape[0]))
        return per_robot.at[:, self.hier_idx].add(jnp.exp(log_spread) * offsets)

    def log_prior(self, z: jnp.ndarray) -> jnp.ndarray:
        """Config prior of the shared vector (μ included), half-normal spreads (log-Jacobian included),
        N(0, 1) offsets."""
        shared, log_spread, offsets = self.split(z)
        spread = jnp.sum(self.spread_prior.log_prob(jnp.exp(log_spread)) + log_spread)
        return self.model.log_prior(shared) + spread + jnp.sum(dist.Normal().log_prob(offsets))

    def log_lik(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        """Log-likelihood of one fleet window w (each field with a leading robot axis R): robots summed."""
        return jnp.sum(jax.vmap(self.model.log_lik)(self.robot_z(z), w))

    def sample_prior(self, key: jax.Array, n: int) -> jnp.ndarray:
        """n prior draws of the fleet vector (n, dim)."""
        k1, k2, k3 = jax.random.split(key, 3)
        h = len(self.hierarchical)
        spread = self.spread_prior.sample(k2, (n, h))
        return jnp.concatenate([self.model.sample_prior(k1, n), jnp.log(spread),
                                jax.random.normal(k3, (n, self.robots * h))], axis=-1)

    def new_robot_z(self, key: jax.Array, z: jnp.ndarray) -> jnp.ndarray:
        """Draws (N, D) for an unseen robot of the fleet, one per fleet draw z (N, dim): μ + τ·ε_new."""
        shared, log_spread = z[:, :self.model.dim], z[:, self.model.dim:self.model.dim + len(self.hierarchical)]
        eps = jax.random.normal(key, log_spread.shape)
        return shared.at[:, self.hier_idx].add(jnp.exp(log_spread) * eps)
