"""Policy gradients through the twin against central finite differences on a short horizon:
reverse mode on arm2 (no constraint rows), forward mode on the servo pendulum (friction rows), and
reverse mode through the floating humanoid's contacts with one solver iteration per step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.objective import cvar, objective, value_and_grad
from twin_bayes.policy.tasks import arm2_task, humanoid_push_task, servo_task
from twin_bayes.sim import load_robot

CASES = {
    # robot, task of 0.1 s, particles (nominal and a changed one)
    "arm2": (lambda r: arm2_task(r, seconds=0.1, knots=4), {"body_mass:forearm": 0.9}),
    "servo_pendulum": (lambda r: servo_task(r, seconds=0.1, knots=4), {"servo_kt:servo": 0.45}),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    robot = load_robot(request.param)
    make_task, changed = CASES[request.param]
    task = make_task(robot)
    thetas = jnp.stack([robot.to_vector(robot.nominal()), robot.to_vector(changed)])
    ff = None if robot.name == "arm2" else task.q_ref
    p0 = initial_policy(task, ff)
    policy = p0._replace(knots=p0.knots + 0.3 * jnp.sin(jnp.arange(p0.knots.size)).reshape(p0.knots.shape))
    vg = jax.jit(value_and_grad, static_argnums=0)
    f = jax.jit(objective, static_argnums=0)
    return robot, task, thetas, policy, vg, f


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_gradient_matches_central_differences(case, alpha):
    robot, task, thetas, policy, vg, f = case
    value, grad = vg(robot, thetas, policy, task, alpha)
    assert np.isclose(value, f(robot, thetas, policy, task, alpha))
    flat, unravel = ravel_pytree(policy)
    g = ravel_pytree(grad)[0]
    assert np.all(np.isfinite(g)) and np.linalg.norm(g) > 0
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(3):
        v = rng.normal(size=flat.shape)
        v /= np.linalg.norm(v)
        fd = (f(robot, thetas, unravel(flat + eps * v), task, alpha)
              - f(robot, thetas, unravel(flat - eps * v), task, alpha)) / (2 * eps)
        np.testing.assert_allclose(g @ v, fd, rtol=1e-4, atol=1e-7 * abs(value))


@pytest.mark.slow   # about 2.5 min of compile on 2 cores
def test_humanoid_balance_gradient_through_contacts_matches_central_differences():
    """The policy twin of the humanoid experiment over 0.06 s (20 steps, pushed for 30 ms), standing on its
    feet; every part of the policy perturbed (knots, balance reflex); two particles."""
    robot = load_robot("humanoid", solver_iterations=1)
    task = humanoid_push_task(robot, seconds=0.06, at_s=0.01, for_s=0.03, knots=3)
    p0 = initial_policy(task)
    rng = np.random.default_rng(0)
    policy = p0._replace(knots=p0.knots + 0.05 * rng.normal(size=p0.knots.shape),
                         base_gain=0.1 * rng.normal(size=p0.base_gain.shape))
    thetas = jnp.stack([robot.to_vector(robot.nominal()),
                        robot.to_vector({"body_mass:torso": 12.0, "geom_friction:left_foot": 0.7})])
    value, grad = jax.jit(value_and_grad, static_argnums=0)(robot, thetas, policy, task)
    f = jax.jit(objective, static_argnums=0)
    flat, unravel = ravel_pytree(policy)
    g = ravel_pytree(grad)[0]
    assert np.all(np.isfinite(g)) and np.abs(ravel_pytree(grad.base_gain)[0]).max() > 0
    for _ in range(3):
        v = rng.normal(size=flat.shape)
        v /= np.linalg.norm(v)
        eps = 1e-5
        fd = (f(robot, thetas, unravel(flat + eps * v), task)
              - f(robot, thetas, unravel(flat - eps * v), task)) / (2 * eps)
        np.testing.assert_allclose(g @ v, fd, rtol=1e-5, atol=1e-8 * abs(value))


def test_cvar_is_the_mean_of_the_worst_fraction():
    costs = jnp.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    assert np.isclose(cvar(costs, 1.0), costs.mean())
    assert np.isclose(cvar(costs, 0.5), (9.0 + 4.0 + 3.0) / 3)
    assert np.isclose(cvar(costs, 0.01), 9.0)
