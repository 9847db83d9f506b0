"""Predictive bands of the streamed twin: shapes, order, and coverage of held-out telemetry."""
import numpy as np
import pytest

HORIZON = 50   # steps (0.1 s at 2 ms): one compiled predictive serves every test here
STRIDE = 50    # start a prediction every 0.1 s of the held-out second


@pytest.fixture(scope="module")
def twin(stream):
    return stream.twin


def test_band_shapes_and_order(twin, held_out):
    r = twin.model.robot
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    b = twin.predict(held_out.q[0], held_out.qd[0], held_out.ctrl[:HORIZON], quantiles=qs)
    assert b.quantiles == qs
    assert b.q.shape == (len(qs), HORIZON, r.nq) and b.qd.shape == (len(qs), HORIZON, r.nv)
    assert b.mean_q.shape == (HORIZON, r.nq) and b.mean_qd.shape == (HORIZON, r.nv)
    n = twin.cfg.inference.particles * 8
    assert b.samples_q.shape == (n, HORIZON, r.nq) and b.samples_qd.shape == (n, HORIZON, r.nv)
    for band in (b.q, b.qd):
        assert np.all(np.isfinite(band))
        assert np.all(np.diff(band, axis=0) >= 0)  # q05 <= q25 <= q50 <= q75 <= q95 everywhere
        assert np.all(band[-1] - band[0] > 0)      # noise makes every band strictly wide
    # the noise-free mean lies inside its own 90 % band
    assert np.all((b.q[0] <= b.mean_q) & (b.mean_q <= b.q[-1]))


def test_default_quantiles_and_settings_free_robot(twin, held_out):
    b = twin.predict(held_out.q[0], held_out.qd[0], held_out.ctrl[:HORIZON])
    assert b.quantiles == (0.05, 0.5, 0.95) and b.q.shape[0] == 3
    assert np.all(b.q[0] <= b.q[1]) and np.all(b.q[1] <= b.q[2])


def test_prediction_follows_the_robot(twin, held_out):
    """The median prediction tracks held-out motion far better than standing still does."""
    start = 100
    b = twin.predict(held_out.q[start], held_out.qd[start], held_out.ctrl[start:start + HORIZON])
    observed = held_out.q[start + 1: start + 1 + HORIZON]
    err = np.abs(b.q[1] - observed).max()
    still = np.abs(observed - held_out.q[start]).max()
    assert err < 0.02 and err < 0.5 * still, (err, still)


@pytest.fixture(scope="module")
def coverage(twin, held_out):
    """Share of held-out samples inside the 90 % band, predicting from measured start states."""
    covered_q, covered_qd = [], []
    for s in range(0, len(held_out.q) - HORIZON - 1, STRIDE):
        b = twin.predict(held_out.q[s], held_out.qd[s], held_out.ctrl[s:s + HORIZON])
        y, yd = held_out.q[s + 1:s + 1 + HORIZON], held_out.qd[s + 1:s + 1 + HORIZON]
        covered_q.append((b.q[0] <= y) & (y <= b.q[2]))
        covered_qd.append((b.qd[0] <= yd) & (yd <= b.qd[2]))
    cov = {"q": float(np.mean(covered_q)), "qd": float(np.mean(covered_qd))}
    print(f"90% band coverage of held-out data over {len(covered_q)} starts x {HORIZON} steps: "
          f"q {cov['q']:.3f}, qd {cov['qd']:.3f}")
    return cov


def test_band_accounts_for_the_noise_of_the_measured_start_state(coverage):
    """Predictions start from a *measured* state, as noisy as any other sample.

    Rolling every particle out from (q0, qd0) exactly and adding observation noise only at
    the outputs leaves the start state's own sensor noise, carried through the dynamics,
    out of the band: 0.87 (q) / 0.83 (qd) here. Each rollout starts from the measured state
    plus a draw of that noise, so the 90 % band covers about 90 %.
    """
    assert 0.88 <= coverage["q"] <= 0.99, coverage
    assert 0.88 <= coverage["qd"] <= 0.99, coverage


def test_model_error_is_saved_with_the_posterior_and_widens_the_loaded_twins_bands(stream, small_cfg, model,
                                                                                  held_out, tmp_path):
    from twin_bayes.inference import Twin
    from twin_bayes.inference.discrepancy import ModelError
    from twin_bayes.inference.store import MODEL_ERROR, load_posterior, save_posterior
    twin = Twin(small_cfg, model)
    twin.restore(stream.twin.particles, stream.twin.posterior.version)
    twin.model_error = ModelError(np.array([0.01, 0.02]), 0.3, np.zeros(0), np.zeros(0))   # arm2: no settings
    save_posterior(twin, tmp_path)
    loaded = load_posterior(Twin(small_cfg, model), tmp_path)
    np.testing.assert_array_equal(loaded.model_error.sd, twin.model_error.sd)
    assert loaded.model_error.time_const_s == 0.3
    args = (held_out.q[0], held_out.qd[0], held_out.ctrl[:HORIZON])
    wide, plain = loaded.predict(*args), stream.twin.predict(*args)
    assert np.all(wide.q[-1, -1] - wide.q[0, -1] > plain.q[-1, -1] - plain.q[0, -1])
    twin.model_error = None
    save_posterior(twin, tmp_path)                     # a posterior without one leaves no stale file
    assert (not (tmp_path / MODEL_ERROR).exists()
            and load_posterior(Twin(small_cfg, model), tmp_path).model_error is None)
    (tmp_path / MODEL_ERROR).write_text('{"sd_rad": [0.01, -1.0], "time_const_s": 0.3, "reference_settings": [], '
                                        '"settings_exponents": []}')
    with pytest.raises(ValueError, match="model_error.json: .*> 0"):
        load_posterior(Twin(small_cfg, model), tmp_path)
