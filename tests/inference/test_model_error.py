"""The online model error (`inference.discrepancy.record` and `refit`, `Twin.learn_model_error`):
learned from the recent windows in a fixed ring, predicted again by the posterior, against a known
AR(1) discrepancy added to what the twin's own model predicts; the predictive's own variance is not
counted."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.inference import Twin
from twin_bayes.inference import discrepancy as d
from twin_bayes.inference.posterior import Particles

TAU, SD, GAIN, REF = 0.5, 0.04, 0.5, 200.0      # s, rad at kp = REF, exponent of kp


@pytest.fixture(scope="module")
def twin():
    """The XL330 twin (one position, 1 s windows at 200 Hz) with a posterior collapsed onto one point:
    its predictive spread is the sensor noise alone."""
    t = Twin(load_config("xl330_coulomb"))
    z = np.repeat(np.asarray(t.particles.z).mean(0, keepdims=True), len(t.posterior), axis=0)
    t.restore(Particles(jnp.asarray(z), t.particles.log_weights), 1)
    return t


def windows(twin, seed: int, n: int, model_error: bool = True):
    """n windows {q, qd, ctrl, settings} of 1 s: the twin's own noise-free prediction under random goals
    from a random start, plus its sensor noise, plus (model_error) an AR(1) path of sd
    SD · (kp / REF)^GAIN and time constant TAU; kp alternates 100 and 400."""
    rng = np.random.default_rng(seed)
    T, dt = twin.model.window_samples - 1, twin.model.robot.dt
    noise = twin.posterior.values[0, twin.posterior.names.index("noise:q")]
    for w in range(n):
        settings = {"servo_kp": 100.0 if w % 2 else 400.0, "servo_vin": 7.4}
        q0, qd0 = rng.uniform(-0.5, 0.5, 1), np.zeros(1)
        ctrl = np.repeat(rng.uniform(-1.0, 1.0, (4, 1)), T // 4 + 1, axis=0)[:T + 1]
        b = twin.predict(q0, qd0, ctrl[:-1], settings=settings, key=jax.random.PRNGKey(w), model_error=False)
        q = b.mean_q + noise * rng.standard_normal(b.mean_q.shape)
        if model_error:
            sd = SD * (settings["servo_kp"] / REF) ** GAIN
            q += np.asarray(d.ar1_paths(jax.random.PRNGKey(10_000 * seed + w), jnp.array([sd]),
                                        np.exp(-dt / TAU), (1, T, 1)))[0]
        yield {"q": np.concatenate([q0[None], q]), "qd": np.concatenate([qd0[None], b.mean_qd]), "ctrl": ctrl,
               "settings": settings}


def learned(twin, seed: int, n: int = d.WINDOWS, model_error: bool = True) -> Twin:
    t = Twin(twin.cfg, twin.model)
    t.state = twin.state
    for w in windows(twin, seed, n, model_error):
        t.learn_model_error(w)
    return t


@pytest.mark.parametrize("seed", range(3))
def test_a_known_discrepancy_is_recovered(twin, seed):
    """Stationary sd at the reference kp within 30 %, the kp exponent within 0.3, τ within what its prior
    (τ about the window's 1 s) allows from 32 one-second windows."""
    me = learned(twin, seed).model_error
    assert abs(me.scale([REF, 7.4])[0] / SD - 1) < 0.3, me
    assert abs(me.gain[0] - GAIN) < 0.3 and me.gain[1] == 0.0, me      # vin did not vary
    assert 0.35 < me.time_const_s < 1.25, me


def test_the_predictive_variance_is_not_counted_as_model_error(twin):
    """Windows that are the twin's own prediction plus its own sensor noise leave a model error far
    below that noise; the offline fit with the same variance agrees."""
    noise = twin.posterior.values[0, twin.posterior.names.index("noise:q")]
    assert learned(twin, 5, 8, model_error=False).model_error.scale([REF, 7.4])[0] < 0.3 * noise
    rng = np.random.default_rng(0)
    me = d.fit_model_error(noise * rng.standard_normal((8, 199, 1)), np.ones((8, 199)), np.ones((8, 1)), 0.005,
                           variance=np.full((8, 199, 1), noise ** 2))
    assert me.sd[0] < 0.3 * noise


def test_no_fit_before_min_windows_the_ring_keeps_the_newest_and_bad_input_is_refused(twin):
    from twin_bayes.models import WindowError
    t = learned(twin, 1, d.MIN_WINDOWS - 1)
    assert t.model_error is None and int(t.state.model_error.count) == d.MIN_WINDOWS - 1
    t = learned(twin, 1, d.WINDOWS + 3)
    ring = t.state.model_error
    assert int(ring.count) == int(ring.fitted_count) == d.WINDOWS + 3 and t.model_error is not None
    newest = list(windows(twin, 1, d.WINDOWS + 3))[-3:]            # the newest three are in slots 0-2
    for slot, w in enumerate(newest):
        np.testing.assert_array_equal(ring.q0[slot], w["q"][0])
        np.testing.assert_array_equal(ring.observed[slot], w["q"][1:])
    bad = {**newest[0], "q": np.where(np.arange(len(newest[0]["q"]))[:, None] == 5, np.nan, newest[0]["q"])}
    with pytest.raises(WindowError):
        t.record_window(bad)
    assert int(t.state.model_error.count) == d.WINDOWS + 3             # nothing changed


def test_a_short_window_is_masked_and_an_offline_fit_is_kept_in_the_state(twin, tmp_path):
    """A window shorter than the twin's (padded) counts its samples only and compiles nothing new; a
    model error set on the twin (an offline fit) is in its state, saved and loaded with the posterior."""
    from twin_bayes.inference.store import load_posterior, save_posterior
    t = learned(twin, 2, d.MIN_WINDOWS)
    compiled = d.record._cache_size(), d.refit._cache_size()
    w = next(windows(twin, 3, 1))
    t.learn_model_error({k: (v[:101] if k != "settings" else {"servo_kp": 250.0}) for k, v in w.items()})
    assert (d.record._cache_size(), d.refit._cache_size()) == compiled   # other settings, masks: no new executable
    ring = t.state.model_error
    assert np.isfinite(t.model_error.sd).all() and np.asarray(ring.mask)[d.MIN_WINDOWS].sum() == 100
    offline = d.ModelError(np.array([0.063]), 1.46, np.array([141.0, 7.4]), np.array([0.5, 0.0]))
    t.model_error = offline
    back = load_posterior(Twin(twin.cfg, twin.model), save_posterior(t, tmp_path / "p")).model_error
    np.testing.assert_allclose(back.sd, offline.sd)
    assert back.time_const_s == pytest.approx(1.46) and back.gain[0] == pytest.approx(0.5)
    t.model_error = None
    assert t.model_error is None


def _two_gain_recordings(n: int, seed: int = 0, beta: float = 0.6):
    """n recordings (n, 1200, 1) of 6 s at 200 Hz: AR(1) paths (τ 1.5 s, sd 0.05 rad at kp = 100,
    ∝ kp^beta), half at kp = 100 and half at kp = 200; and their settings (n, 2)."""
    kp = np.repeat([100.0, 200.0], n // 2)
    paths = [np.asarray(d.ar1_paths(jax.random.PRNGKey(1000 * seed + i), np.array([0.05 * (k / 100.0) ** beta]),
                                    float(np.exp(-0.005 / 1.5)), (1, 1200, 1)))[0] for i, k in enumerate(kp)]
    return np.stack(paths), np.stack([kp, np.full(n, 7.4)], 1)


def test_the_fit_is_the_maximum_of_its_target_from_any_start():
    """Damped Newton ends where the target's curvature is negative and its Newton decrement vanishes, and
    every start ends there (a quasi-Newton search stopped at its first line search from some starts)."""
    residuals, settings = _two_gain_recordings(8)
    args = (jnp.asarray(residuals), jnp.zeros(residuals.shape), jnp.ones(residuals.shape[:2]), jnp.asarray(settings),
            0.005)
    log_target, _, varies = d._log_target(*args)
    assert np.asarray(varies).tolist() == [True, False]
    ends = []
    for start in ([np.log(0.05), 0.0, 0.0, 0.0], [np.log(0.2), np.log(5.0), 1.5, 0.0], [np.log(0.01), -2.0, -1.0, 0.0]):
        log_sd, log_tau, _, gain = d._fit(*args, jnp.asarray(start))
        p = jnp.concatenate([log_sd, log_tau[None], gain])
        g, h = np.asarray(jax.grad(log_target)(p))[:3], np.asarray(jax.hessian(log_target)(p))[:3, :3]
        assert np.all(np.linalg.eigvalsh(h) < 0)                       # the constant vin's gain (last): flat
        assert -0.5 * g @ np.linalg.solve(h, g) < 1e-8                 # Newton decrement (nats): at the maximum
        ends.append(np.asarray(p))
    np.testing.assert_allclose(ends[1:], [ends[0]] * 2, atol=1e-4)


def test_a_settings_exponent_is_shrunk_by_its_prior_as_much_as_the_recordings_are_few():
    """Eight recordings (one observation each for the prior) pull the exponent toward 0 from its maximum
    likelihood, more the narrower the prior; 400 recordings of the same error leave it where the data put it
    (0.6)."""
    residuals, settings = _two_gain_recordings(8)
    fit = lambda r, s, sd: d.fit_model_error(r, np.ones(r.shape[:2]), s, 0.005, gain_sd=sd)  # noqa: E731
    gains = [fit(residuals, settings, sd).gain[0] for sd in (np.inf, 2.0, 1.0, 0.5)]
    assert gains[0] > gains[1] > gains[2] > gains[3] > 0.0, gains
    assert gains[3] < 0.6 * gains[0], gains
    many, many_settings = _two_gain_recordings(400, seed=1)
    free, shrunk = fit(many, many_settings, np.inf).gain[0], fit(many, many_settings, 1.0).gain[0]
    assert abs(free - 0.6) < 0.1 and abs(shrunk - free) < 0.01, (free, shrunk)
