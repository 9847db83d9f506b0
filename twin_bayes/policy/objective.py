"""Objectives over parameter particles and their gradients in the policy.

`thetas` (N, P) are equally weighted parameter vectors: posterior particles
(resampled), uniform domain-randomisation draws, or the nominal model (N = 1).
The risk measure is CVaR_alpha, the mean cost of the worst `alpha` fraction
of particles: alpha = 1 is the expected cost, alpha < 1 is risk-averse.
`alpha` is traced, so the mean and CVaR objectives share one compiled kernel.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from twin_bayes.policy.closed_loop import twin_rollout
from twin_bayes.policy.controller import Policy, Task, tracking_cost
from twin_bayes.sim.robot import Robot


def particle_costs(robot: Robot, thetas, policy: Policy, task: Task):
    """Twin tracking cost of the policy under each particle: (N,)."""
    def cost(theta):
        q, _, u, base = twin_rollout(robot, theta, policy, task)
        return tracking_cost(q, u, base, task)
    return jax.vmap(cost)(thetas)


particle_costs_jit = jax.jit(particle_costs, static_argnums=0)


@partial(jax.jit, static_argnums=0)
def predicted_costs(robot: Robot, key, thetas, noise_sd, policy: Policy, task: Task):
    """Costs (N,) the twin predicts for a run on the robot: particle i with its own sensor-noise draw.

    noise_sd (N, 2): each particle's sensor noise sd of q (rad) and qd (rad/s).
    """
    def cost(k, theta, sd):
        eps = jax.random.normal(k, (2,) + task.q_ref.shape) * sd[:, None, None]
        q, _, u, base = twin_rollout(robot, theta, policy, task, (eps[0], eps[1]))
        return tracking_cost(q, u, base, task)
    return jax.vmap(cost)(jax.random.split(key, thetas.shape[0]), thetas, noise_sd)


def cvar(costs, alpha):
    """Mean of the ceil(alpha·N) largest of costs (N,); alpha = 1 gives the mean."""
    n = costs.shape[0]
    k = jnp.clip(jnp.ceil(alpha * n), 1, n)
    rank = jnp.argsort(jnp.argsort(costs))  # 0 for the smallest cost
    return jnp.sum(jnp.where(rank >= n - k, costs, 0.0)) / k


def objective(robot: Robot, thetas, policy: Policy, task: Task, alpha=1.0):
    return cvar(particle_costs(robot, thetas, policy, task), alpha)


def value_and_grad(robot: Robot, thetas, policy: Policy, task: Task, alpha=1.0):
    """Objective and its gradient in the policy (a Policy pytree).

    Reverse mode where the twin has no constraint rows; otherwise forward mode
    (one tangent per policy parameter, batched), since MJX's constraint solver
    cannot be passed in reverse.
    """
    f = partial(objective, robot, thetas, task=task, alpha=alpha)
    if robot.grad_mode == "reverse":
        return jax.value_and_grad(lambda p: f(policy=p))(policy)
    flat, unravel = ravel_pytree(policy)
    g, v = jax.jacfwd(lambda x: (f(policy=unravel(x)),) * 2, has_aux=True)(flat)
    return v, unravel(g)
