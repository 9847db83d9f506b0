"""The tempered update's moves (`smc.decorrelating_moves`): each stage moves its particles until they
have forgotten where resampling put them, against a closed-form target."""
import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.inference.smc import Moves, _mean_correlation, decorrelating_moves

D, N = 3, 64


def log_target(x):
    """Standard normal in D dimensions: every coordinate has sd 1."""
    return -0.5 * x @ x


def collapsed_cloud():
    """What resampling leaves after a window that tempered long: N particles, copies of 4 points."""
    points = jax.random.normal(jax.random.key(0), (4, D))
    return jnp.repeat(points, N // 4, axis=0)


def move(moves: Moves, seed: int = 1):
    """One stage's moves of the collapsed cloud: MALA (HMC, one leapfrog step) with unit mass."""
    update, _ = decorrelating_moves(moves)(blackjax.hmc.init, log_target, blackjax.hmc.build_kernel(),
                                           num_mcmc_steps=None, n_particles=N)
    params = {"step_size": jnp.full((N,), 0.9), "inverse_mass_matrix": jnp.ones((N, D)),
              "num_integration_steps": jnp.ones((N,), int)}
    start = collapsed_cloud()
    moved, info = jax.jit(update)(jax.random.split(jax.random.key(seed), N), start, params)
    return start, np.asarray(moved), info


def test_a_collapsed_cloud_moves_until_it_has_forgotten_its_copies():
    """From 4 distinct points, the moves stop once the cloud's mean correlation with its start is at
    most the threshold (before the cap); every particle is then distinct and the cloud's sd is the
    target's, 1, within what 64 draws allow."""
    start, moved, info = move(Moves(1, 200, 0.1))
    assert 1 < int(info.moves) < 200
    assert float(_mean_correlation(start, moved)) <= 0.1
    assert len(np.unique(moved[:, 0])) == N
    np.testing.assert_allclose(moved.std(0), 1.0, atol=0.3)
    assert 0.3 < float(np.mean(info.acceptance_rate)) <= 1.0 and float(np.max(info.divergent)) == 0.0


def test_one_move_per_stage_leaves_the_cloud_near_its_copies():
    """The fixed single move the tempered update made before: the cloud still remembers its 4 points."""
    start, moved, info = move(Moves(1, 1, 0.1))
    assert int(info.moves) == 1
    assert float(_mean_correlation(start, moved)) > 0.3                 # 0.56 here; 0.09 after 3 moves


def test_least_and_most_bound_the_moves():
    assert int(move(Moves(7, 200, 0.99))[2].moves) == 7        # stopped by the least count, not the criterion
    assert int(move(Moves(1, 3, 0.0))[2].moves) == 3           # the cap, the criterion never met


def _mahalanobis_ratio(cov, sigma_chol, rng) -> float:
    """Mean of xᵀ cov⁻¹ x / D over draws x of the truth N(0, Σ): 1 when cov is Σ, > 1 when too narrow."""
    x = rng.standard_normal((400, sigma_chol.shape[0])) @ sigma_chol.T
    return float(np.mean(np.einsum("ki,ij,kj->k", x, np.linalg.inv(np.asarray(cov)), x)) / sigma_chol.shape[0])


def test_the_window_gaussian_of_a_small_cloud_is_not_too_narrow():
    """32 draws of a correlated N(0, Σ) in 15 dimensions (the sensor twin's case): their sample
    covariance makes the truth look twice as far as it is (too narrow along its small eigenvalues);
    the shrunk one (`smc.shrunk_moments`) within 15 %, over 20 clouds. From 4,000 draws both agree."""
    from twin_bayes.inference.posterior import Particles, moments
    from twin_bayes.inference.smc import shrunk_moments
    rng = np.random.default_rng(0)
    a = rng.standard_normal((15, 15))
    chol = np.linalg.cholesky(a @ a.T / 15 + 0.1 * np.eye(15))

    def ratios(n):
        clouds = [Particles(jnp.asarray(rng.standard_normal((n, 15)) @ chol.T), jnp.full(n, -np.log(n)))
                  for _ in range(20)]
        return [np.median([_mahalanobis_ratio(f(p)[1], chol, rng) for p in clouds]) for f in (moments, shrunk_moments)]

    raw, shrunk = ratios(32)
    assert raw > 1.8 and abs(shrunk - 1) < 0.15, (raw, shrunk)
    big = Particles(jnp.asarray(rng.standard_normal((4000, 15)) @ chol.T), jnp.full(4000, -np.log(4000)))
    np.testing.assert_allclose(shrunk_moments(big)[1], moments(big)[1], atol=0.02 * np.abs(moments(big)[1]).max())
