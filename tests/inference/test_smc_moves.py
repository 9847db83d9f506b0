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
