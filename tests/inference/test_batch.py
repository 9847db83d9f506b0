"""Batch refits with NumPyro NUTS and SVI (kept small: CI has 2 cores).

Each engine compiles its own program (~1.5-2.5 min cold on 2 busy cores) and its run
time is proportional to the windows times the gradient evaluations, so NUTS sees one
window with 30 warm-up and 30 kept draws per chain, and SVI two windows (a full one
and the shorter, padded last one of the stream) for 400 steps.
"""
import arviz as az
import numpy as np
import pytest

from twin_bayes.inference import Twin

WARMUP, SAMPLES, CHAINS = 30, 30, 2


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
def nuts(small_cfg, model, windows):
    twin = Twin(small_cfg, model)
    res = twin.fit(windows[1:2], engine="nuts", num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS)
    return twin, res


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


def test_nuts_reports_chains_for_rhat(nuts):
    twin, res = nuts
    d = twin.model.dim
    assert res.chains.shape == (CHAINS, SAMPLES, d) and np.all(np.isfinite(res.chains))
    assert res.divergent.shape == (CHAINS, SAMPLES) and res.divergent.dtype == bool
    assert res.divergent.mean() <= 0.25
    rhat = az.rhat(az.convert_to_dataset({"z": res.chains}))["z"].values
    print("NUTS R-hat per unconstrained dimension:", np.round(rhat, 3).tolist())
    assert rhat.shape == (d,) and np.all(np.isfinite(rhat))
    # the warm start for the next refit: one position per chain, a step size and a diagonal mass
    assert res.warm.z.shape == (CHAINS, d) and res.warm.step_size > 0 and res.warm.inverse_mass.shape == (d,)
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
