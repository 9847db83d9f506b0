"""The whole-log engine (`inference.whole_log`) on emulated arm2 telemetry: its Gauss–Newton
curvature against the exact derivatives, its horizon segments against the evaluation's cut, and a
fit restarted every 0.1 s that recovers hidden parameters within its intervals."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin_bayes import Twin
from twin_bayes.config import load_config
from twin_bayes.diagnostics import shooting
from twin_bayes.inference import whole_log
from twin_bayes.sim.emulator import emulate

TRUTH = {"body_mass:upper_arm": 1.25, "body_mass:forearm": 0.5, "dof_damping:shoulder": 0.08,
         "dof_damping:elbow": 0.02, "dof_armature:shoulder": 0.012, "dof_armature:elbow": 0.004}
NOISE = {"q": 1e-4, "qd": 2e-3}   # encoder-grade positions, a filtered velocity estimate (the Panda log's kind)


@pytest.fixture(scope="module")
def twin_and_data():
    twin = Twin(load_config("arm2"))
    return twin, [emulate(twin.model.robot, TRUTH, 2.0, seed=s, noise=NOISE) for s in (3, 4)]


def test_segments_are_the_cut_of_the_multiple_shooting_evaluation(twin_and_data):
    twin, recs = twin_and_data
    rec = whole_log.segments(twin.model, recs, 0.1)
    q0, qd0, u, q = shooting.cut(recs[1], 50)
    assert rec.q.shape == (40, 50, 2) and rec.commands.shape == (40, 50, 2) and float(jnp.min(rec.mask)) == 1.0
    np.testing.assert_array_equal(rec.q0[20:], q0)
    np.testing.assert_array_equal(rec.qd0[20:], qd0)
    np.testing.assert_array_equal(rec.commands[20:], u)
    np.testing.assert_array_equal(rec.q[20:], q)
    np.testing.assert_array_equal(rec.q0[1], recs[0].q[50])            # restarted at the measured state
    with pytest.raises(ValueError, match="whole number"):
        whole_log.segments(twin.model, recs, 0.1003)


def test_curvature_has_the_targets_value_and_gradient_and_its_hessian_but_for_the_left_out_terms(twin_and_data):
    """Value and gradient are exact, at the truth and far from a mode (the prior's centre), and the
    curvature is negative definite at both. It holds each joint's sd at its profiled value: the exact
    Hessian is the curvature plus the sds' own term (n / 2κ) Σ_j ∇S_j ∇S_jᵀ / S_j² (S_j the sum of
    squared residuals of joint j) plus the simulator's second derivatives weighted by the residuals,
    which at the truth (residuals are sensor noise) leave it within 2 % of the exact Hessian."""
    twin, recs = twin_and_data
    m = twin.model
    rec = whole_log.segments(m, recs, 0.1)
    p, kappa, n = len(m.param_names), 3.0, float(jnp.sum(rec.mask))
    noise_values = [m.cfg.observation.noise_scale[c] for c in m.channels]
    truth = m.unconstrain(jnp.asarray([TRUTH[n] for n in m.param_names] + noise_values))
    centre = m.unconstrain(jnp.asarray([m.robot.nominal()[n] for n in m.param_names] + noise_values))
    noise = truth[p:]
    target = lambda y: whole_log.log_target(m, rec, kappa, jnp.concatenate([y, noise]))  # noqa: E731
    curvature = jax.jit(lambda y: whole_log.value_grad_curvature(m, rec, kappa, noise, y))
    g = jax.jit(jax.grad(target))
    for x in (truth[:p], centre[:p]):
        value, grad, hess, jac = curvature(x)
        assert float(value) == pytest.approx(float(target(x)), rel=1e-12)
        np.testing.assert_allclose(grad, g(x), rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(grad))))
        assert np.all(np.linalg.eigvalsh(-np.asarray(hess)) > 0)      # a maximum's curvature
    x = truth[:p]
    h = 1e-5 * (1.0 + jnp.abs(x))                                      # the exact Hessian: central
    exact = jnp.stack([(g(x + h[i] * e) - g(x - h[i] * e)) / (2 * h[i]) for i, e in enumerate(jnp.eye(p))])
    sums = lambda y: jnp.sum((rec.q - whole_log.open_loop(m, jnp.concatenate([y, noise]), rec)) ** 2,  # noqa: E731
                             axis=(0, 1))
    s, ds = sums(x), jax.jacfwd(sums)(x)                               # S_j (nq,), ∇S_j (nq, P)
    sds_term = n / (2 * kappa) * jnp.einsum("ja,jb->ab", ds / s[:, None], ds / s[:, None])
    rel = lambda a: float(jnp.linalg.norm(a - exact) / jnp.linalg.norm(exact))  # noqa: E731
    assert rel(curvature(x)[2] + sds_term) < 0.02 < rel(curvature(x)[2])


def test_a_fit_restarted_every_tenth_of_a_second_covers_the_hidden_parameters(twin_and_data):
    twin, recs = twin_and_data
    info = whole_log.fit_twin(twin, recs, adam_steps=0, horizon_s=0.1)
    assert info["refused"] is None
    assert info["segments"] == 40 and info["horizon_s"] == 0.1
    summary = twin.posterior.summary()
    prior = load_config("arm2").parameters
    for name, truth in TRUTH.items():
        s = summary[name]
        assert abs(s["mean"] - truth) < 3 * s["sd"], (name, truth, s)
        assert s["sd"] < 0.5 * prior[name].scale * truth, (name, s)    # far narrower than the prior (log-sd)
    inside = [summary[n]["q05"] <= t <= summary[n]["q95"] for n, t in TRUTH.items()]
    assert sum(inside) >= 5, inside
    assert info["model_error"]["sd_rad"][0] < 0.01                     # the model is exact: little model error
    assert info["model_error_folds"] == whole_log.FOLDS                 # 40 segments in 10 runs of 4


def test_with_latent_starts_the_curvature_has_the_joint_targets_value_and_gradient(twin_and_data):
    """Each segment's start latent (`with_starts`: offsets in units of the measured start's noise): value and
    gradient are those of the joint target by autodiff through the simulator from the moved starts, the
    curvature is negative definite, and a start offset's block couples only its own segment."""
    twin, recs = twin_and_data
    m = twin.model
    rec = whole_log.segments(m, recs, 0.1)
    p, r, rows = len(m.param_names), m.robot.nq + m.robot.nv, rec.q0.shape[0]
    noise = m.unconstrain(jnp.asarray([TRUTH[n] for n in m.param_names] + [NOISE[c] for c in m.channels]))[p:]
    sd = jnp.sqrt(m.start_variance(NOISE))
    x = jnp.concatenate([m.unconstrain(jnp.asarray([TRUTH[n] for n in m.param_names] + list(NOISE.values())))[:p],
                         jax.random.normal(jax.random.PRNGKey(0), (rows * r,))])
    value, grad, hess, (jy, je) = jax.jit(lambda x: whole_log.value_grad_curvature(m, rec, 3.0, noise, x, sd))(x)
    target = lambda x: whole_log.joint_target(m, rec, 3.0, noise, sd, x)  # noqa: E731
    assert float(value) == pytest.approx(float(target(x)), rel=1e-12)
    exact = jax.jit(jax.grad(target))(x)
    np.testing.assert_allclose(grad, exact, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(exact))))
    assert np.all(np.linalg.eigvalsh(-np.asarray(hess)) > 0)
    assert jy.shape == (rows, 50, 2, p) and je.shape == (rows, 50, 2, r)
    blocks = np.asarray(hess[p:, p:]).reshape(rows, r, rows, r)
    assert np.all(blocks[0, :, 1:] == 0) and np.any(blocks[0, :, 0] != 0)


