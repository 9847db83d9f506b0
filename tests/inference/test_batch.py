"""Batch refits with NumPyro NUTS and SVI (kept small: CI has 2 cores), and streaming
against batch: the five stream windows brought in one by one agree with one NUTS fit on all
of them.

Each engine compiles its own program (~1.5-2.5 min cold on 2 busy cores) and its run
time is proportional to the windows times the gradient evaluations, so NUTS runs once (all
five windows, two chains of 60 warm-up and 100 kept draws, warm-started from the streamed
posterior) for every NUTS test, and SVI
sees two windows (a full one and the shorter, padded last one of the stream) for 400 steps.
"""
import arviz as az
import numpy as np
import pytest

from twin_bayes.inference import Twin

WARMUP, SAMPLES, CHAINS = 60, 100, 2


@pytest.fixture(scope="module")
def windows(model, stream_windows):
    """All stream windows as padded `Window`s (the last one shorter, masked)."""
    return [model.window(w["q"], w["qd"], w["ctrl"]) for w in stream_windows]


def _near_truth(post, truth, rel):
    s = post.summary()
    for name, true in truth.items():
        assert abs(s[name]["mean"] - true) < rel * true, (name, s[name], true)
    return s


@pytest.fixture(scope="module")
def nuts(small_cfg, model, windows, stream):
    """NUTS on all stream windows, linearised (start-state sensitivities) where the stream ended."""
    twin = Twin(small_cfg, model)
    twin.restore(stream.twin.particles, 0)
    res = twin.fit(windows, engine="nuts", num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS)
    return twin, res


@pytest.mark.slow   # the NUTS fit behind it: 4-5 minutes on a cold cache on 2 cores
def test_streaming_agrees_with_one_nuts_fit(nuts, stream):
    """Means and sds of the five windows streamed one by one against one NUTS fit on all five.

    Monte Carlo error of a mean is sd/√ESS, of an sd about sd/√(2·ESS); both posteriors
    carry it. Differences must stay within 3.5 combined standard errors (every parameter).
    """
    twin, _ = nuts
    a, b = stream.twin.posterior, twin.posterior
    ess_a = a.ess
    ess_b = float(np.min(az.ess(az.convert_to_dataset({"z": twin.last_batch.chains}))["z"].values))
    sa, sb = a.summary(), b.summary()
    print(f"ESS stream {ess_a:.1f}, NUTS {ess_b:.1f}")
    for name in a.names:
        se_mean = np.hypot(sa[name]["sd"] / np.sqrt(ess_a), sb[name]["sd"] / np.sqrt(ess_b))
        se_sd = np.hypot(sa[name]["sd"] / np.sqrt(2 * ess_a), sb[name]["sd"] / np.sqrt(2 * ess_b))
        dm, ds = sa[name]["mean"] - sb[name]["mean"], sa[name]["sd"] - sb[name]["sd"]
        print(f"{name:24s} mean {sa[name]['mean']:.5g} vs {sb[name]['mean']:.5g} ({dm / se_mean:+.1f} se)  "
              f"sd {sa[name]['sd']:.3g} vs {sb[name]['sd']:.3g} ({ds / se_sd:+.1f} se)")
        assert abs(dm) < 3.5 * se_mean, name
        assert abs(ds) < 3.5 * se_sd, name


@pytest.mark.slow   # the NUTS fit behind it: 4-5 minutes on a cold cache on 2 cores
def test_nuts_posterior_is_finite_and_near_truth(nuts, truth, emulator_noise):
    twin, res = nuts
    post = twin.posterior
    assert post.version == 1 and not post.stale
    assert res.info["engine"] == "nuts" and twin.last_batch is res
    assert len(post) == CHAINS * SAMPLES and np.allclose(post.weights, 1 / (CHAINS * SAMPLES))
    assert np.all(np.isfinite(post.values))
    _near_truth(post, truth, rel=0.15)
    for c, sigma in emulator_noise.items():
        assert 0.5 * sigma < post.summary()[f"noise:{c}"]["mean"] < 2 * sigma


@pytest.mark.slow   # the NUTS fit behind it: 4-5 minutes on a cold cache on 2 cores
def test_nuts_reports_chains_for_rhat(nuts):
    twin, res = nuts
    d = twin.model.dim
    assert res.chains.shape == (CHAINS, SAMPLES, d) and np.all(np.isfinite(res.chains))
    assert res.divergent.shape == (CHAINS, SAMPLES) and res.divergent.dtype == bool
    assert res.divergent.mean() <= 0.25
    rhat = az.rhat(az.convert_to_dataset({"z": res.chains}))["z"].values
    print("NUTS R-hat per unconstrained dimension:", np.round(rhat, 3).tolist())
    assert rhat.shape == (d,) and np.all(np.isfinite(rhat))
    # the warm start for the next refit: one position per chain, a step size and a dense mass matrix
    assert res.warm.z.shape == (CHAINS, d) and res.warm.step_size > 0 and res.warm.inverse_mass.shape == (d, d)
    assert res.evaluations > 0


def test_svi_posterior_is_finite_and_near_truth(small_cfg, model, windows, truth):
    """SVI with its default learning rate (0.01) from its default start."""
    twin = Twin(small_cfg, model)
    res = twin.fit([windows[0], windows[-1]], engine="svi", steps=400, num_draws=200)
    post = twin.posterior
    assert res.info["engine"] == "svi" and np.isfinite(res.info["final_loss"])
    assert res.chains is None and post.version == 1 and len(post) == 200
    assert np.all(np.isfinite(post.values))
    s = _near_truth(post, truth, rel=0.2)
    assert all(s[n]["sd"] > 0 for n in truth)


def test_unknown_engine_is_refused(small_cfg, model, windows):
    twin = Twin(small_cfg, model)
    with pytest.raises(ValueError, match="unknown engine"):
        twin.fit(windows[:1], engine="gibbs")
    assert twin.posterior.version == 0


@pytest.mark.slow   # the NUTS fit behind it: 4-5 minutes on a cold cache on 2 cores
def test_the_gate_guards_batch_fits(nuts, small_cfg, model, windows):
    """Every engine is gated: NUTS chains that disagree (R-hat), SMC that stops below beta = 1. A
    refused fit says why and keeps the previous posterior."""
    from twin_bayes.inference import batch
    _, res = nuts
    assert batch.gate(res, small_cfg.inference) == ()
    apart = res.chains.copy()
    apart[1] += 5.0 * apart.std(axis=(0, 1))               # the second chain in another mode
    reason, detail = batch.gate(res._replace(chains=apart), small_cfg.inference)
    assert "R-hat" in reason and "R-hat" in detail
    twin = Twin(small_cfg, model)
    before = twin.posterior.values.copy()
    refused = twin.fit(windows[:2], engine="smc", max_stages=2)
    assert refused.info["beta"] < 1.0 and "beta" in refused.info["refused"][0]
    post = twin.posterior
    assert post.version == 0 and post.stale and "batch SMC stopped" in post.reason
    np.testing.assert_array_equal(post.values, before)
