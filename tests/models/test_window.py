"""TwinModel windows: padding to the fixed length, the mask, validation (no JIT compilation here)."""
import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.models import TwinModel, WindowError


@pytest.fixture(scope="module")
def model():
    return TwinModel(load_config("arm2"))


def _data(n, nq=2, nv=2, nu=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, nq)), rng.normal(size=(n, nv)), rng.normal(size=(n, nu))


def test_fixed_length_and_segments(model):
    cfg = model.cfg.inference
    assert model.window_samples == int(round(cfg.window_s / model.robot.dt)) + 1 == 501
    assert model.segment_steps == cfg.segment_steps == 25
    assert model.names[-2:] == ("noise:q", "noise:qd")
    assert model.dim == 8  # six physical parameters and two noise scales


@pytest.mark.parametrize("n", [26, 300, 501])
def test_short_windows_are_padded_and_masked(model, n):
    T = model.window_samples
    q, qd, u = _data(n)
    w = model.window(q, qd, u)
    assert w.q.shape == (T, 2) and w.qd.shape == (T, 2) and w.ctrl.shape == (T, 2) and w.mask.shape == (T,)
    np.testing.assert_array_equal(np.asarray(w.q[:n]), q)
    np.testing.assert_array_equal(np.asarray(w.ctrl[:n]), u)
    np.testing.assert_array_equal(np.asarray(w.mask), np.r_[np.ones(n), np.zeros(T - n)])
    # padding repeats the last sample (finite, harmless under the zero mask)
    np.testing.assert_array_equal(np.asarray(w.qd[n:]), np.repeat(qd[-1:], T - n, axis=0))
    s = (T - 1) // model.segment_steps
    assert w.state_jac.shape == (s, model.segment_steps * 4, 4)
    assert w.settings.shape == (len(model.setting_names),)


BAD = {
    "nan_q": lambda q, qd, u: (np.where(np.arange(len(q))[:, None] == 7, np.nan, q), qd, u),
    "inf_qd": lambda q, qd, u: (q, np.where(np.arange(len(qd))[:, None] == 3, np.inf, qd), u),
    "nan_ctrl": lambda q, qd, u: (q, qd, np.full_like(u, np.nan)),
    "wrong_width": lambda q, qd, u: (np.c_[q, q[:, :1]], qd, u),
    "one_d": lambda q, qd, u: (q[:, 0], qd, u),
    "three_d": lambda q, qd, u: (q[None], qd, u),
    "lengths_disagree": lambda q, qd, u: (q, qd[:-1], u),
    "empty": lambda q, qd, u: (q[:0], qd[:0], u[:0]),
    "one_sample": lambda q, qd, u: (q[:1], qd[:1], u[:1]),
    "shorter_than_a_segment": lambda q, qd, u: (q[:25], qd[:25], u[:25]),
    "strings": lambda q, qd, u: (np.full(q.shape, "x", dtype=object), qd, u),
    "none": lambda q, qd, u: (None, qd, u),
    "ragged": lambda q, qd, u: ([[0.0, 1.0], [2.0]] * 20, qd, u),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_telemetry_raises_window_error(model, case):
    q, qd, u = BAD[case](*_data(100))
    with pytest.raises(WindowError):
        model.window(q, qd, u)


def test_too_long_window_says_split_it(model):
    q, qd, u = _data(model.window_samples + 1)
    with pytest.raises(WindowError, match="split it"):
        model.window(q, qd, u)


def test_error_names_the_problem(model):
    q, qd, u = _data(100)
    q[42, 1] = np.nan
    with pytest.raises(WindowError, match=r"q: non-finite values at rows \[42\]"):
        model.window(q, qd, u)
    with pytest.raises(WindowError, match=r"at least 26 needed"):
        model.window(q[:10], qd[:10], u[:10])
