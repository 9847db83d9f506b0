"""Rollouts of the differentiable twin: Brax's MJX pipeline under `lax.scan`.

All functions are pure and take the robot explicitly (Brax style:
`pipeline.init/step` with `sys` passed in). `theta` is the flat parameter
vector (P,) of `robot.layout`; the returned states are what the robot's
sensors would report (positions include the sensor bias).

Convention: `q[t], qd[t]` are the state after `commands[t]` has acted for one
model timestep (one `mj_step`).
"""
from __future__ import annotations

from twin_bayes import _jax  # noqa: F401, I001  (float64; first, before any array)

from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax.base import Motion, Transform
from brax.mjx import pipeline
from brax.mjx.base import State
from jax.custom_derivatives import SymbolicZero
from mujoco import mjx

from twin_bayes.sim.latency import delay_commands
from twin_bayes.sim.params import model_fields

if TYPE_CHECKING:
    from twin_bayes.sim.robot import Robot

Array = jnp.ndarray


def system(robot: Robot, theta: Array):
    """The Brax System with theta (P,) written into its model fields."""
    return robot.sys.tree_replace(model_fields(robot.layout, theta))


def _start(sys, q: Array, qd: Array) -> State:
    """The pipeline's state at (q, qd) before its first step: Brax's `pipeline.init` without its
    `mjx.forward`. A step computes the forward dynamics again from q, qd and the controls, and reads
    nothing else that forward writes (its constraint solver starts from `qacc_warmstart`, zero here
    as there), so the rollout is the same while each simulation traces and compiles one MJX forward
    pass instead of two."""
    data = mjx.make_data(sys).replace(qpos=q, qvel=qd)
    x = Transform(pos=data.xpos[1:], rot=data.xquat[1:])
    xd = Motion(vel=data.cvel[1:, 3:], ang=data.cvel[1:, :3])
    fields = dict(data.__dict__, contact=pipeline._reformat_contact(sys, data.contact))
    return State(q=q, qd=qd, x=x, xd=xd, **fields)


def _sensed_step(sys, state: State, u: Array, no_rows: bool) -> tuple[State, Array]:
    """One step that also returns the sensors' readings (nsensordata,): `pipeline.step`, with MJX's
    forward pass and integration called apart so the readings of the forward pass are kept. MJX's
    forward leaves out the acceleration-stage sensors (accelerometer, force, torque, actuator
    forces) when the model has no constraint rows; they are computed here then, by MJX's own
    `sensor_acc`, from the same forward pass."""
    data = mjx.forward(sys, state.replace(ctrl=u))
    if no_rows:
        data = mjx.sensor_acc(sys, data)
    readings = data.sensordata
    integrator = sys.opt.integrator
    if integrator == mujoco.mjtIntegrator.mjINT_EULER:
        data = mjx.euler(sys, data)
    elif integrator == mujoco.mjtIntegrator.mjINT_RK4:
        data = mjx.rungekutta4(sys, data)
    else:
        data = mjx.implicit(sys, data)
    if data.ncon > 0:
        data = data.replace(contact=pipeline._reformat_contact(sys, data._impl.contact))
    return data.replace(q=data.qpos, qd=data.qvel), readings


@partial(jax.jit, static_argnums=(0, 5, 6))
def _simulate(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array,
              history: int, readings: tuple[int, ...] = ()) -> tuple[Array, ...]:
    """Open-loop rollout from a measured state; commands (history + T, nu) are delayed here.

    Returns q (T, nq), qd (T, nv) and, where `readings` names sensordata columns, the measured
    readings of those columns (T, len(readings)) (`sim.sensors`: row t from step t's forward pass).
    Jitted (the robot, history and readings static), so that the MJX step is traced in Python once per robot
    and shape: an update uses the rollout in many places (segments, sensitivities, trial points,
    importance draws), and JAX transforms the one cached jaxpr for each instead of tracing MJX
    again, which is what a fresh process's first update spent most of its time on.
    """
    commands = delay_commands(commands, robot.layout.latency(theta), robot.dt)[history:]
    sys = system(robot, theta)
    if readings:
        sys = sys.replace(opt=sys.opt.replace(disableflags=sys.opt.disableflags & ~mjx.DisableBit.SENSOR))
    bias = robot.layout.sensor_bias(theta)
    act = robot.layout.actuator_params(theta)
    qadr, dofadr = robot.layout.act_qadr, robot.layout.act_dofadr
    no_rows = mjx.make_data(sys)._impl.efc_J.shape[0] == 0

    def step(state, u):
        if robot.actuator.needs_state:
            u = robot.actuator.torque(u, state.q[qadr] + bias[qadr], state.qd[dofadr], act)
        if readings:
            state, raw = _sensed_step(sys, state, u, no_rows)
            return state, (state.q + bias, state.qd, raw)
        state = pipeline.step(sys, state, u)
        return state, (state.q + bias, state.qd)

    state = _start(sys, q0 - bias, qd0)
    _, out = jax.lax.scan(step, state, commands)
    if not readings:
        return out
    return out[0], out[1], robot.layout.sensors.apply(theta, out[2], robot.dt)[:, np.asarray(readings)]


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward_sensitivities(h, x: Array, held):
    """h(x, held) whose derivative in x comes from an explicit forward-mode Jacobian.

    MJX's constraint solver is a `while_loop`, which reverse mode cannot pass.
    Forward mode can: the Jacobian of the outputs in x (n,) is built with
    `jax.jacfwd`, n tangent passes batched with one primal pass (n is small:
    the free parameters and, if asked, the start state). The JVP `jac @ dx`
    is linear in dx, so JAX transposes it for reverse mode (`grad`, `vjp`).
    `held` (fixed parameters, start state, commands) must not carry
    tangents: differentiating through it raises instead of returning zero.
    """
    return h(x, held)


