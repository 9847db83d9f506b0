"""Hierarchical priors for a fleet: four emulated arm2 robots whose forearm masses lie around a population value.

One NUTS fit of the fleet and one of the data-poor robot alone serve every test of the
fit (kept small for 2 cores: forearm mass per robot, upper-arm mass and elbow damping shared,
the other joint parameters set to the emulated robots' values; 0.1 s windows; two chains of
50 warm-up and 50 kept draws). Robots a-c send one 0.1 s window each,
robot d a single 0.05 s segment, padded to the same window shape.
"""
import json

import jax
import numpy as np
import pytest

from twin_bayes.cli import main
from twin_bayes.config import ConfigError, load_config
from twin_bayes.data import write_npz
from twin_bayes.diagnostics import load_netcdf
from twin_bayes.inference import Twin, batch
from twin_bayes.inference.fleet import fit_fleet, save_fleet, stack_fleet_windows
from twin_bayes.inference.store import load_posterior
from twin_bayes.models import FleetModel, TwinModel, twin_model
from twin_bayes.sim.emulator import emulate

SHARED = {"body_mass:upper_arm": 1.25, "dof_damping:elbow": 0.02}     # estimated, one value for the fleet
FIXED = {"dof_damping:shoulder": 0.08, "dof_armature:shoulder": 0.012, "dof_armature:elbow": 0.004}
CONFIG = """
name = "arm2-fleet"
[robot]
name = "arm2"
[parameters]
"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }
"body_mass:upper_arm" = { dist = "lognormal", scale = 0.3 }
"dof_damping:elbow" = { dist = "lognormal", scale = 0.5 }
[settings]
""" + "\n".join(f'"{k}" = {v}' for k, v in FIXED.items()) + """
[observation]
noise_scale = { q = 0.002, qd = 0.02 }
[inference]
window_s = 0.1
segment_steps = 25
[fleet]
hierarchical = ["body_mass:forearm"]
spread_scale = 0.05
"""
POPULATION = 0.55                                # population forearm mass (kg), nominal 0.6
SPREAD = 0.04                                    # sd of log(mass) across the fleet
OFFSETS = {"a": 0.9, "b": 0.4, "c": 0.5, "d": -1.8}   # robots' offsets in population sds
TRUE_MASS = {r: POPULATION * float(np.exp(SPREAD * e)) for r, e in OFFSETS.items()}
POOR = "d"
POOR_SAMPLES = 26                                # one 25-step segment
WARMUP, SAMPLES, CHAINS = 50, 50, 2


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "arm2_fleet.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def fleet(cfg_path) -> FleetModel:
    return FleetModel(TwinModel(load_config(cfg_path)), len(OFFSETS))


@pytest.fixture(scope="module")
def recordings(fleet):
    model = fleet.model
    seconds = (model.window_samples - 1) * model.robot.dt
    return {r: emulate(model.robot, {**SHARED, **FIXED, "body_mass:forearm": m}, seconds, seed=20 + i)
            for i, (r, m) in enumerate(TRUE_MASS.items())}


@pytest.fixture(scope="module")
def windows(fleet, recordings):
    out = {}
    for r, tr in recordings.items():
        n = POOR_SAMPLES if r == POOR else len(tr.q)
        out[r] = [fleet.model.window(tr.q[:n], tr.qd[:n], tr.ctrl[:n])]
    return out


@pytest.fixture(scope="module")
def fitted(fleet, windows):
    """The fleet fit, the compiled state-Jacobian kernels it added, and the poor robot fitted alone."""
    before = twin_model.state_jacobian_jit._cache_size()
    fit = fit_fleet(fleet, jax.random.PRNGKey(0), list(windows), list(windows.values()),
                    num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS)
    compiled = twin_model.state_jacobian_jit._cache_size() - before
    model = fleet.model
    z_ref = np.median(np.asarray(model.sample_prior(jax.random.PRNGKey(0), 2001)), axis=0)
    alone_w = jax.tree.map(lambda x: x[None], model.with_state_jacobian(windows[POOR][0], z_ref))
    alone = batch.fit_nuts(model, jax.random.PRNGKey(1), alone_w, WARMUP, SAMPLES, CHAINS)
    values = np.asarray(jax.vmap(model.constrain)(alone.particles.z))[:, model.names.index("body_mass:forearm")]
    return fit, compiled, values


