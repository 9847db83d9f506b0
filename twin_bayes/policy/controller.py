"""The policy: feedforward knots plus bounded PD feedback, and the tracking task it serves.

Both are pytrees of arrays (NamedTuples), so one compiled optimiser step serves
every task and policy of the same shapes. The command law `command` and the
base reading `base_reading` take jnp and numpy arrays alike, so the Brax twin
(jnp, inside `lax.scan`) and the native MuJoCo robot (numpy, step by step) run
the same controller.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


class Task(NamedTuple):
    """Track q_ref (T, nu) / qd_ref (T, nu) of the actuated joints (rad, rad/s) from q0 (nq,), qd0 (nv,).

    basis (T, K) interpolates the K feedforward knots onto the T control steps;
    kp_max, kd_max (nu,) bound the feedback gains (command units per rad, per
    rad/s); q_scale (nu,) (rad) normalises the tracking error; effort (scalar)
    weights the mean squared command. delay (int scalar): command latency in
    control steps, the command computed at step t acts at step t + delay (the
    first one also before that); traced, so every delay shares one kernel.
    A floating-base robot is also kept upright: base_scale (B,) normalises its
    base reading (`base_reading`, B = 4; B = 0 for a fixed base), whose mean
    square joins the cost; push (T, 6) is the wrench (N, N·m, world frame)
    an outside hand applies to the root body at each step.
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
    base_scale: Array
    push: Array


class Policy(NamedTuple):
    """knots (K, nu): feedforward command; raw_kp, raw_kd (nu,): unconstrained feedback gains;
    base_gain (nu, B): command per unit of the base reading (a balance reflex; B = 0 for a fixed base)."""

    knots: Array
    raw_kp: Array
    raw_kd: Array
    base_gain: Array


def make_task(q_ref, qd_ref, q0, knots: int, kp_max, kd_max, q_scale, effort: float = 0.0, delay: int = 0,
              qd0=None, base_scale=(), push=None) -> Task:
    """A Task with a piecewise-linear feedforward basis of `knots` evenly spaced knots.

    qd0 defaults to rest (a fixed base: nv = nq); base_scale to none (a fixed
    base); push to none.
    """
    q_ref = np.asarray(q_ref, np.float64)
    T = q_ref.shape[0]
    t = np.linspace(0.0, knots - 1.0, T)
    basis = np.maximum(0.0, 1.0 - np.abs(t[:, None] - np.arange(knots)[None, :]))
    nu = q_ref.shape[1]
    arr = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float64), (nu,))  # noqa: E731
    qd0 = np.zeros(len(q0)) if qd0 is None else qd0
    push = np.zeros((T, 6)) if push is None else push
    return Task(jnp.asarray(q_ref), jnp.asarray(qd_ref, jnp.float64), jnp.asarray(q0, jnp.float64),
                jnp.asarray(qd0, jnp.float64), jnp.asarray(basis), arr(kp_max), arr(kd_max), arr(q_scale),
                jnp.asarray(effort, jnp.float64), jnp.asarray(delay, jnp.int32),
                jnp.asarray(base_scale, jnp.float64).reshape(-1), jnp.asarray(push, jnp.float64))


def initial_policy(task: Task, feedforward=None, gain_fraction: float = 0.5) -> Policy:
    """Knots from a feedforward (T, nu) (least squares; zero if None), gains at `gain_fraction` of their bounds."""
    k = task.basis.shape[1]
    if feedforward is None:
        knots = jnp.zeros((k, task.q_ref.shape[1]))
    else:
        knots = jnp.linalg.lstsq(task.basis, jnp.asarray(feedforward))[0]
    nu = task.q_ref.shape[1]
    raw = jnp.full(nu, jnp.log(gain_fraction / (1.0 - gain_fraction)))
    return Policy(knots, raw, raw, jnp.zeros((nu, task.base_scale.shape[0])))


def gains(policy: Policy, task: Task):
    """Feedback gains kp, kd (nu,) inside (0, kp_max), (0, kd_max)."""
    return task.kp_max * jax.nn.sigmoid(policy.raw_kp), task.kd_max * jax.nn.sigmoid(policy.raw_kd)


def feedforward(policy: Policy, task: Task) -> Array:
    """Feedforward command (T, nu)."""
    return task.basis @ policy.knots


def base_reading(q, qd):
    """What a torso IMU reads of a floating base, (4,): the up axis's tilt toward the base's own x and y
    (sin of the tilt angles; 0 upright) and the angular velocity about x and y (rad/s, base frame).

    q (nq,), qd (nv,) with the free joint first (position, quaternion w x y z; linear, angular velocity).
    """
    xp = np if isinstance(q, np.ndarray) else jnp
    w, x, y, z = q[3], q[4], q[5], q[6]
    return xp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), qd[3], qd[4]])


def command(ff, kp, kd, q_ref, qd_ref, q, qd, base_gain, base):
    """The command of one step (nu,): feedforward, PD on the measured tracking error, and the balance
    reflex −base_gain (nu, B) · base (B,) (the base reading; upright and still is zero)."""
    return ff + kp * (q_ref - q) + kd * (qd_ref - qd) - base_gain @ base


def tracking_cost(q, u, base, task: Task) -> Array:
    """Mean squared normalised tracking error of q (T, nu), plus effort · mean squared command u (T, nu),
    plus the mean squared normalised base reading base (T, B) of a floating base (none for B = 0)."""
    err = (q - task.q_ref) / task.q_scale
    cost = jnp.mean(err ** 2) + task.effort * jnp.mean(u ** 2)
    if base.shape[-1]:
        cost = cost + jnp.mean((base / task.base_scale) ** 2)
    return cost
