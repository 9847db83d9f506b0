"""Rollouts of the differentiable twin: Brax's MJX pipeline under `lax.scan`.

All functions are pure and take the robot explicitly (Brax style:
`pipeline.init/step` with `sys` passed in). `theta` is the flat parameter
vector (P,) of `robot.layout`; the returned states are what the robot's
sensors would report (positions include the sensor bias).

Convention: `q[t], qd[t]` are the state after `commands[t]` has acted for one
model timestep (one `mj_step`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from brax.mjx import pipeline

from twin_bayes.sim.params import model_fields

if TYPE_CHECKING:
    from twin_bayes.sim.robot import Robot

Array = jnp.ndarray


def system(robot: Robot, theta: Array):
    """The Brax System with theta (P,) written into its model fields."""
    return robot.sys.tree_replace(model_fields(robot.layout, theta))


def delay_commands(commands: Array, latency_s: Array, dt: float) -> Array:
    """Commands (T, nu) as the actuators see them `latency_s` later (linear interpolation).

    Row t becomes commands at time t·dt − latency; times before the first
    row hold the first command.
    """
    shift = latency_s / dt
    whole = jnp.floor(shift)
    frac = shift - whole
    idx = jnp.arange(commands.shape[0]) - whole.astype(jnp.int32)
    now = commands[jnp.clip(idx, 0)]
    before = commands[jnp.clip(idx - 1, 0)]
    return (1.0 - frac) * now + frac * before


def _simulate(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array) -> tuple[Array, Array]:
    """Open-loop rollout from a measured state under already-delayed commands (T, nu)."""
    sys = system(robot, theta)
    bias = robot.layout.sensor_bias(theta)
    act = robot.layout.actuator_params(theta)
    qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr

    def step(state, u):
        if robot.actuator.needs_state:
            u = robot.actuator.torque(u, state.q[qadr] + bias[qadr], state.qd[dofadr], act)
        state = pipeline.step(sys, state, u)
        return state, (state.q + bias, state.qd)

    state = pipeline.init(sys, q0 - bias, qd0)
    _, (q, qd) = jax.lax.scan(step, state, commands)
    return q, qd


def _forward_sensitivities(f, theta: Array, q0: Array, qd0: Array, commands: Array):
    """f(theta, q0, qd0, commands) with a VJP built from forward-mode sensitivities.

    MJX's constraint solver is a `while_loop`, which reverse mode cannot pass.
    Forward mode can: the Jacobian of the outputs in (theta, q0, qd0) is built
    column by column with `jax.linearize` (cost ~ P + nq + nv tangent passes,
    small here) and contracted with the output cotangent. Commands are closed
    over, so differentiating with respect to them raises instead of silently
    returning zero.
    """
    sizes = (theta.shape[0], q0.shape[0], qd0.shape[0])

    def h(x):
        a, b, c = jnp.split(x, (sizes[0], sizes[0] + sizes[1]))
        return f(a, b, c, commands)

    @jax.custom_vjp
    def g(x):
        return h(x)

    def g_fwd(x):
        out, lin = jax.linearize(h, x)
        jac = jax.vmap(lin, out_axes=-1)(jnp.eye(x.shape[0], dtype=x.dtype))
        return out, jac

    def g_bwd(jac, ct):
        grads = jax.tree.map(lambda j, c: jnp.tensordot(c, j, axes=c.ndim), jac, ct)
        return (sum(jax.tree.leaves(grads)),)

    g.defvjp(g_fwd, g_bwd)
    return g(jnp.concatenate([theta, q0, qd0]))


def simulate(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array) -> tuple[Array, Array]:
    """Rollout (T, nq), (T, nv) from measured q0 (nq,), qd0 (nv,) under delayed commands (T, nu).

    Differentiable in theta, q0 and qd0 for every robot: reverse mode where
    the model has no constraint rows, forward-mode sensitivities otherwise.
    """
    if robot.grad_mode == "forward":
        return _forward_sensitivities(lambda *a: _simulate(robot, *a), theta, q0, qd0, commands)
    return _simulate(robot, theta, q0, qd0, commands)


def rollout(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array) -> tuple[Array, Array]:
    """Rollout under raw commands (T, nu): latency applied, then `simulate`."""
    u = delay_commands(commands, robot.layout.latency(theta), robot.dt)
    return simulate(robot, theta, q0, qd0, u)


def segment(q_obs: Array, qd_obs: Array, commands: Array, steps: int):
    """Cut a window into S = (T − 1) // steps multiple-shooting segments.

    Segment k starts from observed state k·steps, applies commands
    k·steps … k·steps + steps − 1 and predicts observations k·steps + 1 …
    (k + 1)·steps. Returns (q0 (S, nq), qd0 (S, nv), commands (S, L, nu),
    q_target (S, L, nq), qd_target (S, L, nv)).
    """
    n = (q_obs.shape[0] - 1) // steps
    if n < 1:
        raise ValueError(f"window of {q_obs.shape[0]} samples is shorter than one segment of {steps} steps")
    starts = jnp.arange(n) * steps

    def cut(x, offset):
        return x[offset: offset + n * steps].reshape((n, steps) + x.shape[1:])

    return (q_obs[starts], qd_obs[starts], cut(commands, 0), cut(q_obs, 1), cut(qd_obs, 1))


def shoot(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array) -> tuple[Array, Array]:
    """Multiple shooting: S segments from their start states in one vectorised call.

    q0 (S, nq), qd0 (S, nv), commands (S, L, nu) already delayed (see
    `window_segments`); returns q (S, L, nq), qd (S, L, nv).
    """
    return jax.vmap(lambda a, b, c: simulate(robot, theta, a, b, c))(q0, qd0, commands)


def window_segments(robot: Robot, theta: Array, q_obs: Array, qd_obs: Array, commands: Array, steps: int):
    """`segment` after delaying the window's commands (T, nu) by theta's latency."""
    u = delay_commands(commands, robot.layout.latency(theta), robot.dt)
    return segment(q_obs, qd_obs, u, steps)