def _forward_sensitivities_jvp(h, primals, tangents):
    x, held = primals
    dx, dheld = tangents
    if not all(isinstance(t, SymbolicZero) for t in jax.tree.leaves(dheld)):
        raise TypeError("this robot's rollouts (constraint solver inside) are differentiable in the "
                        "free parameters and start state only, not in commands or held parameters")
    jac, out = jax.jacfwd(lambda y: (h(y, held), h(y, held)), has_aux=True)(x)
    if isinstance(dx, SymbolicZero):
        return out, jax.tree.map(jnp.zeros_like, out)
    return out, jax.tree.map(lambda j: j @ dx, jac)


_forward_sensitivities.defjvp(_forward_sensitivities_jvp, symbolic_zeros=True)


def simulate(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array, history: int = 0,
             free: tuple[int, ...] | None = None, state_grad: bool = True,
             readings: tuple[int, ...] = ()) -> tuple[Array, ...]:
    """Rollout (T, nq), (T, nv) from measured q0 (nq,), qd0 (nv,); with `readings` (static sensordata
    columns) also the measured sensor readings (T, len(readings)) (`_simulate`).

    `commands` (history + T, nu) are the raw commands: the first `history`
    rows are those sent before the start (so that command latency can reach
    back), the last T act one step each.

    Differentiable for every robot: reverse mode where the model has no
    constraint rows, forward-mode sensitivities otherwise. For the latter,
    `free` (static indices into theta) limits the sensitivities to the
    parameters being estimated and `state_grad=False` leaves out the start
    state: what is left out is held fixed (zero gradient). Commands cannot
    be differentiated there (a TypeError says so).
    """
    theta, q0, qd0, commands = (jnp.asarray(a) for a in (theta, q0, qd0, commands))
    if robot.grad_mode == "reverse":
        return _simulate(robot, theta, q0, qd0, commands, history, readings)
    idx = np.arange(theta.shape[0]) if free is None else np.asarray(free, dtype=np.int64)
    n, nq = len(idx), q0.shape[0]

    def h(x, held):
        base, q_start, qd_start, u = held
        th = base.at[idx].set(x[:n])
        if state_grad:
            q_start, qd_start = x[n:n + nq], x[n + nq:]
        return _simulate(robot, th, q_start, qd_start, u, history, readings)

    x = jnp.concatenate([theta[idx], q0, qd0]) if state_grad else theta[idx]
    held = jax.lax.stop_gradient((theta, q0, qd0)) + (commands,)
    return _forward_sensitivities(h, x, held)


def rollout(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array) -> tuple[Array, Array]:
    """Rollout under commands (T, nu) with no earlier commands (the first is held before t = 0)."""
    return simulate(robot, theta, q0, qd0, commands)


def segment(q_obs: Array, qd_obs: Array, commands: Array, steps: int, history: int = 0):
    """Cut a window into S = (T − 1) // steps multiple-shooting segments.

    Segment k starts from observed state k·steps, applies commands
    k·steps … k·steps + steps − 1 and predicts observations k·steps + 1 …
    (k + 1)·steps. Each segment's commands carry the `history` rows sent
    before its start (the window's first command where the window has none).
    Returns (q0 (S, nq), qd0 (S, nv), commands (S, history + L, nu),
    q_target (S, L, nq), qd_target (S, L, nv)).
    """
    n = (q_obs.shape[0] - 1) // steps
    if n < 1:
        raise ValueError(f"window of {q_obs.shape[0]} samples is shorter than one segment of {steps} steps")
    starts = jnp.arange(n) * steps
    rows = starts[:, None] + jnp.arange(-history, steps)[None, :]
    targets = starts[:, None] + jnp.arange(1, steps + 1)[None, :]
    return q_obs[starts], qd_obs[starts], commands[jnp.clip(rows, 0)], q_obs[targets], qd_obs[targets]


def shoot(robot: Robot, theta: Array, q0: Array, qd0: Array, commands: Array, history: int = 0,
          free: tuple[int, ...] | None = None, state_grad: bool = False,
          readings: tuple[int, ...] = ()) -> tuple[Array, ...]:
    """Multiple shooting: S segments from their start states in one vectorised call.

    q0 (S, nq), qd0 (S, nv), commands (S, history + L, nu) from `segment`;
    returns q (S, L, nq), qd (S, L, nv) (and the readings (S, L, R) of `readings`). `free`,
    `state_grad` and `readings` as in `simulate`.
    """
    sim = lambda a, b, c: simulate(robot, theta, a, b, c, history, free, state_grad, readings)  # noqa: E731
    return jax.vmap(sim)(jnp.asarray(q0), jnp.asarray(qd0), jnp.asarray(commands))
