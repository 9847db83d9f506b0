"""Each segment's start state estimated at its mode (`laplace.find_starts`): the blocked Newton search it
runs on, the start log density it climbs, and what it recovers on emulated arm2 telemetry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gammaln

from twin_bayes.inference import laplace
from twin_bayes.sim.emulator import emulate

from .conftest import EMULATOR_NOISE, TRUTH


def _quartic(m, p):
    """A log target with its mode at m (*B, D): −½ (x − m)ᵀ P (x − m) − 0.1 Σ (x − m)⁴, P (*B, D, D)."""
    def value(x):
        d = x - m
        return -0.5 * jnp.einsum("...i,...ij,...j->...", d, p, d) - 0.1 * jnp.sum(d ** 4, -1)

    def curvature_at(x):
        flat = lambda y: jnp.sum(value(y))  # noqa: E731  (the problems are independent: blocks of one Hessian)
        n, d = x.reshape(-1, x.shape[-1]).shape
        h = jax.hessian(flat)(x).reshape(n, d, n, d)[jnp.arange(n), :, jnp.arange(n), :].reshape(x.shape + (d,))
        return value(x), jax.grad(flat)(x), h, None

    return curvature_at, lambda _, x: value(x)


def test_newton_mode_solves_independent_problems_together_as_each_alone():
    """Three problems in one search reach the modes each reaches alone, to 1e-10, each within 1e-6 of its
    own mode: a problem that stops early is not moved by the others' later iterations."""
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.normal(size=(3, 2)))
    a = rng.normal(size=(3, 2, 2))
    p = jnp.asarray(a @ np.swapaxes(a, -1, -2) + np.array([0.1, 1.0, 10.0])[:, None, None] * np.eye(2))
    z0 = jnp.asarray(m + 3.0 * rng.normal(size=(3, 2)))
    together, _ = laplace.newton_mode(*_quartic(m, p), z0, None, 100, 1e-12)
    np.testing.assert_allclose(together.mean, m, atol=1e-6)
    for b in range(3):
        alone, _ = laplace.newton_mode(*_quartic(m[b], p[b]), z0[b], None, 100, 1e-12)
        np.testing.assert_allclose(together.mean[b], alone.mean, atol=1e-10)
        np.testing.assert_allclose(together.chol[b], alone.chol, atol=1e-8)


def _noisy_window(model, seed: int):
    """One window of noise-free arm2 telemetry under TRUTH, and the same with the emulator's sensor noise."""
    clean = emulate(model.robot, TRUTH, (model.window_samples - 1) * model.robot.dt, seed=seed,
                    noise={"q": 0.0, "qd": 0.0})
    rng = np.random.default_rng(seed)
    q = clean.q + rng.normal(0.0, EMULATOR_NOISE["q"], clean.q.shape)
    qd = clean.qd + rng.normal(0.0, EMULATOR_NOISE["qd"], clean.qd.shape)
    return clean, model.window(q, qd, clean.ctrl)


def _true_z(model):
    values = [TRUTH[n] for n in model.param_names] + [EMULATOR_NOISE[c] for c in model.channels]
    return model.unconstrain(jnp.asarray(values))


def _offset_window(model):
    """`_noisy_window` (seed 3) linearised about a start offset of the size of the noise (S, nq + nv)."""
    _, w = _noisy_window(model, 3)
    r = model.robot
    e = jnp.asarray(np.random.default_rng(1).normal(size=w.start.shape)) * jnp.concatenate(
        [jnp.full(r.nq, 0.002), jnp.full(r.nv, 0.02)])
    return w._replace(start=e)


def test_the_start_log_density_is_the_joint_density_and_its_step_is_first_order_exact(model):
    """At a start offset e the density is log t_ν(y; f(e), D) + log N(e; 0, Σ0) (arm2's multivariate Student-t
    noise, by hand); moved by
    a step along the start-state sensitivities (a tenth of the noise sd) it matches the simulated density to
    second order: halving the step quarters the error (0.2-0.3 in every segment)."""
    z, w = _true_z(model), _offset_window(model)
    r, e = model.robot, w.start
    pred, _, state_jac = jax.jit(model.linearised_predictions)(z, w)
    density = jax.jit(model.start_log_density)
    value = density(z, *pred, w)
    y = np.concatenate([np.asarray(w.q), np.asarray(w.qd)], -1)
    s, L = value.shape[0], model.segment_steps
    f = np.concatenate([np.asarray(pred[0]), np.asarray(pred[1])], -1)             # (S, L, nq + nv)
    target = np.stack([y[k * L + 1: (k + 1) * L + 1] for k in range(s)])
    sd = np.concatenate([np.full(r.nq, 0.002), np.full(r.nv, 0.02)])
    nu, p = float(model.df), target[0].size
    delta = np.sum(((target - f) / sd) ** 2, (1, 2))
    by_hand = (gammaln((nu + p) / 2) - gammaln(nu / 2) - 0.5 * p * np.log(nu * np.pi) - L * np.sum(np.log(sd))
               - 0.5 * (nu + p) * np.log1p(delta / nu)
               - 0.5 * np.sum((np.asarray(e) / sd) ** 2 + np.log(2 * np.pi * sd ** 2), -1))
    np.testing.assert_allclose(value, by_hand, rtol=1e-10)
    lin = w._replace(state_jac=state_jac)
    direction = 0.1 * jnp.asarray(np.random.default_rng(2).normal(size=e.shape)) * jnp.asarray(sd)
    errors = []
    for h in (1.0, 0.5):
        moved = w._replace(start=e + h * direction)
        exact = density(z, *jax.jit(model.segment_predictions)(z, moved), moved)
        errors.append(np.abs(np.asarray(density(z, *pred, lin, h * direction) - exact)))
    ratio = errors[1] / errors[0]
    assert np.all((ratio > 0.2) & (ratio < 0.3)), ratio


