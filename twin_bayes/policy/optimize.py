"""Policy optimisation through the twin with optax: Adam after global-norm gradient clipping."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from twin_bayes.policy.controller import Policy, Task
from twin_bayes.policy.objective import value_and_grad
from twin_bayes.sim.robot import Robot


class Settings(NamedTuple):
    """Optimiser settings: Adam learning rate and the gradient clip (global norm)."""

    learning_rate: float = 0.05
    clip: float = 1.0


def _optimizer(s: Settings) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(s.clip), optax.adam(s.learning_rate))


@partial(jax.jit, static_argnums=(0, 1))
def _step(robot: Robot, s: Settings, thetas, policy: Policy, opt_state, task: Task, alpha):
    value, grad = value_and_grad(robot, thetas, policy, task, alpha)
    updates, opt_state = _optimizer(s).update(grad, opt_state, policy)
    return optax.apply_updates(policy, updates), opt_state, value


def optimize(robot: Robot, thetas, policy: Policy, task: Task, steps: int,
             settings: Settings = Settings(), alpha: float = 1.0) -> tuple[Policy, np.ndarray]:
    """`steps` optax steps from `policy` (a warm start re-adapts) on particles thetas (N, P).

    The objective is CVaR_alpha of the particles' tracking costs (alpha = 1: their mean).
    Returns the final policy and the objective before each step (steps,).
    """
    opt_state = _optimizer(settings).init(policy)
    history = np.empty(steps)
    for i in range(steps):
        policy, opt_state, value = _step(robot, settings, thetas, policy, opt_state, task, jnp.asarray(alpha))
        history[i] = float(value)
    return policy, history