def test_latent_starts_recover_the_true_start_states_and_keep_the_parameters_honest(tmp_path):
    """arm2 whose velocities are measured as noisily as the humanoid's (0.05 rad/s) beside encoder-grade
    positions: a segment from its measured start drifts by up to 5 mrad in 0.1 s, fifty times the position
    noise. With its starts latent (`inference.start_search`) the fit puts them nearer the true states than
    the measurements, its residuals fall to the position noise and every hidden parameter lies within 3 sds;
    from the measured starts the same fit's residuals are model error many times the noise."""
    from .conftest import write_arm2_config
    noise = {"q": 1e-4, "qd": 0.05}
    twins = {search: Twin(load_config(write_arm2_config(tmp_path, f"arm2_starts_{search}", noise,
                                                        start_search=search))) for search in (True, False)}
    m, rng = twins[True].model, np.random.default_rng(7)
    clean = [emulate(m.robot, TRUTH, 2.0, seed=s, noise={"q": 0.0, "qd": 0.0}) for s in (3, 4)]
    recs = [dataclasses.replace(c, q=c.q + rng.normal(0, noise["q"], c.q.shape),
                                qd=c.qd + rng.normal(0, noise["qd"], c.qd.shape)) for c in clean]
    rec, true_starts = whole_log.segments(m, recs, 0.1), whole_log.segments(m, clean, 0.1)
    latent, measured = (whole_log.fit(twins[s].model, rec, whole_log.time_folds(rec.mask, True), True, adam_steps=0)
                        for s in (True, False))
    nq = m.robot.nq
    error = lambda e: float(np.sqrt(np.mean((np.asarray(rec.qd0 - true_starts.qd0) + e) ** 2)))  # noqa: E731
    assert error(latent.starts[:, nq:]) < 0.3 * error(0.0), (error(latent.starts[:, nq:]), error(0.0))
    rms = lambda res: float(np.sqrt(np.mean(res.residuals[..., :nq] ** 2)))  # noqa: E731
    assert rms(latent) < 1.5 * noise["q"] < 5 * 1.5 * noise["q"] < rms(measured), (rms(latent), rms(measured))
    truth = m.unconstrain(jnp.asarray([TRUTH[n] for n in m.param_names] + list(noise.values())))
    sd = np.sqrt(np.diag(np.asarray(latent.chol @ latent.chol.T)))[:len(TRUTH)]
    z = (np.asarray(latent.mode - truth)[:len(TRUTH)]) / sd
    assert np.all(np.abs(z) < 3), z


