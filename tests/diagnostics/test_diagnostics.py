"""Tests of twin_bayes.diagnostics on samples with known answers."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from twin_bayes.diagnostics import (
    OnlineCalibration,
    band_coverage,
    calibrated_range,
    confounded_pairs,
    contraction,
    correlations,
    coverage_stats,
    crps_ensemble,
    divergences,
    draw_coverage,
    interval_coverage_of_truth,
    load_netcdf,
    log_score,
    pit,
    quantile_bands,
    save_netcdf,
    summarize,
    systematic_resample,
    to_inference_data,
    wilson,
    write_report,
)

NAMES = ["body_mass:upper_arm", "dof_damping:elbow", "actuator:kt"]


def normal_crps(y, mu, s):
    z = (y - mu) / s
    return s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def idata_gaussian(rng, chains=4, draws=2000, loc=2.0, scale=0.5):
    samples = {n: rng.normal(loc, scale, size=(chains, draws)) for n in NAMES}
    prior = {n: rng.normal(loc, 5 * scale, size=4000) for n in NAMES}
    return to_inference_data(samples, prior=prior)


# --- summary -----------------------------------------------------------------


def test_summary_of_known_gaussian():
    idata = idata_gaussian(np.random.default_rng(0))
    summary = summarize(idata)
    assert set(summary) == set(NAMES)
    for s in summary.values():
        assert s["mean"] == pytest.approx(2.0, abs=0.02)
        assert s["sd"] == pytest.approx(0.5, rel=0.03)
        assert s["q05"] == pytest.approx(2.0 - 1.645 * 0.5, abs=0.03)
        assert s["q50"] == pytest.approx(2.0, abs=0.03)
        assert s["q95"] == pytest.approx(2.0 + 1.645 * 0.5, abs=0.03)
        assert s["r_hat"] < 1.01
        assert s["ess_bulk"] > 4000 and s["ess_tail"] > 4000


def test_rhat_flags_chains_stuck_at_different_means():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 500)) + np.array([0.0, 0.0, 3.0, 3.0])[:, None]
    summary = summarize(to_inference_data({"a:b": x}))
    assert summary["a:b"]["r_hat"] > 1.1


def test_one_chain_gives_nan_rhat_and_finite_ess():
    x = np.random.default_rng(2).normal(size=(1, 800))
    s = summarize(to_inference_data({"a:b": x}))["a:b"]
    assert np.isnan(s["r_hat"])
    assert np.isfinite(s["ess_bulk"]) and np.isfinite(s["ess_tail"])


def test_divergences_counted():
    rng = np.random.default_rng(3)
    diverging = np.zeros((2, 100), bool)
    diverging[0, :7] = True
    idata = to_inference_data({"a": rng.normal(size=(2, 100))}, sample_stats={"diverging": diverging})
    assert divergences(idata) == 7
    assert divergences(to_inference_data({"a": rng.normal(size=(2, 100))})) == 0


def test_contraction_zero_for_prior_and_near_one_for_narrow_posterior():
    rng = np.random.default_rng(4)
    prior = {"m": rng.normal(size=5000), "c": rng.normal(size=5000)}
    assert contraction(prior, prior) == {"m": 0.0, "c": 0.0}
    narrow = {"m": rng.normal(0, 0.02, size=(2, 2000))}
    assert contraction(prior, narrow)["m"] > 0.99


def test_correlations_find_constructed_confounded_pair():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 2000))
    post = {
        "body_mass:load": a,
        "dof_armature:elbow": -0.5 * a + rng.normal(0, 0.05, size=a.shape),
        "dof_damping:elbow": rng.normal(size=a.shape),
    }
    names, corr = correlations(post)
    assert names == list(post) and corr.shape == (3, 3)
    assert np.allclose(np.diag(corr), 1.0)
    pairs = confounded_pairs(names, corr, threshold=0.8)
    assert [(p[0], p[1]) for p in pairs] == [("body_mass:load", "dof_armature:elbow")]
    assert pairs[0][2] < -0.98


# --- conversion ----------------------------------------------------------------


def test_weights_are_resampled_systematically():
    rng = np.random.default_rng(6)
    n = 1000
    w = rng.random(n) ** 4
    w /= w.sum()
    counts = np.bincount(systematic_resample(w, np.random.default_rng(0)), minlength=n)
    assert np.all(np.abs(counts - n * w) < 1.0 + 1e-9)

    x = np.arange(n, dtype=float)[None]
    flags = (x % 2 == 0)
    kwargs = dict(weights=w[None], sample_stats={"diverging": flags}, seed=3)
    idata = to_inference_data({"p:x": x}, **kwargs)
    post = np.asarray(idata.posterior["p:x"])[0]
    assert np.array_equal(np.asarray(idata.sample_stats["diverging"])[0], post % 2 == 0)
    assert np.mean(post) == pytest.approx(np.sum(w * x[0]), rel=0.01)
    kish = 1.0 / np.sum(w**2)
    assert idata.posterior.attrs["weights_ess"] == pytest.approx(kish)
    assert summarize(idata)["p:x"]["ess_bulk"] <= kish
    again = to_inference_data({"p:x": x}, **kwargs)
    assert np.array_equal(np.asarray(again.posterior["p:x"]), np.asarray(idata.posterior["p:x"]))


def test_invalid_inputs_rejected():
    with pytest.raises(ValueError):
        to_inference_data({"a": np.zeros((2, 10)), "b": np.zeros((2, 11))})
    with pytest.raises(ValueError):
        to_inference_data({"a": np.zeros((1, 3))}, weights=np.array([[0.5, 0.6, -0.1]]))


def test_netcdf_round_trip_keeps_names(tmp_path: Path):
    rng = np.random.default_rng(7)
    names = NAMES + ["geom_friction:robot/foot", "bias:50%"]
    samples = {n: rng.normal(size=(2, 50)) for n in names}
    idata = to_inference_data(
        samples,
        prior={n: rng.normal(size=80) for n in names},
        sample_stats={"diverging": rng.random((2, 50)) < 0.1},
        observed={"y": rng.normal(size=(20, 3))},
        posterior_predictive={"y": rng.normal(size=(2, 50, 20, 3))},
        dims={"y": ["time", "channel"]},
        attrs={"robot_id": "pendulum-1", "posterior_version": 12, "config": {"engine": "smc"}},
    )
    path = save_netcdf(idata, tmp_path / "sub" / "posterior.nc")
    back = load_netcdf(path)
    assert list(back.posterior.data_vars) == names
    assert list(back.prior.data_vars) == names
    for n in names:
        np.testing.assert_array_equal(back.posterior[n], idata.posterior[n])
    assert back.sample_stats["diverging"].dtype == bool
    assert back.posterior_predictive["y"].dims == ("chain", "draw", "time", "channel")
    assert back.attrs["robot_id"] == "pendulum-1"
    assert back.attrs["posterior_version"] == 12
    assert summarize(back) == summarize(idata)


# --- calibration ---------------------------------------------------------------


def test_coverage_of_calibrated_ensemble_is_nominal():
    rng = np.random.default_rng(8)
    samples = rng.normal(size=(2000, 200, 5))
    observed = rng.normal(size=(200, 5))
    n = observed.size
    for level in (0.5, 0.9):
        tol = 4 * np.sqrt(level * (1 - level) / n) + 0.01
        assert band_coverage(samples, observed, level) == pytest.approx(level, abs=tol)
    assert band_coverage(0.3 * samples, observed, 0.9) < 0.5


def _ar1(rng, n: int, T: int, phi: float) -> np.ndarray:
    """n stationary AR(1) paths (n, T) of unit sd."""
    x = np.empty((n, T))
    x[:, 0] = rng.standard_normal(n)
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi ** 2) * rng.standard_normal(n)
    return x


def test_the_range_of_a_calibrated_twins_coverage_matches_simulated_recordings():
    """Recordings drawn from the predictive itself (an AR(1) error, 300 steps, φ = 0.98) are covered
    0.90 on average but each strays: the range `calibrated_range` gives from one ensemble holds the
    central 90 % of 2,000 simulated 4-recording coverages to 0.02; white noise strays far less."""
    rng = np.random.default_rng(3)
    ens = [_ar1(rng, 400, 300, 0.98) for _ in range(4)]
    draws = [draw_coverage(e, 0.9) for e in ens]
    assert np.mean(draws) == pytest.approx(0.9, abs=0.01)
    lo, hi = calibrated_range(draws)
    recordings = _ar1(rng, 4 * 2000, 300, 0.98).reshape(4, 2000, 300)
    scored = np.mean([[band_coverage(e, y, 0.9) for y in rec] for e, rec in zip(ens, recordings)], axis=0)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(scored, [0.05, 0.95])), abs=0.02)
    assert hi - lo > 0.1
    white = calibrated_range([draw_coverage(rng.standard_normal((400, 300)), 0.9) for _ in range(4)])
    assert white[1] - white[0] < 0.04


def test_draw_coverage_of_constant_paths_is_all_or_nothing_and_respects_where():
    """A draw constant in time is wholly inside or outside the band: a fraction `level` of draws score 1."""
    rng = np.random.default_rng(4)
    c = draw_coverage(np.repeat(rng.standard_normal((201, 1)), 50, axis=1), 0.5)
    assert set(np.unique(c)) == {0.0, 1.0} and c.mean() == pytest.approx(0.5, abs=0.01)
    samples = np.concatenate([np.zeros((101, 1)), rng.standard_normal((101, 1))], axis=1)
    samples[:, 0] = np.arange(101)                      # column 0: distinct ranks; column 1 left out
    np.testing.assert_array_equal(draw_coverage(samples, 0.9, np.array([True, False])),
                                  ((np.arange(101) >= 5) & (np.arange(101) <= 95)).astype(float))
    with pytest.raises(ValueError):
        draw_coverage(samples[:2], 0.9)


def test_coverage_ignores_missing_observations():
    rng = np.random.default_rng(9)
    samples = rng.normal(size=(100, 10, 2))
    observed = np.zeros((10, 2))
    observed[3] = np.nan
    assert band_coverage(samples, observed, 0.5) == 1.0


def test_crps_matches_normal_closed_form():
    rng = np.random.default_rng(10)
    mu, s = 0.3, 1.7
    y = np.array([-4.0, -1.0, 0.3, 1.0, 2.5, 6.0])
    ensemble = rng.normal(mu, s, size=(40000, y.size))
    np.testing.assert_allclose(crps_ensemble(ensemble, y), normal_crps(y, mu, s), rtol=0.02)


def test_crps_is_fair_for_small_ensembles():
    rng = np.random.default_rng(11)
    reps, y = 20000, 0.7
    small = rng.normal(size=(5, reps))
    score = crps_ensemble(small, np.full(reps, y))
    assert score.mean() == pytest.approx(normal_crps(y, 0.0, 1.0), rel=0.02)


def test_crps_sorting_identity_equals_pair_sum():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=3)
    pair = np.abs(x[:, None] - x[None]).sum(axis=(0, 1))
    direct = np.abs(x - y).mean(axis=0) - pair / (2 * 7 * 6)
    np.testing.assert_allclose(crps_ensemble(x, y), direct)


def test_log_score_matches_normal_density():
    rng = np.random.default_rng(13)
    y = np.array([-2.0, 0.0, 1.0])
    ensemble = rng.normal(size=(20000, 3))
    np.testing.assert_allclose(log_score(ensemble, y), stats.norm.logpdf(y), atol=0.05)


def test_interval_coverage_of_truth():
    lo, hi = np.zeros(4), np.ones(4)
    assert interval_coverage_of_truth(lo, hi, np.array([0.5, 1.0, 2.0, -1.0])) == 0.5
    assert interval_coverage_of_truth(0.0, 1.0, np.array([0.5, np.nan])) == 1.0


def test_coverage_stats_and_wilson_interval_match_closed_forms():
    """18 of 20 intervals held their truths: 0.90 with binomial se √(0.9·0.1/20); the Wilson 95 % interval
    (p̂ + z²/2n ± z√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n) is [0.699, 0.972], and all-or-nothing counts stay
    inside [0, 1]."""
    c = coverage_stats([True] * 18 + [False] * 2)
    assert (c["covered"], c["n"], c["coverage"]) == (18, 20, 0.9)
    assert c["se"] == pytest.approx(np.sqrt(0.9 * 0.1 / 20))
    assert c["wilson95"] == pytest.approx([0.6990, 0.9721], abs=1e-4)
    lo, hi = wilson(42, 42)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(42 / (42 + 1.96 ** 2))
    assert np.isnan(coverage_stats([])["coverage"]) and np.isnan(wilson(0, 0)[0])


def test_pit_is_the_weighted_share_below_the_truth_ties_counted_half():
    values, weights = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.1, 0.2, 0.3, 0.4])
    assert pit(values, weights, 2.5) == pytest.approx(0.3)
    assert pit(values, weights, 3.0) == pytest.approx(0.3 + 0.15)
    assert pit(values, weights, 0.0) == 0.0 and pit(values, weights, 9.0) == pytest.approx(1.0)


def test_quantile_bands_shape_and_order():
    samples = np.random.default_rng(14).normal(size=(500, 30, 2))
    bands = quantile_bands(samples, [0.05, 0.5, 0.95])
    assert bands.shape == (3, 30, 2)
    assert np.all(bands[0] <= bands[1]) and np.all(bands[1] <= bands[2])


def test_online_calibration_pools_batches():
    rng = np.random.default_rng(15)
    batches = [(rng.normal(size=(400, 50, 2)), rng.normal(size=(50, 2))) for _ in range(3)]
    batches[1][1][0, 0] = np.nan
    online = OnlineCalibration()
    assert np.isnan(online.as_dict()["crps"])
    first = online.update(*batches[0])
    assert first["n_points"] == 100 and first["n_batches"] == 1
    for b in batches[1:]:
        online.update(*b)
    summary = online.as_dict()
    samples = np.concatenate([b[0] for b in batches], axis=1)
    observed = np.concatenate([b[1] for b in batches], axis=0)
    ok = np.isfinite(observed)
    assert summary["n_batches"] == 3 and summary["n_points"] == 299
    assert summary["coverage_50"] == pytest.approx(band_coverage(samples, observed, 0.5))
    assert summary["coverage_90"] == pytest.approx(band_coverage(samples, observed, 0.9))
    assert summary["crps"] == pytest.approx(crps_ensemble(samples, observed)[ok].mean())
    assert summary["log_score"] == pytest.approx(log_score(samples, observed)[ok].mean())


# --- report --------------------------------------------------------------------


def assert_valid_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 50 and height > 50
    assert data[-8:-4] == b"IEND"


@pytest.mark.parametrize("chains, plot", [(3, "rank.png"), (1, "trace.png")])
def test_report_writes_html_and_pngs(tmp_path: Path, chains: int, plot: str):
    rng = np.random.default_rng(16)
    draws = 300
    names = NAMES + ["sensor_bias:<q>"]
    samples = {n: rng.normal(i, 0.1, size=(chains, draws)) for i, n in enumerate(names)}
    samples["actuator:kt"] = 2 * samples["dof_damping:elbow"] + rng.normal(0, 0.01, (chains, draws))
    prior = {n: rng.normal(i, 1.0, size=1000) for i, n in enumerate(names)}
    idata = to_inference_data(samples, prior=prior, attrs={"robot_id": "pendulum<1>"})
    t = np.linspace(0.0, 1.0, 60)
    ensemble = np.sin(t)[None, :, None] + rng.normal(0, 0.1, size=(200, 60, 2))
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    bands = quantile_bands(ensemble, qs)
    predictive = [{
        "name": "held-out window",
        "t": t,
        "observed": np.sin(t)[:, None] + rng.normal(0, 0.1, size=(60, 2)),
        "bands": dict(zip(qs, bands)),
        "channel_names": ["qpos:elbow", "qvel:elbow"],
    }]
    index = write_report(idata, tmp_path / "report", title="Pendulum <test>", predictive=predictive,
                         truth={"body_mass:upper_arm": 0.0})
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    images = re.findall(r"<img src='([^']+)'", page)
    assert set(images) == {"forest.png", "pairs.png", plot, "predictive_0.png"}
    for name in images:
        assert_valid_png(index.parent / name)
    assert "Pendulum &lt;test&gt;" in page and "sensor_bias:&lt;q&gt;" in page
    assert "<q>" not in page and "pendulum&lt;1&gt;" in page
    assert all(n in page for n in NAMES)
    assert re.search(r"dof_damping:elbow</code> ~ <code>actuator:kt", page)


def test_identification_table_tells_pinned_from_unidentified_and_flags_confounded_pairs():
    from twin_bayes.diagnostics import identification_table
    rng = np.random.default_rng(0)
    names = ["pinned", "free", "twin_of_free"]
    prior = rng.normal(size=(4000, 3))
    free = rng.normal(size=4000)
    draws = {"pinned": 0.3 + 0.01 * rng.normal(size=4000), "free": free,
             "twin_of_free": free + 0.01 * rng.normal(size=4000)}
    summary = {n: {"mean": float(np.mean(d)), "q05": float(np.quantile(d, 0.05)), "q95": float(np.quantile(d, 0.95))}
               for n, d in draws.items()}
    t = identification_table(names, prior, draws, summary, truth={"pinned": 0.3, "free": 5.0, "twin_of_free": 0.0})
    rows = t["parameters"]
    assert rows["pinned"]["contraction"] > 0.99 and abs(rows["free"]["contraction"]) < 0.1
    assert rows["pinned"]["covered"] and not rows["free"]["covered"] and rows["free"]["truth"] == 5.0
    assert [p[:2] for p in t["confounded_pairs"]] == [("free", "twin_of_free")]
    assert "truth" not in identification_table(names, prior, draws, summary)["parameters"]["free"]