@pytest.mark.slow   # the fleet NUTS fit: about 6 minutes on 2 cores
def test_each_robot_and_the_population_cover_their_truth(fitted):
    fit, compiled, _ = fitted
    s = fit.summary()
    for robot, mass in TRUE_MASS.items():
        m = s["robots"][robot]["body_mass:forearm"]
        print(f"{robot}: truth {mass:.4f}  mean {m['mean']:.4f} sd {m['sd']:.4f} [{m['q05']:.4f}, {m['q95']:.4f}]")
        assert m["q05"] <= mass <= m["q95"], robot
    pop = s["population"]["population:body_mass:forearm"]
    print("population", pop, "spread", s["population"]["spread:body_mass:forearm"])
    assert pop["q05"] <= POPULATION <= pop["q95"]
    assert np.all(np.isfinite(fit.result.chains)) and fit.result.divergent.mean() <= 0.25
    # shared parameters and noise scales: every robot's posterior holds the same draws
    for name, true in SHARED.items():
        draws = [fit.robot_draws(r)[name] for r in fit.robot_ids]
        assert all(np.array_equal(draws[0], d) for d in draws), name
        assert np.quantile(draws[0], 0.05) <= true <= np.quantile(draws[0], 0.95), name
    assert compiled <= 1, "all robots' windows (the short one padded) share one compiled shape"


@pytest.mark.slow
def test_partial_pooling_narrows_a_data_poor_robot(fitted):
    """Robot d (one 0.05 s segment): its fleet posterior is narrower than alone.

    Alone, its forearm mass trades off against the upper-arm mass and elbow damping it must
    estimate from the same segment; in the fleet those are pinned by the other robots' data.
    (The shrinkage toward the population location is small here, since even one segment pins
    the mass to about 1 %, well inside the 4 % spread; it is printed, not asserted.)
    """
    fit, _, alone = fitted
    s = fit.summary()
    pooled = s["robots"][POOR]["body_mass:forearm"]
    pop = s["population"]["population:body_mass:forearm"]["mean"]
    print(f"alone {alone.mean():.4f} ± {alone.std():.4f}, fleet {pooled['mean']:.4f} ± {pooled['sd']:.4f}, "
          f"population {pop:.4f}, truth {TRUE_MASS[POOR]:.4f}")
    assert pooled["sd"] < 0.8 * alone.std()