def test_held_out_residuals_are_those_of_the_fit_without_each_fold_for_a_linear_model():
    """Weighted least squares under a Gaussian prior (predictions J β, linear): one Newton step is the
    exact refit, so each fold's held-out residuals are those of the mode fitted on the other folds,
    for folds of rows (segments) and of each row's steps (whole recordings)."""
    rng = np.random.default_rng(0)
    R, T, nq, P = 12, 20, 2, 3
    J = rng.standard_normal((R, T, nq, P))
    y = J @ rng.standard_normal(P) + 0.3 * rng.standard_normal((R, T, nq))
    mask = np.ones((R, T))
    mask[-1, 13:] = 0                                                   # a padded recording
    w, prior = np.array([2.0, 0.5]), np.diag([1.0, 2.0, 3.0])

    def mode(used):                                                     # used (R, T): the steps fitted
        j = J * used[..., None, None]
        h = prior + np.einsum("rtjp,rtjq,j->pq", j, j, w)
        return np.linalg.solve(h, np.einsum("rtjp,rtj,j->p", j, y * used[..., None], w)), h

    beta, precision = mode(mask)
    resid = (y - J @ beta) * mask[..., None]
    for by_rows, folds in ((True, 4), (False, 5)):
        fold = whole_log.time_folds(mask, by_rows, folds)
        assert set(np.unique(fold)) == {-1, *range(folds)} and np.all((fold == -1) == (mask == 0))
        held = whole_log.held_out_residuals(resid, J, fold, precision, w)
        for f in range(folds):
            without, _ = mode(mask * (fold != f))
            at = fold == f
            np.testing.assert_allclose(held[at], (y - J @ without)[at], rtol=1e-9, atol=1e-12)
        assert np.all(held[-1, 13:] == 0) and np.mean(held ** 2) > np.mean(resid ** 2)
    rows = whole_log.time_folds(mask, True, 4)
    assert [list(np.unique(rows[i])) for i in (0, 2, 3, 11)] == [[0], [0], [1], [-1, 3]]    # runs of 3 rows
    blocks = whole_log.time_folds(mask, False, 5)
    assert list(blocks[0, ::4]) == [0, 1, 2, 3, 4] and list(blocks[-1, :13]) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]


