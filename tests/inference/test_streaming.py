"""Streaming updates on emulated arm2 telemetry: every window accepted, the posterior closes in on
the hidden truth, and new windows (a shorter, padded one included) never recompile."""
import numpy as np
import pytest

from twin_bayes.inference import Twin

MASSES = ("body_mass:upper_arm", "body_mass:forearm")


def test_every_window_is_accepted_and_versions_count_up(stream):
    for i, r in enumerate(stream.reports):
        assert r.accepted, (i, r.reason)
        assert r.reason == ""
        assert r.engine == "laplace-is"   # near-Gaussian windows: no tempering needed
        assert r.beta == 1.0 and r.stages == 1
        assert r.divergent <= stream.twin.cfg.inference.max_divergent
        assert r.ess >= stream.twin.cfg.inference.min_ess * stream.twin.cfg.inference.particles
        assert np.isfinite(r.surprise)
        assert 1.0 <= r.temper <= 1.2          # the model is exact: white residuals, no tempering
        assert set(r.changed) == set(stream.twin.model.names)
    assert stream.versions == list(range(len(stream.reports) + 1))
    assert not stream.twin.posterior.stale and not stream.twin.pending


def test_posterior_means_move_towards_truth(stream, truth):
    prior, post = stream.summaries[0], stream.summaries[-1]
    print(f"{'parameter':24s} {'truth':>9s} {'prior mean':>10s} {'post q05':>9s} {'mean':>9s} {'q95':>9s} {'z':>5s}")
    for name, s in post.items():
        true = truth.get(name, float("nan"))
        print(f"{name:24s} {true:9.4g} {prior[name]['mean']:10.4g} {s['q05']:9.4g} {s['mean']:9.4g} {s['q95']:9.4g} "
              f"{(s['mean'] - true) / s['sd']:+5.1f}")
    for name, true in truth.items():
        before = abs(prior[name]["mean"] - true) / true
        after = abs(post[name]["mean"] - true) / true
        assert after < before, (name, prior[name]["mean"], post[name]["mean"], true)
        assert after < 0.05, (name, post[name], true)           # within 5 % of the truth
        assert post[name]["sd"] < 0.2 * prior[name]["sd"], name  # and far more certain than the prior


def test_ninety_percent_interval_contains_the_masses(stream, truth):
    post = stream.summaries[-1]
    for name in MASSES:
        s = post[name]
        assert s["q05"] <= truth[name] <= s["q95"], (name, s, truth[name])


def test_truth_stays_within_a_few_posterior_sds_after_every_window(stream, truth):
    """A looser check on every parameter and every version: no collapse onto a wrong value."""
    for version, post in enumerate(stream.summaries[1:], start=1):
        for name, true in truth.items():
            z = (post[name]["mean"] - true) / post[name]["sd"]
            assert abs(z) < 4.0, (version, name, post[name], true)


def test_noise_scales_are_learned(stream, emulator_noise):
    post = stream.summaries[-1]
    for channel, sigma in emulator_noise.items():
        s = post[f"noise:{channel}"]
        assert 0.8 * sigma < s["mean"] < 1.25 * sigma, (channel, s)
        assert s["q05"] < s["q95"]


def test_summary_quantiles_are_ordered_and_finite(stream):
    post = stream.twin.posterior
    assert post.values.shape == (stream.twin.cfg.inference.particles, len(post.names))
    assert np.all(np.isfinite(post.values)) and np.isclose(post.weights.sum(), 1.0)
    for name, s in post.summary().items():
        assert s["q05"] <= s["q50"] <= s["q95"], name
        assert s["sd"] > 0, name
        if name.startswith(("body_mass", "dof_", "noise")):
            assert s["q05"] > 0, name  # positive quantities stay positive


def test_new_windows_do_not_recompile(stream):
    """After the first update, four more windows (the last one shorter, padded) compiled nothing."""
    assert stream.caches_after_first["update"] >= 1
    assert stream.caches_after_all == stream.caches_after_first


def test_configs_and_robots_of_one_design_share_one_executable(stream, config_dir, helpers, stream_windows):
    """Another config of arm2 (other priors, noise scales and gate thresholds), and a batch of two
    robots, go through the executables the stream compiled: the model's numbers are traced."""
    from twin_bayes.config import load_config
    from twin_bayes.inference.twin import update_many
    # the stream's own path first: executables released at the end of an earlier module load again here
    Twin(stream.twin.cfg, stream.twin.model).update(stream_windows[0])
    before = helpers.cache_sizes()
    other = load_config(helpers.write_arm2_config(config_dir, "arm2_other_numbers", particles=32, window_s=0.5,
                                                  mcmc_steps=5, min_ess=0.05, drift_sigma=6.0))
    twin = Twin(other, stream.twin.model)
    assert twin.model is not stream.twin.model and twin.model.design == stream.twin.model.design
    assert not np.array_equal(twin.model.numbers.min_ess, stream.twin.model.numbers.min_ess)
    report = twin.update(stream_windows[0])
    assert report.accepted, report.reason
    after_one = helpers.cache_sizes()
    assert after_one == before, (before, after_one)
    a, b = Twin(other, twin.model), Twin(other, twin.model)
    update_many([a, b], [a.as_window(stream_windows[0]), b.as_window(stream_windows[1])])
    assert helpers.cache_sizes()["update"] == before["update"] + 2      # the batch of two: its own, once
    assert a.posterior.version == b.posterior.version == 1


