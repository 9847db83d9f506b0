"""`twin-bayes export-dr`: the generated domain-randomisation module draws posterior particles and
its (sys, in_axes) drive a vmapped Brax rollout exactly as the twin does with those particles."""
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.mjx import pipeline

from twin_bayes.cli import main
from twin_bayes.inference import Twin
from twin_bayes.inference.store import save_posterior
from twin_bayes.sim.rollout import system


@pytest.fixture(scope="module")
def posterior_dir(tmp_path_factory):
    """A saved arm2 posterior (the config's prior particles: 32 distinct, equally weighted)."""
    twin = Twin.from_config("arm2")
    out = tmp_path_factory.mktemp("posterior")
    save_posterior(twin, out, {"config": str(twin.cfg.source), "parameters": twin.posterior.summary()})
    return out, twin


@pytest.fixture(scope="module")
def exported(posterior_dir, tmp_path_factory):
    directory, _ = posterior_dir
    out = tmp_path_factory.mktemp("dr") / "arm2_dr.py"
    assert main(["export-dr", "--posterior", str(directory), "--out", str(out)]) == 0
    spec = importlib.util.spec_from_file_location("arm2_dr", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_holds_the_posterior(exported, posterior_dir):
    _, twin = posterior_dir
    assert exported.NAMES == list(twin.posterior.names)
    np.testing.assert_allclose(exported.PARTICLES, twin.posterior.values, rtol=1e-10)
    np.testing.assert_allclose(exported.WEIGHTS, twin.posterior.weights)
    # link masses, inertias (scaled with mass), damping and armature are randomised
    assert set(exported.FIELDS) == {"body_mass", "body_inertia", "dof_damping", "dof_armature"}


def test_randomised_systems_roll_out_like_the_twin_with_the_drawn_particles(exported, posterior_dir):
    _, twin = posterior_dir
    robot = twin.model.robot
    envs = 4
    sys_v, in_axes = exported.domain_randomize(robot.sys, jax.random.split(jax.random.PRNGKey(3), envs))
    assert in_axes.body_mass == 0 and in_axes.dof_damping == 0 and in_axes.geom_friction is None
    assert sys_v.body_mass.shape == (envs,) + robot.sys.body_mass.shape
    masses = np.asarray(exported.FIELDS["body_mass"])
    drawn = [int(np.argmin(np.abs(masses - np.asarray(m)).sum(1))) for m in sys_v.body_mass]
    q0, qd0, u = jnp.array([-0.3, 0.2]), jnp.zeros(2), jnp.array([1.0, -0.5])

    def steps(sys):
        state = jax.lax.fori_loop(0, 20, lambda _, s: pipeline.step(sys, s, u), pipeline.init(sys, q0, qd0))
        return state.q

    q_env = jax.jit(jax.vmap(steps, in_axes=(in_axes,)))(sys_v)
    for i, k in enumerate(drawn):
        theta = twin.model.theta(jnp.asarray(twin.posterior.values[k]), jnp.asarray(twin.model.default_settings))
        np.testing.assert_allclose(q_env[i], jax.jit(steps)(system(robot, theta)), rtol=1e-9, atol=1e-12)


def test_bad_input_exits_2_and_writes_nothing(posterior_dir, tmp_path, capsys):
    directory, _ = posterior_dir
    out = tmp_path / "dr.py"
    assert main(["export-dr", "--posterior", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["export-dr", "--posterior", str(directory), "--out", str(tmp_path / "dr.txt")]) == 2
    assert "Python file" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "summary.json").write_text(json.dumps({"parameters": {}}))
    assert main(["export-dr", "--posterior", str(bare), "--out", str(out)]) == 2
    assert "pass --config" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "dr.txt").exists()
