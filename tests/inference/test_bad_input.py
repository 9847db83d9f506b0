"""Bad telemetry never reaches the posterior: `Twin.update` raises WindowError and leaves the
posterior (object, version, particles, weights, pending) exactly as it was; `Twin.predict`
rejects bad shapes and non-finite values with ValueError."""
import jax.numpy as jnp
import numpy as np
import pytest

from twin_bayes.inference import Twin
from twin_bayes.models import WindowError


def _nan_at(a, row, col=0, value=np.nan):
    a = np.array(a, dtype=np.float64)
    a[row, col] = value
    return a


BAD_WINDOWS = {
    "nan_in_q": lambda w, T: {**w, "q": _nan_at(w["q"], 100)},
    "nan_in_first_q": lambda w, T: {**w, "q": _nan_at(w["q"], 0, 1)},
    "inf_in_qd": lambda w, T: {**w, "qd": _nan_at(w["qd"], 5, 1, np.inf)},
    "nan_in_ctrl": lambda w, T: {**w, "ctrl": _nan_at(w["ctrl"], -1)},
    "q_wrong_width": lambda w, T: {**w, "q": np.c_[w["q"], w["q"][:, :1]]},
    "ctrl_too_narrow": lambda w, T: {**w, "ctrl": w["ctrl"][:, :1]},
    "q_one_d": lambda w, T: {**w, "q": w["q"][:, 0]},
    "q_transposed": lambda w, T: {**w, "q": w["q"].T},
    "lengths_disagree": lambda w, T: {**w, "qd": w["qd"][:-1]},
    "empty": lambda w, T: {k: v[:0] for k, v in w.items()},
    "shorter_than_one_segment": lambda w, T: {k: v[:25] for k, v in w.items()},
    "one_sample_too_long": lambda w, T: {k: np.vstack([v, v[-1:]]) for k, v in w.items()},
    "twice_too_long": lambda w, T: {k: np.vstack([v, v]) for k, v in w.items()},
    "non_numeric_strings": lambda w, T: {**w, "q": np.full(w["q"].shape, "0.1x", dtype=object)},
    "none": lambda w, T: {**w, "qd": None},
    "ragged_lists": lambda w, T: {**w, "ctrl": [[0.0, 1.0], [0.0]] * (T // 2)},
    "dict_values": lambda w, T: {**w, "q": {"a": 1}},
}


@pytest.fixture(scope="module")
def good(stream, stream_windows):
    """The streamed twin (posterior version 5) and a valid full window for it."""
    assert stream.twin.posterior.version == len(stream_windows)
    return stream.twin, {k: np.asarray(v) for k, v in stream_windows[0].items()}


@pytest.mark.parametrize("case", sorted(BAD_WINDOWS))
def test_bad_window_raises_and_leaves_the_posterior_alone(good, helpers, case):
    twin, w = good
    bad = BAD_WINDOWS[case](w, twin.model.window_samples)
    before = helpers.snapshot(twin)
    with pytest.raises(WindowError):
        twin.update(bad)
    helpers.assert_unchanged(twin, before)


def test_window_error_message_names_the_problem(good, helpers):
    twin, w = good
    before = helpers.snapshot(twin)
    with pytest.raises(WindowError, match=r"q: non-finite values at rows \[100\]"):
        twin.update({**w, "q": _nan_at(w["q"], 100)})
    with pytest.raises(WindowError, match=r"split it"):
        twin.update({k: np.vstack([v, v]) for k, v in w.items()})
    with pytest.raises(WindowError, match=r"at least 26 needed"):
        twin.update({k: v[:10] for k, v in w.items()})
    helpers.assert_unchanged(twin, before)


def test_missing_channel_is_a_window_error(good, helpers):
    """A telemetry dict without 'ctrl' is bad input like any other."""
    twin, w = good
    before = helpers.snapshot(twin)
    with pytest.raises(WindowError):
        twin.update({"q": w["q"], "qd": w["qd"]})
    helpers.assert_unchanged(twin, before)


def test_hand_built_window_with_nan_is_rejected_before_inference(small_cfg, model, stream_windows, helpers):
    """`update` also takes a ready-made `Window`; a NaN in one must not reach the particles either."""
    twin = Twin(small_cfg, model)  # a fresh twin: the streamed one must not be touched
    w = stream_windows[0]
    good = twin.window(w["q"], w["qd"], w["ctrl"])
    bad = good._replace(q=good.q.at[17, 0].set(jnp.nan))
    before = helpers.snapshot(twin)
    with pytest.raises(WindowError):
        twin.update(bad)
    helpers.assert_unchanged(twin, before)


BAD_PREDICTIONS = {
    "commands_one_d": lambda q0, qd0, u: (q0, qd0, u[:, 0]),
    "commands_wrong_width": lambda q0, qd0, u: (q0, qd0, np.c_[u, u]),
    "commands_three_d": lambda q0, qd0, u: (q0, qd0, u[None]),
    "commands_nan": lambda q0, qd0, u: (q0, qd0, _nan_at(u, 3)),
    "commands_inf": lambda q0, qd0, u: (q0, qd0, _nan_at(u, 0, 1, -np.inf)),
    "q0_wrong_shape": lambda q0, qd0, u: (np.r_[q0, 0.0], qd0, u),
    "q0_as_row": lambda q0, qd0, u: (q0[None], qd0, u),
    "qd0_scalar": lambda q0, qd0, u: (q0, 0.0, u),
    "q0_nan": lambda q0, qd0, u: (np.array([np.nan, 0.0]), qd0, u),
    "qd0_inf": lambda q0, qd0, u: (q0, np.array([0.0, np.inf]), u),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTIONS))
def test_predict_rejects_bad_input(good, helpers, case):
    twin, w = good
    q0, qd0, u = BAD_PREDICTIONS[case](w["q"][0], w["qd"][0], w["ctrl"][:50])
    before = helpers.snapshot(twin)
    key = np.array(twin.key)
    with pytest.raises(ValueError):
        twin.predict(q0, qd0, u)
    helpers.assert_unchanged(twin, before)
    np.testing.assert_array_equal(np.array(twin.key), key)  # not even a random key was used
