"""The network walking controller (`policy.walk_net`): Brax PPO's trained policy exported and run by
`policy run` on native MuJoCo.

The export is checked against Brax's own deterministic policy (`make_inference_fn`) on the same
parameters; the commands `simulate` sends against the network applied to the documented observation.
"""
import json

import jax
import numpy as np
import pytest

from twin_bayes import cli
from twin_bayes.policy import walk, walk_net
from twin_bayes.sim import load_robot


@pytest.fixture(scope="module")
def robot():
    return load_robot("humanoid")


@pytest.fixture(scope="module")
def trained(robot):
    """Brax PPO networks for the humanoid (hidden 16, 16) at a random initialisation, their observation
    normaliser updated on a batch far from zero mean and unit sd; the policy Brax would run and its export."""
    from brax.training.acme import running_statistics
    from brax.training.agents.ppo import networks as ppo_networks
    size = robot.nq - 2 + robot.nv
    nets = ppo_networks.make_ppo_networks(size, robot.nu, running_statistics.normalize,
                                          policy_hidden_layer_sizes=(16, 16))
    key_p, key_v, key_obs = jax.random.split(jax.random.PRNGKey(0), 3)
    batch = 3.0 + 2.0 * jax.random.normal(key_obs, (64, size))
    normalizer = running_statistics.update(running_statistics.init_state(jax.ShapeDtypeStruct((size,), batch.dtype)),
                                           batch)
    params = (normalizer, nets.policy_network.init(key_p), nets.value_network.init(key_v))
    policy = ppo_networks.make_inference_fn(nets)(params, deterministic=True)
    return policy, walk_net.from_brax(params[0], params[1])


def test_the_export_is_brax_ppos_deterministic_policy(robot, trained):
    policy, net = trained
    obs = np.random.default_rng(1).normal(3.0, 2.0, (32, robot.nq - 2 + robot.nv))
    ref = np.asarray(policy(obs, jax.random.PRNGKey(3))[0])
    assert np.abs(ref).max() > 0.1                      # not saturated nor zero: the layers matter
    np.testing.assert_allclose(net.act(obs), walk_net.CTRL * ref, atol=1e-9)


def test_simulate_sends_the_networks_commands_on_the_measured_observation(robot, trained):
    """Each command sent is the network on `observation` of the true state at the start of its control
    period plus that period's sensor noise (seeded as `simulate` documents)."""
    _, net = trained
    run = walk.real_run(robot, robot.nominal(), net, 0.06, 4)
    nq, nv, k_steps = robot.nq, robot.nv, walk.CONTROL_STEPS
    periods = len(run.sent[0]) // k_steps
    noise = np.random.default_rng(4).standard_normal((periods, nq + nv)) * np.r_[
        np.full(nq, walk.NOISE["q"]), np.full(nv, walk.NOISE["qd"])]
    q, qd = run.qpos[0, ::k_steps][:periods] + noise[:, :nq], run.qvel[0, ::k_steps][:periods] + noise[:, nq:]
    np.testing.assert_allclose(run.sent[0, ::k_steps], net.act(walk_net.observation(q, qd)), atol=1e-12)
    assert np.ptp(run.sent[0, ::k_steps], axis=0).max() > 1e-3    # the commands follow the state


def test_the_file_round_trips_bad_networks_are_refused_and_policy_run_runs_one(tmp_path, robot, trained, capsys):
    _, net = trained
    path = walk.save(net, tmp_path / "net.json", "humanoid", {"trained_on": "nothing"})
    back = walk.load(path, "humanoid")
    assert isinstance(back, walk_net.WalkNet)
    for a, b in zip((back.mean, back.std, *[x for layer in back.layers for x in layer]),
                    (net.mean, net.std, *[x for layer in net.layers for x in layer])):
        np.testing.assert_array_equal(a, b)
    doc = json.loads(path.read_text())
    network = doc["network"]
    layers = network["layers"]
    bad = {"version": ({**doc, "version": 2}, "version 2"),
           "missing": ({**doc, "network": None}, "corrupt network"),
           "chain": ({**doc, "network": {**network, "layers": layers[1:]}}, "do not chain"),
           "nan": ({**doc, "network": {**network, "mean": [float("nan")] + network["mean"][1:]}}, "non-finite"),
           "sd": ({**doc, "network": {**network, "std": [0.0] + network["std"][1:]}}, "non-positive"),
           "steps": ({**doc, "control_steps": 3}, "control_steps 3")}
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            walk.load(tmp_path / name, "humanoid")
    with pytest.raises(ValueError, match="not humanoid_fixed's"):
        walk.real_run(load_robot("humanoid_fixed"), {}, net, 0.06, 0)
    argv = ["policy", "run", "--policy", str(path), "--robot", "humanoid", "--seconds", "0.06", "--seed", "4", "--json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    run = walk.real_run(robot, robot.nominal(), net, 0.06, 4)
    assert printed["distance_m"] == run.distance[0] and printed["energy_j"] == run.energy[0]
