"""The integrated autocorrelation time against closed forms, and its two users agreeing."""
import numpy as np
import pytest

from twin_bayes.inference.autocorrelation import integrated_time, lagged_products
from twin_bayes.inference.whole_log import autocorrelation_time


def ar1(rng, phi, shape):
    """AR(1) series (B, T, C) with coefficient phi, stationary from the first sample."""
    eta = rng.standard_normal(shape)
    x = np.empty(shape)
    x[:, 0] = eta[:, 0] / np.sqrt(1 - phi ** 2)
    for t in range(1, shape[1]):
        x[:, t] = phi * x[:, t - 1] + eta[:, t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_the_time_of_an_ar1_series_is_its_closed_form(phi):
    # 1 + 2 Σ φ^k = (1 + φ) / (1 − φ); the cutoff at ρ < 0.05 drops the tail Σ_{k>K} φ^k (≤ 0.2 at 0.8).
    x = ar1(np.random.default_rng(0), phi, (40, 500, 2))
    kappa = float(integrated_time(*lagged_products(x, np.ones_like(x))))
    exact = (1 + phi) / (1 - phi)
    assert abs(kappa - exact) < 0.1 * exact + 0.05


def test_padding_and_pooling_windows_leave_the_estimate():
    rng = np.random.default_rng(1)
    x = ar1(rng, 0.8, (20, 300, 1))
    mask = np.ones_like(x)
    mask[:, 200:] = 0.0                                  # trailing padding, as in a short window
    kappa = float(integrated_time(*lagged_products(x * mask, mask)))
    halves = [lagged_products(x[:10, :200], mask[:10, :200]), lagged_products(x[10:, :200], mask[10:, :200])]
    pooled = float(integrated_time(halves[0][0] + halves[1][0], halves[0][1] + halves[1][1]))
    assert kappa == pytest.approx(pooled, rel=1e-9)
    assert kappa == pytest.approx(9.0, rel=0.15)


def test_the_whole_log_fit_uses_the_same_rule():
    rng = np.random.default_rng(2)
    x = ar1(rng, 0.6, (3, 400, 2))
    mask = np.ones((3, 400))
    mask[1, 300:] = 0.0
    direct = float(integrated_time(*lagged_products(x * mask[..., None], np.broadcast_to(mask[..., None], x.shape))))
    assert autocorrelation_time(x, mask) == pytest.approx(direct, rel=1e-12)
    assert autocorrelation_time(x, mask) == pytest.approx(4.0, rel=0.2)


def test_newtons_last_forward_pass_gives_the_predictions_at_the_mode(model, stream, stream_windows):
    """κ is measured on the predictions of Newton's last forward-mode pass, moved to the mode to first
    order (`laplace.Linearisation.at`), not on a simulation of its own: exact at the pass's point,
    and off it by the second-order remainder (a quarter for half the step)."""
    import jax
    from twin_bayes.inference.laplace import value_grad_curvature
    w = stream.twin.as_window(stream_windows[1])
    windows = jax.tree.map(lambda x: x[None], w)
    z = jax.numpy.exp(stream.twin.particles.log_weights) @ stream.twin.particles.z
    lin = jax.jit(value_grad_curvature)(model, stream.twin.state.prior, windows, z)[3]
    simulate = jax.jit(type(model).segment_predictions)
    step = 0.01 * np.ones(model.dim)                   # 1 % on every parameter
    errors, moved = [], []
    for dz in (0.0 * step, step, 0.5 * step):
        q_lin = lin.at(z + dz)[0]
        q_sim = simulate(model, z + dz, w)[0]
        errors.append(float(np.max(np.abs(np.asarray(q_lin[0]) - np.asarray(q_sim)))))
        moved.append(float(np.max(np.abs(np.asarray(q_sim) - np.asarray(lin.q[0])))))
    assert errors[0] < 1e-12, errors
    assert 0.0 < errors[1] < 0.01 * moved[1], (errors, moved)   # measured: 5.3e-6 rad of a 1.1e-3 rad move
    assert errors[2] == pytest.approx(errors[1] / 4, rel=0.1), errors
