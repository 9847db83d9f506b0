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
