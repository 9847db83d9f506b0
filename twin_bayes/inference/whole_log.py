"""Whole-recording fits: each recording simulated open loop from its first state under its commands.

That is how a twin is judged on held-out recordings (`twin_bayes.cli.evaluate_trajectory`), and here
it is also the objective: multiple shooting from measured states fits the one-step dynamics but never
sees the error that accumulates over a recording. The likelihood of the open-loop position residuals
e (R, T, nq) is Gaussian with one sd per joint profiled out, ℓ(z) = −(N / 2κ) · Σ_j log(Σ e_j² / N)
over the N real samples, tempered by κ, the residuals' integrated autocorrelation time in steps: a
smooth model error makes neighbouring residuals nearly copies of each other, so N residuals carry
about N / κ independent observations (a generalised-Bayes posterior; κ = 1 would be the i.i.d.
likelihood and over-confident).
The mode is found by Adam from the prior mean (the untempered least-squares fit), each delay then
started from the best point of a grid a quarter step apart (`delay_starts`), then polished by damped Newton steps
on the tempered target (`laplace.newton_mode`, the streaming engine's search and its Gauss–Newton
curvature); the posterior is its Laplace approximation, N(mode, H⁻¹) in unconstrained space, returned
as equally weighted particles. κ is the autocorrelation of the residuals at the mode: measured where
the search starts, a misfit that the fit removes (a sensor bias still at zero) counts as correlated
model error, so Newton runs again from its mode with the κ measured there until κ settles
(`PASSES`; on the fixed humanoid's sensors κ fell from 17–59 at the start to 1.0–1.6 at the mode; on
the XL330's whole logs it rose from about 70 after Adam to 159–393 steps, as the learned model error's
time constant says). Open-loop residuals say nothing about the sensor noise (model error dwarfs it):
the noise scales stay at the config's `noise_scale`.

The model error (`inference.discrepancy`) is learned from cross-validated residuals, not from the
mode's own: a fit bends its parameters to the recordings it sees (on the real Panda the mode's own
errors at the horizon's end were half the held-out ones on three joints), so a model error learned
from them is too small on anything new. `held_out_residuals` predicts each of FOLDS folds, contiguous
stretches of time (`time_folds`: a tenth of the segments in order, or the same tenth of every whole
recording), by the mode refitted without that fold, approximated by one Newton step on the
Gauss–Newton target (exact for a linear model), from the last Newton iterate's Jacobian: no further
simulation. A fold's refitted mode is itself uncertain, so its residuals hold the parameters' share of
the predictive variance as well as the model error; the model error is fitted above that share (the
Laplace covariance through the same Jacobian, diag J Σ Jᵀ, plus the sensor noise: `predictive_variance`),
which the predictive adds again from its particles. Fitted on the residuals alone, the bands counted
the parameters twice. With latent starts the refit without a fold leaves that fold's start offsets to
their prior, so its held-out residuals are predictions from the measured starts, as a user's are.

With a horizon (`fit --engine whole-log --horizon S`) each recording is restarted from its measured
state every S seconds instead (`segments`: the cut of `evaluate --horizon`), for robots whose
open-loop error over a whole recording is not what their users ask of the twin (an arm whose
planner re-plans every 0.1 s). A segment's start state is measured with the sensors' noise. Where the
config searches start states (`inference.start_search`) each is latent (`with_starts`): the measured
one plus an offset e ~ N(0, Σ0), Σ0 the q and qd noise (`TwinModel.start_variance`), estimated with the
parameters by the same Newton search over (parameters, every segment's offset), whose Gauss–Newton
curvature is block-sparse (one forward-mode pass of P + nq + nv tangents: segments are independent, so
one tangent moves every segment's start along one axis); the offsets are searched in units of their
prior sd, which keeps the curvature's scales alike. The parameters' covariance is the Laplace joint's
marginal (its parameter block), so the starts are integrated out, not fixed at their mode. Measured
starts suit encoder-grade positions and filtered velocities. They do not suit feet in contact: on the
floating humanoid a start's velocity noise sets a planted foot sliding, which the fit stops by moving
that foot's friction (docs/STUDIES/humanoid.md). Latent starts cost P + nq + nv tangents per Newton
step instead of P (on the floating humanoid 52 instead of 5).

A config observing MJCF sensors (docs/SENSORS.md) has each sensor's readings predicted by the same rollouts
through its sensor model (bias, scale, misalignment, delay at the particle's values): every reading column
is one more column of residuals with its own profiled sd, so the sensor parameters are fitted with the
physical ones. A delayed sensor's first ⌈max_latency_s / dt⌉ rows of each recording or segment reach
before its start and are not scored (`TwinModel.scored_readings`, as in the windows). Each sensor's
columns are tempered by their own κ (`column_tempers`): a segment's start-state error carries through
its positions for many steps (κ ≈ 30 on the fixed humanoid's emulated telemetry) while an IMU's or a
torque sensor's residuals stay white (κ = 1), and one κ for all would make the sensors' intervals √30
times too wide. The model error is the positions' (the predictive adds none to readings).
"""
from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from twin_bayes.config import is_delay
from twin_bayes.diagnostics.shooting import cut, horizon_steps, on_grid
from twin_bayes.inference.autocorrelation import integrated_time, lagged_products
from twin_bayes.inference.discrepancy import fit_model_error
from twin_bayes.inference.engine import REASONS
from twin_bayes.inference.laplace import MAX_ITER, Laplace, newton_mode
from twin_bayes.inference.posterior import Particles
from twin_bayes.inference.smc import GaussianPrior
from twin_bayes.models import TwinModel
from twin_bayes.sim.rollout import simulate

