"""The update gate: a rejected update keeps the previous posterior (flagged stale, with the
reason), keeps the window in `pending`, and `retry()` applies it again.

The gate thresholds are numbers of the twin's own config, traced into the compiled update, so
these twins of stricter configs (loaded from TOML) reuse the session's executables. Relaxing the
gate is handing the whole state to a twin of the shipped config.
"""
import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.inference import Twin


@pytest.fixture(scope="module")
def strict_cfgs(config_dir, helpers):
    small = dict(particles=32, window_s=0.5, mcmc_steps=5)
    return {
        # tempered SMC (no Laplace proposal): the first window, from the prior, needs ~16
        # tempering stages; one is not enough
        "one_stage": load_config(helpers.write_arm2_config(config_dir, "arm2_one_stage", **small, max_stages=1,
                                                           laplace=False)),
        # an ESS of all N particles is never reached after adaptive tempering
        "full_ess": load_config(helpers.write_arm2_config(config_dir, "arm2_full_ess", **small, min_ess=1.0)),
    }


def _rejects(twin, window, helpers, expected_reason):
    before = helpers.snapshot(twin)
    report = twin.update(window)
    assert not report.accepted
    assert report.reason and expected_reason in report.reason, report.reason
    assert report.version == before["version"]
    post = twin.posterior
    assert post.stale and post.reason == report.reason
    assert post.version == before["version"]
    np.testing.assert_array_equal(np.asarray(post.particles.z), before["post_z"])
    np.testing.assert_array_equal(np.asarray(post.particles.log_weights), before["log_weights"])
    np.testing.assert_array_equal(post.values, before["values"])
    return report


def test_rejected_update_keeps_posterior_stale_and_window_pending(strict_cfgs, small_cfg, model,
                                                                   stream_windows, helpers):
    twin = Twin(strict_cfgs["one_stage"], model)
    assert twin.model.design == model.design and int(twin.model.numbers.max_stages) == 1
    w = stream_windows[0]
    report = _rejects(twin, w, helpers, "beta")
    assert report.stages == 1 and report.beta < 1.0
    assert len(twin.pending) == 1
    np.testing.assert_array_equal(np.asarray(twin.pending[0].q[: len(w["q"])]), w["q"])
    assert twin.posterior.version == 0

    # retry under the same gate: rejected again, the window is pending once (not twice)
    reports = twin.retry()
    assert len(reports) == 1 and not reports[0].accepted
    assert len(twin.pending) == 1 and twin.posterior.stale and twin.posterior.version == 0

    # relax the gate (the shipped stage budget): the same state under the shipped config applies the kept window
    relaxed = Twin(small_cfg, model)
    relaxed.state = twin.state
    twin = relaxed
    reports = twin.retry()
    assert len(reports) == 1 and reports[0].accepted, reports[0].reason
    assert reports[0].version == 1 and reports[0].beta == 1.0
    post = twin.posterior
    assert post.version == 1 and not post.stale and post.reason == ""
    assert not twin.pending
    # the retried window moved the posterior towards the truth, like a first update does
    prior = Twin(small_cfg, model).posterior.summary()
    for name, sd in ((n, s["sd"]) for n, s in post.summary().items() if not n.startswith("noise")):
        assert sd < 0.5 * prior[name]["sd"], name


def test_low_ess_is_rejected(strict_cfgs, model, stream_windows, helpers):
    twin = Twin(strict_cfgs["full_ess"], model)
    report = _rejects(twin, stream_windows[0], helpers, "effective sample size")
    assert report.beta == 1.0  # it was the ESS, not the tempering, that failed
    assert len(twin.pending) == 1


def test_rejection_then_good_update_clears_stale(strict_cfgs, small_cfg, model, stream_windows, helpers):
    """A stale posterior is replaced by the next accepted update; the rejected window stays pending."""
    strict = Twin(strict_cfgs["one_stage"], model)
    _rejects(strict, stream_windows[0], helpers, "beta")
    twin = Twin(small_cfg, model)
    twin.state = strict.state
    report = twin.update(stream_windows[1])
    assert report.accepted and twin.posterior.version == 1 and not twin.posterior.stale
    assert len(twin.pending) == 1
