"""The policy: feedforward knots plus bounded PD feedback, and the tracking task it serves.

Both are pytrees of arrays (NamedTuples), so one compiled optimiser step serves
every task and policy of the same shapes. The command law `command` uses array
operators only, so the Brax twin (jnp, inside `lax.scan`) and the native
MuJoCo robot (numpy, step by step) run the same controller.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


class Task(NamedTuple):
    """Track q_ref (T, nu) / qd_ref (T, nu) of the actuated joints (rad, rad/s) from rest at q0 (nq,).

    basis (T, K) interpolates the K feedforward knots onto the T control steps;
    kp_max, kd_max (nu,) bound the feedback gains (command units per rad, per
    rad/s); q_scale (nu,) (rad) normalises the tracking error; effort (scalar)
    weights the mean squared command. delay (int scalar): command latency in
    control steps, the command computed at step t acts at step t + delay (the
    first one also before that); traced, so every delay shares one kernel.
    """

    q_ref: Array
    qd_ref: Array
    q0: Array
    qd0: Array
    basis: Array
    kp_max: Array
    kd_max: Array
    q_scale: Array
    effort: Array
    delay: Array


class Policy(NamedTuple):
    """knots (K, nu): feedforward command; raw_kp, raw_kd (nu,): unconstrained feedback gains."""

    knots: Array
    raw_kp: Array
    raw_kd: Array


def make_task(q_ref, qd_ref, q0, knots: int, kp_max, kd_max, q_scale, effort: float = 0.0, delay: int = 0) -> Task:
    """A Task with a piecewise-linear feedforward basis of `knots` evenly spaced knots."""
    q_ref = np.asarray(q_ref, np.float64)
    T = q_ref.shape[0]
    t = np.linspace(0.0, knots - 1.0, T)
    basis = np.maximum(0.0, 1.0 - np.abs(t[:, None] - np.arange(knots)[None, :]))
    nu = q_ref.shape[1]
    arr = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float64), (nu,))  # noqa: E731
    return Task(jnp.asarray(q_ref), jnp.asarray(qd_ref, jnp.float64), jnp.asarray(q0, jnp.float64),
                jnp.zeros(len(q0)), jnp.asarray(basis), arr(kp_max), arr(kd_max), arr(q_scale),
                jnp.asarray(effort, jnp.float64), jnp.asarray(delay, jnp.int32))


def initial_policy(task: Task, feedforward=None, gain_fraction: float = 0.5) -> Policy:
    """Knots from a feedforward (T, nu) (least squares; zero if None), gains at `gain_fraction` of their bounds."""
    k = task.basis.shape[1]
    if feedforward is None:
        knots = jnp.zeros((k, task.q_ref.shape[1]))
    else:
        knots = jnp.linalg.lstsq(task.basis, jnp.asarray(feedforward))[0]
    raw = jnp.full(task.q_ref.shape[1], jnp.log(gain_fraction / (1.0 - gain_fraction)))
    return Policy(knots, raw, raw)


def gains(policy: Policy, task: Task):
    """Feedback gains kp, kd (nu,) inside (0, kp_max), (0, kd_max)."""
    return task.kp_max * jax.nn.sigmoid(policy.raw_kp), task.kd_max * jax.nn.sigmoid(policy.raw_kd)


def feedforward(policy: Policy, task: Task) -> Array:
    """Feedforward command (T, nu)."""
    return task.basis @ policy.knots


def command(ff, kp, kd, q_ref, qd_ref, q, qd):
    """The command of one step (nu,): feedforward plus PD on the measured tracking error."""
    return ff + kp * (q_ref - q) + kd * (qd_ref - qd)


def tracking_cost(q, u, task: Task) -> Array:
    """Mean squared normalised tracking error of q (T, nu) plus effort · mean squared command u (T, nu)."""
    err = (q - task.q_ref) / task.q_scale
    return jnp.mean(err ** 2) + task.effort * jnp.mean(u ** 2)