@pytest.mark.slow
def test_saved_fleet_reloads_per_robot(fitted, cfg_path, tmp_path):
    fit, _, _ = fitted
    summary = save_fleet(fit, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["robots"].keys() == set(OFFSETS)
    twin = load_posterior(Twin(fit.fleet.model.cfg, fit.fleet.model), tmp_path / POOR)
    assert twin.posterior.summary()["body_mass:forearm"]["mean"] == pytest.approx(
        summary["robots"][POOR]["body_mass:forearm"]["mean"], rel=1e-9)
    pop = load_netcdf(tmp_path / "population" / "posterior.nc")
    assert set(pop.posterior.data_vars) == {f"{k}:body_mass:forearm" for k in ("population", "spread", "new_robot")}


def test_fleet_windows_are_padded_to_one_shape(fleet, windows):
    """Robots with fewer windows get masked copies: shapes (B, R, ...), no likelihood from padding."""
    lists = [windows["a"] * 2, windows["b"], windows["c"], windows[POOR]]
    z = fleet.model.unconstrain(np.array([0.55, 1.25, 0.02, 0.002, 0.02]))
    w = stack_fleet_windows(fleet, lists, z)
    assert w.q.shape == (2, 4, fleet.model.window_samples, 2)
    assert w.mask[0, 3].sum() == POOR_SAMPLES and w.mask[1, 1:].sum() == 0 and w.mask[1, 0].sum() > 0
    fz = np.concatenate([z, [np.log(0.05)], np.zeros(4)])       # offsets 0: every robot at z
    all_a = stack_fleet_windows(fleet, [windows["a"]] * 4, z)
    log_lik = jax.jit(fleet.log_lik)
    only_a = jax.tree.map(lambda x: x[1], w)                      # robot a's window, the others padding
    assert float(log_lik(fz, only_a)) == pytest.approx(float(log_lik(fz, jax.tree.map(lambda x: x[0], all_a))) / 4,
                                                       rel=1e-9)


def test_per_robot_values_respect_bounds_and_the_prior_is_non_centred(tmp_path):
    """A bounded (uniform) hierarchical parameter stays inside its bounds for any offsets."""
    text = CONFIG.replace('"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }',
                          '"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }\n'
                          '"latency_s" = { dist = "uniform", low = 0.0, high = 0.02 }')
    text = text.replace('hierarchical = ["body_mass:forearm"]', 'hierarchical = ["body_mass:forearm", "latency_s"]')
    path = tmp_path / "bounded.toml"
    path.write_text(text)
    fleet = FleetModel(TwinModel(load_config(path)), 3)
    assert fleet.dim == 6 + 2 * (1 + 3)
    assert fleet.names[0] == "population:body_mass:forearm" and fleet.names[1] == "population:latency_s"
    z = np.asarray(fleet.sample_prior(jax.random.PRNGKey(3), 64)) * 4.0     # far into the tails
    values = np.asarray(jax.vmap(lambda zi: jax.vmap(fleet.model.constrain)(fleet.robot_z(zi)))(z))
    assert np.all(values[..., 0] > 0) and np.all((values[..., 1] > 0) & (values[..., 1] < 0.02))
    shared, log_spread, offsets = fleet.split(z[0])
    expected = (fleet.model.log_prior(shared) + np.sum(fleet.spread_prior.log_prob(np.exp(log_spread)) + log_spread)
                + np.sum(-0.5 * offsets ** 2 - 0.5 * np.log(2 * np.pi)))
    assert float(fleet.log_prior(z[0])) == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("fleet_section, message", [
    ('hierarchical = ["body_mass:forarm"]', r"fleet.hierarchical: \['body_mass:forarm'\] are not estimated"),
    ('hierarchical = ["dof_damping:shoulder"]', r"fleet.hierarchical: \['dof_damping:shoulder'\] are not estimated"),
    ('hierarchical = ["body_mass:forearm", "body_mass:forearm"]', "named more than once"),
    ('hierarchical = []', "fleet.hierarchical"),
    ('hierarchical = ["body_mass:forearm"]\nspread_scale = 0.0', "fleet.spread_scale"),
    ('hierarchical = ["body_mass:forearm"]\nspread = 0.1', "fleet.spread: Extra inputs"),
])
def test_bad_fleet_sections_name_the_key(tmp_path, fleet_section, message):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace('hierarchical = ["body_mass:forearm"]\nspread_scale = 0.05', fleet_section))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_fit_fleet_command_refuses_bad_input(cfg_path, recordings, tmp_path, capsys):
    files = {}
    for r, tr in recordings.items():
        files[r] = tmp_path / f"{r}.npz"
        write_npz(files[r], tr)
    plain = tmp_path / "plain.toml"
    plain.write_text(CONFIG.split("[fleet]")[0])
    out = ["--out", str(tmp_path / "o")]
    cases = {
        "no [fleet] section": ["--config", str(plain), "--robot", "a", str(files["a"]),
                               "--robot", "b", str(files["b"])],
        "at least 2 robots": ["--config", str(cfg_path), "--robot", "a", str(files["a"])],
        "more than once": ["--config", str(cfg_path), "--robot", "a", str(files["a"]), "--robot", "a", str(files["b"])],
        "not usable": ["--config", str(cfg_path), "--robot", "../x", str(files["a"]), "--robot", "b", str(files["b"])],
        "robot id, then its data": ["--config", str(cfg_path), "--robot", "a", "--robot", "b", str(files["b"])],
        "missing.npz": ["--config", str(cfg_path), "--robot", "a", str(tmp_path / "missing.npz"),
                        "--robot", "b", str(files["b"])],
    }
    for message, argv in cases.items():
        assert main(["fit-fleet", *argv, *out]) == 2, message
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