# Folds (contiguous stretches of time) of the model error's cross-validated residuals.
FOLDS = 10
# A delay's starts (`delay_starts`) are this many per step of dt, over its prior's central 99 %.
DELAY_STARTS_PER_STEP = 4
# Newton searches at most, each tempered by the κ measured at the previous one's mode and its delays
# started afresh there (`fit`).
PASSES = 3
# κ counts as settled when no column's moved by more than this fraction.
TEMPER_RTOL = 0.1


class Recordings(NamedTuple):
    """R recordings padded to T steps: start q0 (R, nq), qd0 (R, nv); commands (R, T, nu), row k acting
    during step k; observed q (R, T, nq) after each step; mask (R, T) 1 for real steps; settings (R, K);
    the observed sensors' readings (R, T, C), row k read at the state command k starts from (C = 0 for a
    twin observing no sensor; `TwinModel.readings` order)."""

    q0: jnp.ndarray
    qd0: jnp.ndarray
    commands: jnp.ndarray
    q: jnp.ndarray
    mask: jnp.ndarray
    settings: jnp.ndarray
    readings: jnp.ndarray

    def observed(self) -> jnp.ndarray:
        """The observed columns (R, T, nq + C): positions, then readings."""
        return jnp.concatenate([self.q, self.readings], axis=-1)


class WholeLogFit(NamedTuple):
    """mode (D,) and chol (D, D) of the Laplace covariance (unconstrained; the start states marginalised),
    each segment's latent start offset at the mode starts (R, nq + nv) (rad, m, rad/s; None where starts are
    measured), the tempers κ (nq + C,) per observed column (steps, `column_tempers`),
    residuals (R, T, nq + C) of the mode's rollouts (`Recordings.observed` columns, 0 where unscored) and
    their cross-validated counterparts `held_out` (`held_out_residuals`; None where Newton did not
    converge) with the positions' predictive variance at each step, `variance` (R, T, nq) rad²
    (`predictive_variance`; None likewise), and the cost: optimiser steps, simulator evaluations (each a
    rollout of every recording; a curvature counts D), Newton searches `passes` (`fit`);
    `converged`: Newton stopped at a mode (finite, before its steps ran out)."""

    mode: jnp.ndarray
    chol: jnp.ndarray
    starts: np.ndarray | None
    temper: np.ndarray
    residuals: np.ndarray
    held_out: np.ndarray | None
    variance: np.ndarray | None
    steps: int
    evaluations: int
    passes: int
    converged: bool


def _readings(model: TwinModel, tr) -> np.ndarray:
    """The recording's readings (N, C) of the model's observed sensors, in `TwinModel.readings` order;
    ValueError names the sensors it lacks."""
    missing = [n for n in model.sensors if n not in tr.sensors]
    if missing:
        raise ValueError(f"{tr.source}: no readings of observed sensor(s) {missing}")
    n = len(tr.t)
    return np.concatenate([np.reshape(tr.sensors[s], (n, w)) for s, w in zip(model.sensors, model.sensor_widths)]
                          + [np.zeros((n, 0))], axis=1)


def column_mask(model: TwinModel, rec: Recordings) -> jnp.ndarray:
    """(R, T, nq + C) 1.0 where an observed column is scored: real steps, less a delayed sensor's first
    rows of each recording (`TwinModel.scored_readings`)."""
    T, nq = rec.q.shape[1], rec.q.shape[2]
    scored = np.concatenate([np.ones((T, nq), bool), model.scored_readings(T)], axis=1)
    return rec.mask[..., None] * jnp.asarray(scored, rec.mask.dtype)