def test_twins_whose_models_compute_the_same_update_in_one_batch(stream, small_cfg, config_dir, helpers,
                                                                stream_windows):
    """update_many batches twins by what their models compute, not by model object: configs that differ
    only in the seed build models of their own yet share one batch, whose result is each twin's update
    alone; a config with other numbers runs apart."""
    from twin_bayes.config import load_config
    from twin_bayes.inference.twin import _batches, update_many
    seeded = [small_cfg.model_copy(update={"inference": small_cfg.inference.model_copy(update={"seed": s})})
              for s in (11, 12)]
    a, b = (Twin(c, stream.twin.model) for c in seeded)
    assert a.model is not b.model
    other = Twin(load_config(helpers.write_arm2_config(config_dir, "arm2_other_numbers", particles=32, window_s=0.5,
                                                       mcmc_steps=5, min_ess=0.05, drift_sigma=6.0)), a.model)
    assert [idx for idx, _ in _batches([a, other, b], 64)] == [[0, 2], [1]]
    alone = [Twin(c, stream.twin.model) for c in seeded]
    for t in alone:
        assert t.update(stream_windows[0]).accepted
    window = a.as_window(stream_windows[0])
    assert all(r.accepted for r in update_many([a, b], [window, window]))
    for batched, single in zip((a, b), alone):
        np.testing.assert_allclose(batched.posterior.values, single.posterior.values, rtol=1e-7)
    assert not np.allclose(a.posterior.values, b.posterior.values)      # each twin kept its own key


def test_a_twin_fed_its_own_updates_traces_each_phase_once(small_cfg, model, stream_windows):
    """An exported phase returns arrays committed to the device; a phase commits its inputs the same
    way, so a twin started from `init` (uncommitted arrays) and then fed its own updates runs one
    executable per phase, never a second compile of it."""
    from twin_bayes.inference import engine
    twin = Twin(small_cfg, model)
    for w in stream_windows[:3]:
        assert twin.update(w).accepted
    calls = [call for ph in (engine.propose_jit, engine.finish_jit) for call in ph._calls.values()]
    sizes = [call._cache_size() for call in calls]     # 0: another model's, released at the end of its module
    assert calls and max(sizes) == 1, sizes


def test_a_state_restored_from_its_arrays_continues_exactly(stream, small_cfg, model, stream_windows):
    """The whole TwinState goes through a checkpoint's arrays: the restored twin's next update equals the
    original's to the last bit; a state of other shapes is refused by name."""
    from twin_bayes.inference import engine
    a = Twin(small_cfg, model)
    a.update(stream_windows[0])
    b = Twin(small_cfg, model)
    b.state = engine.state_from_arrays(b.state, engine.state_arrays(a.state))
    ra, rb = a.update(stream_windows[1]), b.update(stream_windows[1])
    assert ra.accepted and rb.accepted and a.posterior.version == b.posterior.version == 2
    np.testing.assert_array_equal(a.posterior.values, b.posterior.values)
    np.testing.assert_array_equal(np.asarray(a.state.prior.chol), np.asarray(b.state.prior.chol))
    bad = engine.state_arrays(a.state)
    bad[".particles.z"] = bad[".particles.z"][:3]
    with pytest.raises(ValueError, match=r"\.particles\.z"):
        engine.state_from_arrays(a.state, bad)


def test_a_state_saved_before_windows_had_start_offsets_restores_them_as_zeros(stream, small_cfg, model):
    """A checkpoint written before `Window.start` existed lacks its pending windows' start offsets: they
    restore as zeros (the measured starts, as every window has before its search); any other missing leaf
    is still refused by name."""
    from twin_bayes.inference import engine
    a = Twin(small_cfg, model)
    saved = engine.state_arrays(a.state)
    del saved[".pending.windows.start"]
    restored = engine.state_from_arrays(a.state, saved)
    start = np.asarray(restored.pending.windows.start)
    assert start.shape == np.asarray(a.state.pending.windows.start).shape and not start.any()
    del saved[".pending.windows.mask"]
    with pytest.raises(ValueError, match=r"\.pending\.windows\.mask"):
        engine.state_from_arrays(a.state, saved)


def test_a_config_that_searches_start_states_shares_the_executables_and_agrees_on_a_smooth_arm(
        stream, small_cfg, config_dir, helpers, stream_windows):
    """`inference.start_search` is a traced number: a config that sets it goes through the stream's
    executables. On arm2, whose predictions are close to linear over a start's sensor noise, its posterior
    moves (the searched starts enter its likelihood) but stays within a tenth of a posterior sd of the
    measured starts' on every parameter."""
    from twin_bayes.config import load_config
    Twin(small_cfg, stream.twin.model).update(stream_windows[0])     # executables released earlier load again
    before = helpers.cache_sizes()
    searched_cfg = load_config(helpers.write_arm2_config(config_dir, "arm2_start_search", particles=32, window_s=0.5,
                                                         mcmc_steps=5, start_search=True))
    measured, searched = Twin(small_cfg, stream.twin.model), Twin(searched_cfg, stream.twin.model)
    for w in stream_windows[:2]:
        assert measured.update(w).accepted and searched.update(w).accepted
    assert helpers.cache_sizes() == before
    a, b = measured.posterior.summary(), searched.posterior.summary()
    assert any(a[n]["mean"] != b[n]["mean"] for n in a)
    for n in a:
        assert abs(a[n]["mean"] - b[n]["mean"]) < 0.1 * a[n]["sd"], (n, a[n], b[n])