def test_the_model_error_of_an_exact_model_is_fitted_above_what_the_predictive_already_carries():
    """Weighted least squares that describes its data exactly (linear predictions J β, Gaussian noise σ):
    the cross-validated residuals hold the noise and the parameters' share, which the predictive carries
    already (`predictive_variance`: diag J Σ Jᵀ + σ², Σ the Laplace covariance), so the model error
    fitted above it is nearly nothing; fitted on the residuals alone it took the noise for model error
    and the bands counted it twice."""
    from twin_bayes.inference.discrepancy import fit_model_error
    rng = np.random.default_rng(1)
    R, T, P, sigma = 8, 200, 4, 0.05
    J = rng.standard_normal((R, T, 1, P)) * np.linspace(0.2, 1.0, T)[None, :, None, None]
    y = J @ rng.standard_normal(P) + sigma * rng.standard_normal((R, T, 1))
    mask, w = np.ones((R, T)), np.array([1 / sigma ** 2])
    precision = np.eye(P) + np.einsum("rtjp,rtjq,j->pq", J, J, w)
    beta = np.linalg.solve(precision, np.einsum("rtjp,rtj,j->p", J, y, w))
    cov = np.linalg.inv(precision)
    held = whole_log.held_out_residuals(y - J @ beta, J, whole_log.time_folds(mask, False), precision, w)
    variance = whole_log.predictive_variance(J, np.linalg.cholesky(cov), sigma)
    np.testing.assert_allclose(variance, np.einsum("rtjp,pq,rtjq->rtj", J, cov, J) + sigma ** 2, rtol=1e-12)
    settings = np.ones((R, 1))
    dt, t = 0.01, np.arange(1, T + 1)

    def added(me):        # the variance the model error adds to the bands, averaged over the recordings' steps
        return float(np.mean(me.sd[0] ** 2 * (1 - np.exp(-2 * t * dt / me.time_const_s))))
    above = fit_model_error(held, mask, settings, dt, variance)
    alone = fit_model_error(held, mask, settings, dt)
    assert added(alone) == pytest.approx(sigma ** 2, rel=0.15)
    assert added(above) < 0.1 * sigma ** 2, (above, alone)


def test_a_fit_whose_newton_steps_run_out_is_refused_and_the_posterior_kept(twin_and_data):
    twin, recs = twin_and_data
    fresh = Twin(twin.cfg, twin.model)
    before = np.asarray(fresh.particles.z)
    info = whole_log.fit_twin(fresh, recs, adam_steps=0, newton_steps=2, horizon_s=0.1)
    assert info["refused"][0] == "no mode found (the Newton steps ran out)"
    np.testing.assert_array_equal(np.asarray(fresh.particles.z), before)
    assert fresh.posterior.reason.startswith("no mode found") and bool(fresh.state.stale)


def test_fit_from_the_command_line_with_a_horizon_writes_the_posterior_the_engine_gives(twin_and_data, tmp_path,
                                                                                       capsys):
    import json

    from twin_bayes.cli import main
    from twin_bayes.data.npz import write_npz
    twin, recs = twin_and_data
    files = [tmp_path / f"run{i}.npz" for i in range(len(recs))]
    for f, r in zip(files, recs):
        write_npz(f, r)
    out = tmp_path / "fit"
    assert main(["fit", "--config", "arm2", "--engine", "whole-log", "--horizon", "0.1", "--adam-steps", "0",
                 "--data", *map(str, files), "--out", str(out), "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["segments"] == 40 and summary["info"]["refused"] is None
    direct = Twin(twin.cfg, twin.model)
    whole_log.fit_twin(direct, recs, adam_steps=0, horizon_s=0.1)
    for name in TRUTH:
        assert summary["parameters"][name]["mean"] == pytest.approx(direct.posterior.summary()[name]["mean"], rel=1e-6)
    capsys.readouterr()
    assert main(["fit", "--config", "arm2", "--engine", "svi", "--horizon", "0.1", "--data", str(files[0]),
                 "--out", str(tmp_path / "no")]) == 2
    assert "--horizon applies to --engine whole-log" in capsys.readouterr().err