def stack(model: TwinModel, trajectories, bucket: int | None = None) -> Recordings:
    """Recordings from `Trajectory`s (t, q, qd, ctrl, settings), padded with their last command.
    bucket: steps rounded up to a multiple of it and recordings to a power of two (padding masked
    out, the fit unchanged), so that a service consolidating ever more data compiles a few shapes."""
    T, R = max(len(tr.t) for tr in trajectories) - 1, len(trajectories)
    if bucket:
        T, R = -(-T // bucket) * bucket, 1 << (R - 1).bit_length()
    pad = lambda a, n: np.concatenate([a, np.repeat(a[-1:], n, axis=0)])  # noqa: E731
    rows = [(tr.q[0], tr.qd[0], pad(tr.ctrl[:-1], T + 1 - len(tr.t)), pad(tr.q[1:], T + 1 - len(tr.t)),
             np.r_[np.ones(len(tr.t) - 1), np.zeros(T + 1 - len(tr.t))], model.settings_vector(tr.settings),
             pad(_readings(model, tr)[:-1], T + 1 - len(tr.t)))
            for tr in trajectories]
    rows += [rows[-1][:4] + (np.zeros(T),) + rows[-1][5:]] * (R - len(rows))     # empty recordings
    return Recordings(*(jnp.asarray(np.stack(col)) for col in zip(*rows)))


def segments(model: TwinModel, trajectories, horizon_s: float) -> Recordings:
    """Recordings restarted from the measured state every `horizon_s`: each recording (resampled onto
    the twin's step where its stamps are not, `shooting.on_grid`) cut into segments of H steps by the
    multiple-shooting evaluation's own cutter (`shooting.cut`), so a fit and its evaluation see the
    same segments. q0 (S, nq), qd0 (S, nv), commands (S, H, nu), q (S, H, nq), readings (S, H, C), no
    padding. A twin observing sensors takes recordings stamped every dt (readings are not resampled)."""
    steps = horizon_steps(horizon_s, model.robot.dt)
    parts = []
    for tr in trajectories:
        grid = on_grid(tr, model.robot.dt)
        if model.sensors and grid is not tr:
            raise ValueError(f"{tr.source}: sensor readings are not resampled; record them every {model.robot.dt} s")
        q0, qd0, u, q = cut(grid, steps)
        readings = _readings(model, tr)[np.arange(len(q0))[:, None] * steps + np.arange(steps)[None, :]]
        settings = np.repeat(model.settings_vector(tr.settings)[None], len(q0), axis=0)
        parts.append((q0, qd0, u, q, np.ones(q.shape[:2]), settings, readings))
    return Recordings(*(jnp.asarray(np.concatenate(col)) for col in zip(*parts)))


@partial(jax.jit, static_argnames="state_grad")
def open_loop(model: TwinModel, z: jnp.ndarray, rec: Recordings, state_grad: bool = False) -> jnp.ndarray:
    """Predictions (R, T, nq + C) of the observed columns (`Recordings.observed`) by particle z (D,): each
    recording simulated whole, no resets; readings through the sensor models at z. Differentiable in z, and
    with state_grad in the start states too (`sim.rollout.simulate`)."""
    values = model.constrain(z)

    def one(q0, qd0, u, settings):
        u = jnp.concatenate([jnp.repeat(u[:1], model.history, axis=0), u])   # the first command held before
        q, _, *readings = simulate(model.robot, model.theta(values, settings), q0, qd0, u, model.history,
                                   free=model.free_idx, state_grad=state_grad, readings=model.readings)
        return jnp.concatenate([q] + readings, axis=-1)

    return jax.vmap(one)(rec.q0, rec.qd0, rec.commands, rec.settings)


def target_of(model: TwinModel, rec: Recordings, temper, z, pred: jnp.ndarray) -> jnp.ndarray:
    """log prior(z) + the tempered profile Gaussian log-likelihood of the residuals of the predictions
    pred (R, T, nq + C), one sd profiled out per column: −½ Σ_j (N_j / κ_j) log(Σ e_j² / N_j) over the N_j
    scored samples of column j (`column_mask`; joints differ in scale: a wrist's errors are not an
    elbow's, nor a gyro's an encoder's); temper κ () or (nq + C,) per column (`column_tempers`)."""
    m = column_mask(model, rec)
    n = jnp.sum(m, axis=(0, 1))
    resid = (rec.observed() - pred) * m
    return model.log_prior(z) - 0.5 * jnp.sum(n / temper * jnp.log(jnp.sum(resid ** 2, axis=(0, 1)) / n))


def log_target(model: TwinModel, rec: Recordings, temper, z):
    """The whole-recording log target at z (D,) (`target_of` of its open-loop predictions)."""
    return target_of(model, rec, temper, z, open_loop(model, z, rec))


def with_starts(model: TwinModel, rec: Recordings, x: jnp.ndarray, sd) -> tuple[jnp.ndarray, Recordings]:
    """The physical parameters y (P,) and the recordings from their start states, of x: (P,), the starts
    measured (sd None), or (P + R·(nq + nv),) with latent starts, its tail each row's start offset from the
    measured one in units of sd (nq + nv,), the measured start's noise (`TwinModel.start_variance`)."""
    p = len(model.param_names)
    if sd is None:
        return x, rec
    e = x[p:].reshape(rec.q0.shape[0], -1) * sd
    return x[:p], rec._replace(q0=rec.q0 + e[:, :model.robot.nq], qd0=rec.qd0 + e[:, model.robot.nq:])


def joint_target(model: TwinModel, rec: Recordings, temper, noise, sd, x) -> jnp.ndarray:
    """The log target at x (`with_starts`): `log_target` from the start states x says, plus the latent
    offsets' prior N(0, 1) in units of sd; the noise scales (unconstrained, fixed) appended."""
    y, moved = with_starts(model, rec, x, sd)
    return log_target(model, moved, temper, jnp.concatenate([y, noise])) - 0.5 * jnp.sum(x[y.shape[0]:] ** 2)


def value_grad_curvature(model: TwinModel, rec: Recordings, temper, noise, x, sd=None):
    """The log target at x (`joint_target`; x (P,) the physical parameters, or (P + R·r,) with each row's
    latent start offset, r = nq + nv, where sd (r,) is given), its gradient and its Gauss–Newton Hessian
    (P + R·r, P + R·r), the streaming engine's curvature (`laplace.value_grad_curvature`) for whole
    recordings: one forward-mode pass (P + r tangents) gives the open-loop predictions, their Jacobian J_y
    in the parameters and J_e in the start offset (one tangent moves every row's start at once; rows are
    independent, so each sees only its own). The curvature is that of the target with the
    predictions linearised at x and each column's sd held at its profiled value s_j there (iteratively
    reweighted least squares), −Σ_j J_jᵀJ_j / (κ_j s_j²) plus the priors': it has the profile target's
    gradient at x and is negative definite everywhere, where the profile's own Hessian (the log of the
    sums of squares) is indefinite far from a mode. It leaves out the simulator's second derivatives
    weighted by the residuals and the sds' own curvature (zero at a one-joint mode the prior does
    not pull). P forward tangents cost a fraction of P reverse passes (the Panda's 48 parameters over
    100 segments: an exact Hessian, forward over reverse, took 116 s). The Jacobians (R, T, nq + C, P)
    and (R, T, nq + C, r) (none without latent starts) of the scored predictions (zero where `column_mask`
    is) come back as the fourth value (`held_out_residuals` uses them)."""
    p, full = len(model.param_names), lambda y: jnp.concatenate([y, noise])  # noqa: E731
    y, moved = with_starts(model, rec, x, sd)
    r = 0 if sd is None else sd.shape[0]
    shift = lambda v: moved if sd is None else with_starts(model, moved, jnp.concatenate(  # noqa: E731
        [v[:p], jnp.tile(v[p:], rec.q0.shape[0])]), sd)[1]
    m = column_mask(model, rec)
    jac, pred = jax.jacfwd(lambda v: (open_loop(model, full(v[:p]), shift(v), sd is not None),) * 2, has_aux=True)(
        jnp.concatenate([y, jnp.zeros(r, y.dtype)]))
    jac, pred = jax.lax.stop_gradient((jac * m[..., None], pred))
    resid = (rec.observed() - pred) * m
    weight = 1.0 / (jax.lax.stop_gradient(jnp.sum(resid ** 2, axis=(0, 1)) / jnp.sum(m, axis=(0, 1))) * temper)
    jy, je = jac[..., :p], jac[..., p:]
    prior = lambda v: model.log_prior(full(v))  # noqa: E731
    rows, u = rec.q0.shape[0], x[p:].reshape(rec.q0.shape[0], r)
    grad = jnp.concatenate([jnp.einsum("stcp,c,stc->p", jy, weight, resid) + jax.grad(prior)(y),
                            (jnp.einsum("stci,c,stc->si", je, weight, resid) - u).reshape(-1)])
    h_yy = jax.hessian(prior)(y) - jnp.einsum("stcp,c,stcq->pq", jy, weight, jy)
    h_ye = -jnp.einsum("stcp,c,stci->psi", jy, weight, je).reshape(p, rows * r)
    h_ee = -jnp.einsum("sij,su->siuj", jnp.einsum("stci,c,stcj->sij", je, weight, je),
                       jnp.eye(rows)).reshape(rows * r, rows * r)
    hess = jnp.block([[h_yy, h_ye], [h_ye.T, h_ee - jnp.eye(rows * r)]])
    value = target_of(model, moved, temper, full(y), pred) - 0.5 * jnp.sum(u ** 2)
    return value, grad, hess, (jy, je)


def autocorrelation_time(residuals: np.ndarray, mask: np.ndarray) -> float:
    """Integrated autocorrelation time (steps) of residuals (R, T, nq) with mask (R, T)
    (`inference.autocorrelation`, the streaming engine's rule)."""
    m = np.broadcast_to(np.asarray(mask, np.float64)[..., None], residuals.shape)
    return float(integrated_time(*lagged_products(np.asarray(residuals) * m, m)))


def segment_time(residuals: np.ndarray, mask: np.ndarray) -> float:
    """Integrated autocorrelation time (steps) of residuals (S, H, C) whose rows are independent segments,
    mask (S, H, C): by batch means over the segments, Σ_sc (Σ_t e)² / Σ e² (at least 1), what the
    variance of a segment's sum says of its samples' correlation. It counts every lag within a segment,
    where the lag sum (`autocorrelation_time`) stops at the first autocorrelation under
    `autocorrelation.CUTOFF`: a start's velocity error that is 4 % of a gyro's variance through all 50
    steps of a segment makes κ ≈ 3 (a bias's sd √3 times the white-noise one), which the lag sum reads
    as 1."""
    e = np.asarray(residuals) * mask
    return max(1.0, float(np.sum(np.sum(e, axis=1) ** 2) / np.sum(e ** 2)))


def sensor_columns(model: TwinModel) -> list[slice]:
    """Each observed sensor's columns among the observed ones (`Recordings.observed`: nq positions first)."""
    ends = model.robot.nq + np.cumsum(model.sensor_widths, dtype=int)
    return [slice(int(e - w), int(e)) for e, w in zip(ends, model.sensor_widths)]


def column_tempers(model: TwinModel, rec: Recordings, residuals: np.ndarray, segmented: bool) -> np.ndarray:
    """κ per observed column (nq + C,) of residuals (R, T, nq + C) at their scored rows: the positions'
    columns pooled, each sensor's own columns pooled; by the lag sum (`autocorrelation_time`, the
    streaming engine's rule), and where the rows are segments (segmented) by the larger of it and
    `segment_time`. Each misses a kind of error. The lag sum stops at the first small autocorrelation,
    so a weak error that lasts a whole segment is not counted (encoder-grade starts on arm2's IMU: the
    gyro's lag sum 1, its batch means 3, and its bias 4.5 sds off with the lag sum alone). The batch
    means are exact for a bias (its score weighs every step alike) but not where the score's weight
    grows along the segment as a start's error does (a mass, a scale): on arm2's IMU over 20 seeds the
    batch means alone (positions 25, gyro 28) covered 0.82 of the truths, the untapered lag sum
    (positions 45, gyro 50) 0.91."""
    columns = np.asarray(column_mask(model, rec))
    lag_sum = lambda c: autocorrelation_time(residuals[..., c], columns[..., c.start])  # noqa: E731
    kappa = (lambda c: max(lag_sum(c), segment_time(residuals[..., c], columns[..., c]))) if segmented else lag_sum
    groups = [slice(0, model.robot.nq)] + sensor_columns(model)
    return np.concatenate([np.full(c.stop - c.start, kappa(c)) for c in groups])


@jax.jit
def _targets_along(model: TwinModel, rec: Recordings, z, noise, i, values) -> jnp.ndarray:
    """The untempered log targets (K,) at z (P,) with its i-th coordinate set to each of values (K,)
    (unconstrained), the noise scales (unconstrained, fixed) appended."""
    return jax.vmap(lambda v: log_target(model, rec, 1.0, jnp.concatenate([z.at[i].set(v), noise])))(values)


def delay_grid(model: TwinModel, i: int) -> np.ndarray:
    """The starts (K,) s of the i-th parameter, a delay: every 1 / `DELAY_STARTS_PER_STEP` of a step of dt
    over its prior's central 99 %."""
    low, high = (float(model.priors[i].icdf(q)) for q in (0.005, 0.995))
    return np.linspace(low, high, int(np.ceil((high - low) / model.robot.dt * DELAY_STARTS_PER_STEP)) + 1)


def delay_starts(model: TwinModel, rec: Recordings, z, noise) -> jnp.ndarray:
    """z (P,) with each estimated delay (a sensor's `delay_s`, the commands' `latency_s`) moved to the best
    of its current value, its mirror image across the nearest multiple of dt and its `delay_grid`, one
    delay after another, the other parameters held. A delayed signal is interpolated linearly between
    steps of dt, so the target is smooth in the delay only within each step: at every multiple of dt
    its slope jumps, and where the signal is rough (a torque sensor behind a PD loop on noisy states)
    each step near the truth holds its own optimum, the one beside the truth's just across the boundary.
    Newton stays within the step it starts in (from the prior mean, the fixed humanoid's knee torque
    sensor ended in a wrong step in 7 of 20 seeds; from the grid's best, 3 seeds ended just across a
    boundary from the truth), so the grid picks the step, and the mirror image of a mode lands in the
    neighbouring step as near its boundary as the mode is."""
    dt = model.robot.dt
    for i, name in enumerate(model.param_names):
        if is_delay(name):
            transform, grid = model.transforms[i], delay_grid(model, i)
            now = float(transform(z[i]))
            mirror = float(np.clip(2 * dt * np.round(now / dt) - now, grid[0], grid[-1]))
            values = jnp.append(transform.inv(jnp.asarray(np.r_[grid, mirror])), z[i])
            z = z.at[i].set(values[int(jnp.argmax(_targets_along(model, rec, z, noise, i, values)))])
    return z


@partial(jax.jit, static_argnames="steps")
def _adam(model: TwinModel, rec: Recordings, z, noise, learning_rate, steps: int):
    """`steps` Adam steps (under `lax.scan`) on the untempered target from z (P,), the noise scales
    (unconstrained, fixed) appended."""
    opt = optax.adam(learning_rate)
    grad = jax.grad(lambda x: -log_target(model, rec, 1.0, jnp.concatenate([x, noise])))

    def step(carry, _):
        x, state = carry
        update, state = opt.update(grad(x), state)
        return (optax.apply_updates(x, update), state), None

    (z, _), _ = jax.lax.scan(step, (z, opt.init(z)), length=steps)
    return z


@partial(jax.jit, static_argnames="max_iter")
def _newton(model: TwinModel, rec: Recordings, x, noise, sd, temper, tol, max_iter: int) -> tuple[Laplace, tuple]:
    """The tempered target's mode and Laplace fit by `laplace.newton_mode` from x (`with_starts`), the
    Gauss–Newton curvature at each iterate (`value_grad_curvature`), and the predictions' Jacobians in the
    parameters and the start offsets at the last iterate linearised; the noise scales (unconstrained) stay
    fixed. With latent starts a step that gains less than tol also stops it: through contacts (the floating
    humanoid) the curvature over the starts stays a poor model and the steps crawl, 0.003 nats in five of
    17 s each, while the decrement stays above tol."""
    p, r = len(model.param_names), 0 if sd is None else sd.shape[0]
    shape = rec.observed().shape
    jac0 = (jnp.zeros((*shape, p), x.dtype), jnp.zeros((*shape, r), x.dtype))
    return newton_mode(lambda v: value_grad_curvature(model, rec, temper, noise, v, sd),
                       lambda _, v: joint_target(model, rec, temper, noise, sd, v), x, jac0, max_iter, tol,
                       0.0 if sd is None else tol)


def joint_jacobian(jy: np.ndarray, je: np.ndarray) -> np.ndarray:
    """The Jacobian (R, T, C, P + R·r) of the predictions in x (`with_starts`) from the parameters' one
    jy (R, T, C, P) and the start offsets' je (R, T, C, r), each row's in its own block."""
    rows, r = je.shape[0], je.shape[-1]
    blocks = np.einsum("stci,su->stcui", je, np.eye(rows)).reshape(*je.shape[:3], rows * r)
    return np.concatenate([jy, blocks], axis=-1)


def time_folds(mask: np.ndarray, by_rows: bool, folds: int = FOLDS) -> np.ndarray:
    """Fold of each step (R, T): 0..folds−1, −1 where mask (R, T) is 0. by_rows: the rows (segments, in
    time order) in `folds` contiguous runs; else each row's real steps in `folds` contiguous blocks,
    the k-th tenth of every recording in fold k."""
    m = np.asarray(mask) > 0
    if by_rows:
        fold = np.zeros(m.shape, int)
        for k, rows in enumerate(np.array_split(np.arange(m.shape[0]), min(folds, m.shape[0]))):
            fold[rows] = k
    else:
        steps = np.cumsum(m, axis=1) - 1                                      # index among real steps
        fold = steps * folds // np.maximum(m.sum(axis=1, keepdims=True), 1)
    return np.where(m, fold, -1)


def held_out_residuals(residuals: np.ndarray, jac: np.ndarray, fold: np.ndarray, precision: np.ndarray,
                       weights: np.ndarray) -> np.ndarray:
    """Approximate cross-validated residuals (R, T, C): each fold's residuals as predicted by the mode
    refitted without it; 0 where fold is −1.

    residuals r (R, T, C) at the mode (measured − predicted) in C observed columns; jac J (R, T, C, P)
    of the predictions; fold (R, T) of each step (`time_folds`); precision H (P, P) of the Laplace fit,
    the prior's curvature plus Σ JᵀWJ; weights W (C,) per column, 1 / (κ s_j²). Without fold f the mode moves by
    one Newton step, Δ = −(H − J_fᵀWJ_f)⁻¹ J_fᵀW r_f, and the fold's residuals become r_f − J_f Δ
    (exact for predictions linear in the parameters, as with weighted least squares)."""
    r, J = np.asarray(residuals), np.asarray(jac)
    out = np.zeros_like(r)
    for f in range(int(fold.max()) + 1):
        at = fold == f
        grad = np.einsum("mjp,mj,j->p", J[at], r[at], weights)
        share = np.einsum("mjp,mjq,j->pq", J[at], J[at], weights)
        step = -np.linalg.solve(precision - share, grad)
        out[at] = r[at] - J[at] @ step
    return out


def predictive_variance(jac: np.ndarray, chol: np.ndarray, noise_sd: float) -> np.ndarray:
    """The variance (R, T, nq) rad² a prediction carries besides model error, linearised at the mode:
    parameters, diag(J Σ Jᵀ) with J (R, T, nq, P) and Σ = chol cholᵀ (P, P), plus the sensor noise's
    noise_sd² (rad; the scale, whatever the noise's law)."""
    return np.sum((np.asarray(jac) @ np.asarray(chol)) ** 2, axis=-1) + noise_sd ** 2


def fit(model: TwinModel, rec: Recordings, fold: np.ndarray, segmented: bool, adam_steps: int = 50,
        learning_rate: float = 0.05, newton_steps: int = MAX_ITER, tol: float = 1e-3,
        latent_starts: bool | None = None) -> WholeLogFit:
    """The tempered whole-recording posterior's mode and Laplace covariance (see the module docstring),
    κ measured at the mode (Newton again from the mode while any column's κ moves by more than
    `TEMPER_RTOL` or a delay's best start there is not the mode's, at most `PASSES` searches; a later
    search that finds no mode leaves the earlier one's fit, and only a first that finds none is
    refused), and the residuals cross-validated over fold (R, T) (`time_folds`); segmented: rec's rows
    are segments (`segments`), not whole recordings (`column_tempers`); latent_starts: each segment's start
    state latent (`with_starts`), estimated with the parameters and marginalised in their covariance (the
    module docstring), or taken as measured (False); None: as the config's `inference.start_search` says."""
    p, nq = len(model.param_names), model.robot.nq
    noise = jnp.stack([t.inv(model.cfg.observation.noise_scale[c])
                       for c, t in zip(model.channels + model.sensors, model.transforms[p:])])
    full = lambda y: jnp.concatenate([y, noise])  # noqa: E731
    latent = segmented and (model.cfg.inference.start_search if latent_starts is None else latent_starts)
    sd = jnp.sqrt(model.start_variance(model.cfg.observation.noise_scale)) if latent else None
    r = 0 if sd is None else sd.shape[0]
    y = jnp.stack([t.inv(d.mean) for d, t in zip(model.priors[:p], model.transforms[:p])])
    if adam_steps:                    # none: not even traced (through contacts, 23 s for nothing)
        y = _adam(model, rec, y, noise, learning_rate, steps=adam_steps)
    x = jnp.concatenate([delay_starts(model, rec, y, noise), jnp.zeros(rec.q0.shape[0] * r)])
    columns = np.asarray(column_mask(model, rec))
    started = lambda x: with_starts(model, rec, x, sd)  # noqa: E731
    residuals = lambda x: np.asarray(rec.observed() - open_loop(model, full(x[:p]), started(x)[1])) * columns  # noqa
    # Adam's gradients, each open-loop residual and each delay start are one evaluation, a curvature P + r
    starts = sum(len(delay_grid(model, i)) + 2 for i, n in enumerate(model.param_names) if is_delay(n))
    temper, iterations, trials, evaluations = column_tempers(model, rec, residuals(x), segmented), 0, 0, 1 + starts
    found = None                      # the last search that reached a mode: (lap, jac, resid, temper, pass)
    for passes in range(1, PASSES + 1):
        lap, jac = _newton(model, rec, x, noise, sd, jnp.asarray(temper), tol, max_iter=newton_steps)
        at = residuals(lap.mean)
        iterations, trials, evaluations = iterations + int(lap.iterations), trials + int(lap.trials), evaluations + 1
        if int(lap.iterations) >= newton_steps or not np.isfinite(np.asarray(lap.chol)).all():
            break                     # a later search that fails leaves the earlier mode standing
        found = (lap, jac, at, temper, passes)
        at_mode = column_tempers(model, rec, at, segmented)
        restart = lap.mean.at[:p].set(delay_starts(model, started(lap.mean)[1], lap.mean[:p], noise))
        evaluations += starts
        if np.allclose(at_mode, temper, rtol=TEMPER_RTOL, atol=0.0) and bool(jnp.all(restart == lap.mean)):
            break
        x, temper = restart, at_mode
    converged = found is not None
    lap, (jy, je), resid, temper, passes = found if converged else (lap, jac, at, temper, passes)
    joint = np.asarray(lap.chol, np.float64)
    c = np.linalg.cholesky((joint @ joint.T)[:p, :p])          # the parameters' marginal: starts integrated out
    chol = jnp.zeros((model.dim, model.dim)).at[:p, :p].set(c)
    held_out = variance = None
    if converged:
        weights = 1.0 / (temper * np.sum(resid ** 2, axis=(0, 1)) / columns.sum(axis=(0, 1)))
        held_out = held_out_residuals(resid, joint_jacobian(np.asarray(jy), np.asarray(je)), fold,
                                      np.linalg.inv(joint @ joint.T), weights)
        variance = predictive_variance(np.asarray(jy)[..., :nq, :], c, model.cfg.observation.noise_scale["q"])
    offsets = None if sd is None else np.asarray(lap.mean[p:].reshape(-1, r) * sd)
    return WholeLogFit(full(lap.mean[:p]), chol, offsets, temper, resid, held_out, variance, adam_steps + iterations,
                       adam_steps + evaluations + iterations * (p + r) + trials, passes, converged)


def _positive_chol(chol: jnp.ndarray) -> jnp.ndarray:
    """The Laplace Cholesky factor with the unestimated noise scales' zero rows given a tiny scale, so that
    it is a valid window prior for streaming on (their values stay put)."""
    d = jnp.diag(chol)
    return chol + jnp.diag(jnp.where(d > 0, 0.0, 1e-6))


def particles(result: WholeLogFit, key, n: int) -> Particles:
    """n equally weighted draws (n, D) of the Laplace approximation N(mode, chol cholᵀ)."""
    eps = jax.random.normal(key, (n, result.mode.shape[0]))
    return Particles(result.mode + eps @ result.chol.T, jnp.full(n, -jnp.log(n)))


def fit_twin(twin, trajectories, adam_steps: int = 50, newton_steps: int = MAX_ITER,
             horizon_s: float | None = None, bucket: int | None = None, latent_starts: bool | None = None) -> dict:
    """Fit `twin` (a `Twin`) on whole recordings (`Trajectory`s; padded as `stack` pads with `bucket`), or
    on their segments of `horizon_s` (`segments`; their starts latent or measured as `fit` says of
    latent_starts): its posterior becomes the Laplace approximation as
    `cfg.inference.particles` particles (the next version), and its model error is learned from its
    cross-validated residuals above the predictive's own variance (`held_out_residuals`,
    `predictive_variance`, `inference.discrepancy`: from zero at each recording's or segment's start);
    the rest of its state (recorded windows, κ, drift baseline, key) stays. Returns the fit's cost and
    figures (JSON-ready); `refused` (reason, detail) where Newton found no mode: then the twin keeps its
    posterior, flagged stale, as a refused batch fit does."""
    start = time.perf_counter()
    rec = (stack(twin.model, trajectories, bucket) if horizon_s is None
           else segments(twin.model, trajectories, horizon_s))
    fold = time_folds(rec.mask, by_rows=horizon_s is not None)
    res = fit(twin.model, rec, fold, horizon_s is not None, adam_steps=adam_steps, newton_steps=newton_steps,
              latent_starts=latent_starts)
    steps = int(np.sum(np.asarray(rec.mask)))
    cost = {"engine": "whole-log", "method": f"whole-log Laplace ({'Adam + ' if adam_steps else ''}damped Newton)",
            "recordings": len(trajectories), "segments": None if horizon_s is None else len(rec.q0),
            "horizon_s": horizon_s, "wall_time_s": time.perf_counter() - start,
            "optimiser_steps": res.steps, "newton_passes": res.passes, "simulator_evaluations": res.evaluations,
            "simulated_steps": res.evaluations * steps,
            "start_states": "measured" if res.starts is None else "latent",
            "start_offsets_rms": None if res.starts is None else {
                "q": float(np.sqrt(np.mean(res.starts[:, :twin.model.robot.nq] ** 2))),
                "qd": float(np.sqrt(np.mean(res.starts[:, twin.model.robot.nq:] ** 2)))},
            "temper_autocorrelation_steps": float(res.temper[0]),
            "temper_readings_steps": {n: float(res.temper[c.start])
                                      for n, c in zip(twin.model.sensors, sensor_columns(twin.model))}}
    if not res.converged:
        refused = (REASONS[-1], f"{newton_steps} Newton steps after {adam_steps} Adam steps "
                                "(more --adam-steps start it nearer)")
        twin.refuse(*refused)
        return {**cost, "refused": refused}
    twin.restore(particles(res, jax.random.PRNGKey(twin.cfg.inference.seed), twin.cfg.inference.particles),
                 int(twin.state.version) + 1)
    twin.state = twin.state._replace(prior=GaussianPrior(res.mode, _positive_chol(res.chol), jnp.asarray(False)))
    nq = twin.model.robot.nq
    twin.model_error = fit_model_error(res.held_out[..., :nq], rec.mask, rec.settings, twin.model.robot.dt,
                                       res.variance)
    scored = np.sum(np.asarray(column_mask(twin.model, rec)), axis=(0, 1))
    rms = lambda r: np.sqrt(np.sum(r ** 2, axis=(0, 1)) / scored).tolist()  # noqa: E731
    return {**cost, "wall_time_s": time.perf_counter() - start, "refused": None,
            "fit_mae": float(np.sum(np.abs(res.residuals[..., :nq])) / steps / nq),
            "fit_rms_rad": rms(res.residuals)[:nq], "cross_validated_rms_rad": rms(res.held_out)[:nq],
            "fit_rms_readings": rms(res.residuals)[nq:], "cross_validated_rms_readings": rms(res.held_out)[nq:],
            "model_error": twin.model_error.as_dict(), "model_error_folds": int(fold.max()) + 1}