def test_start_curvature_blocks_are_the_full_hessian_blocks_of_the_linearised_start_density(model):
    """`start_curvature`'s per-segment value, gradient and Hessian blocks (r broadcast tangents) equal the
    full (S·r)² Hessian of the summed linearised start density (its diagonal blocks, 1e-10), and the
    off-diagonal blocks it skips are zero: segments are independent."""
    z, w = _true_z(model), _offset_window(model)
    e = w.start
    value, grad, hess, _ = jax.jit(lambda z, w: laplace.start_curvature(model, z, w))(
        z, jax.tree.map(lambda x: x[None], w))
    pred, _, state_jac = jax.jit(model.linearised_predictions)(z, w)
    lin = w._replace(state_jac=state_jac)
    total = jax.jit(lambda step: jnp.sum(model.start_log_density(z, *pred, lin, step)))
    step = jnp.zeros_like(e)
    full = np.asarray(jax.hessian(total)(step))                                          # (S, r, S, r)
    n = e.shape[0]
    blocks = full[np.arange(n), :, np.arange(n), :]
    np.testing.assert_allclose(value[0], model.start_log_density(z, *pred, lin), rtol=1e-12)
    np.testing.assert_allclose(grad[0], jax.grad(total)(step), rtol=1e-10, atol=1e-10 * np.abs(grad).max())
    np.testing.assert_allclose(hess[0], blocks, rtol=1e-10, atol=1e-10 * np.abs(blocks).max())
    off = full.copy()
    off[np.arange(n), :, np.arange(n), :] = 0.0
    assert np.abs(off).max() == 0.0


def test_the_start_search_moves_each_start_closer_to_the_true_state_than_its_measurement(model):
    """At the true parameters, the searched start states (measured + `Window.start`) of every segment are
    closer to the noise-free states than the measurements: RMS error under half the sensor noise, in
    positions and in velocities, on two data seeds; the search climbs the start log density."""
    z = _true_z(model)
    find = jax.jit(lambda z, w: laplace.find_starts(model, z, w))
    r, L = model.robot, model.segment_steps
    for seed in (3, 4):
        clean, w = _noisy_window(model, seed)
        batch = jax.tree.map(lambda x: x[None], w)
        found, iterations = find(z, batch)
        rows = np.arange(np.asarray(w.start).shape[0]) * L
        measured = np.concatenate([np.asarray(w.q)[rows], np.asarray(w.qd)[rows]], -1)
        true = np.concatenate([clean.q[rows], clean.qd[rows]], -1)
        searched = measured + np.asarray(found.start[0])
        for cols, sd in ((slice(0, r.nq), EMULATOR_NOISE["q"]), (slice(r.nq, None), EMULATOR_NOISE["qd"])):
            rms_measured = np.sqrt(np.mean((measured - true)[:, cols] ** 2))
            rms_searched = np.sqrt(np.mean((searched - true)[:, cols] ** 2))
            assert rms_searched < 0.5 * sd and rms_searched < 0.5 * rms_measured, (seed, rms_measured, rms_searched)
        density = jax.jit(lambda z, w: model.start_log_density(z, *model.segment_predictions(z, w), w))
        assert np.all(np.asarray(density(z, jax.tree.map(lambda x: x[0], found)))
                      > np.asarray(density(z, w))), seed
        assert 0 < int(iterations) <= laplace.START_ITER


@pytest.mark.slow
def test_on_the_walking_humanoid_searched_starts_bring_the_segment_misfit_to_the_sensor_noise():
    """The floating humanoid walking (the walking study's pretrained walker, 0.3 s from a standing start) at
    its true parameters: each 30 ms segment replayed by the twin from its measured start misses the measured
    velocities by more than twice their noise (2 mm of root height moves the feet's contact forces); from its
    searched start it misses by about the noise itself (0.02 rad/s)."""
    from pathlib import Path

    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel
    from twin_bayes.policy import walk
    model = TwinModel(load_config("humanoid"))
    robot, L = model.robot, model.segment_steps
    truth = {"body_mass:torso": 10.5, "dof_damping:right_hip_y": 6.0, "dof_damping:left_hip_y": 4.5,
             "geom_friction:right_foot": 0.8, "geom_friction:left_foot": 0.9}
    walker = walk.load(Path(__file__).parents[2] / "experiments/results/humanoid_walk/pretrained.json", "humanoid")
    steps = model.window_samples - 1
    q, qd, ctrl = walk.telemetry(robot, truth, walker, steps * robot.dt + 1e-9, 1, (0.002, 0.02))
    w = model.window(q[:steps + 1], qd[:steps + 1], ctrl[:steps + 1])
    z = model.unconstrain(jnp.asarray([truth[n] for n in model.param_names] + [0.002, 0.02]))
    found, _ = jax.jit(lambda z, w: laplace.find_starts(model, z, w))(z, jax.tree.map(lambda x: x[None], w))
    predict = jax.jit(model.segment_predictions)
    target = np.asarray(w.qd)[1:1 + (steps // L) * L].reshape(steps // L, L, -1)
    misfit = [np.sqrt(np.mean((np.asarray(predict(z, v)[1]) - target) ** 2))
              for v in (w, jax.tree.map(lambda x: x[0], found))]
    assert misfit[0] > 2 * 0.02 and misfit[1] < 1.3 * 0.02, misfit     # measured: 0.055 and 0.022
