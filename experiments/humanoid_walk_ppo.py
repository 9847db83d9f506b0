"""Humanoid walking on a GPU: a Brax PPO walker (MuJoCo Playground style: a network from the measured
state to the commands, trained on MJX) on the walking study's uniform-DR training distribution, run on
the study's real humanoids.

    .venv/bin/python experiments/humanoid_walk_ppo.py prepare        # here: the training distribution
    python experiments/humanoid_walk_ppo.py train --minutes 5 --out DIR   # on a GPU: the walker
    .venv/bin/python experiments/humanoid_walk_ppo.py evaluate       # here: the real humanoids

prepare writes the `DRAWS` parameter draws the study's uniform-DR walker trains on (`humanoid_latency`'s
prior 5-95 % ranges, `policy.experiment.uniform_thetas` with the study's key) to
experiments/results/humanoid_walk_ppo/training.json.

train (a GPU machine with jax, brax and mujoco): the environment is the study's episode in MJX: from
standing (`walk.standing`), each episode on one of the draws (its model fields and command latency,
interpolated as `walk.simulate` does), sensor noise `walk.NOISE` on the observation
(`walk_net.observation`), commands every `walk.CONTROL_STEPS` physics steps, the study's reward per
second (`walk.SPEED`, `ALIVE`, `EFFORT`), the episode ending when the torso is below `walk.FALL_HEIGHT`.
MJX runs float32 with `SOLVER` iterations (speed on the GPU; identification needs float64, training a
walker does not; the real humanoid keeps its own solver). PPO runs until --minutes have passed after the
first evaluation (the compilation before it not counted; checked after each evaluation). After each
evaluation it writes DIR/ppo.json (the walker, `policy.walk.save`) and DIR/ppo_training.json (the
evaluation curve, throughput; at the end, the exported network against Brax's own policy).

evaluate: the walker (experiments/results/humanoid_walk/ppo.json) on the study's three truths × seeds,
10 s each, as `twin-bayes policy run`; writes experiments/results/humanoid_walk_ppo.json.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TRAINING = RESULTS / "humanoid_walk_ppo" / "training.json"
WALKER = RESULTS / "humanoid_walk" / "ppo.json"
TRUTHS = ("heavy_slippery", "light_grippy", "slow_commands")
DRAWS, SEEDS, RUN_S = 32, (1, 2, 3), 10.0
SOLVER = {"iterations": 4, "ls_iterations": 8}
PPO = dict(episode_length=1000, normalize_observations=True, action_repeat=1, unroll_length=20, num_minibatches=32,
           num_updates_per_batch=4, discounting=0.97, learning_rate=3e-4, entropy_cost=5e-3, num_envs=8192,
           batch_size=256, max_grad_norm=1.0, reward_scaling=1.0, clipping_epsilon=0.2, num_eval_envs=256)
HIDDEN = (64, 64, 64, 64)


def prepare() -> None:
    import jax

    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel
    from twin_bayes.policy import experiment
    model = TwinModel(load_config("humanoid_latency"))
    thetas = np.asarray(experiment.uniform_thetas(model, jax.random.PRNGKey(0), DRAWS))
    TRAINING.parent.mkdir(parents=True, exist_ok=True)
    TRAINING.write_text(json.dumps({"config": "humanoid_latency", "robot": model.robot.name,
                                    "names": list(model.robot.param_names), "draws": thetas.tolist()}))
    print(f"wrote {TRAINING}: {len(thetas)} draws")


def train(minutes: float, out: Path, smoke: bool = False) -> None:
    import jax
    import jax.numpy as jnp
    from brax.envs.base import Env, State
    from brax.io import mjcf
    from brax.mjx import pipeline
    from brax.training.agents.ppo import networks as ppo_networks
    from brax.training.agents.ppo import train as ppo

    from twin_bayes.policy import walk, walk_net
    from twin_bayes.sim import delay_commands, load_robot
    from twin_bayes.sim.params import varying_fields
    jax.config.update("jax_enable_x64", False)       # the package switches float64 on; MJX on a GPU runs float32
    if len(jax.local_devices()) == 1:                # Brax 0.14's PPO still calls this, gone from JAX 0.10
        jax.device_put_replicated = lambda tree, devices: jax.tree.map(lambda a: jnp.asarray(a)[None], tree)

    robot = load_robot("humanoid")
    doc = json.loads(TRAINING.read_text())
    assert doc["names"] == list(robot.param_names), "the training draws are for another humanoid"
    thetas = jnp.asarray(doc["draws"], jnp.float32)
    table = varying_fields(robot.layout, thetas)      # {model field: (draws, ...)}
    latency = jax.vmap(robot.layout.latency)(thetas)
    m = robot.model_with(robot.layout.nominal)
    m.opt.iterations, m.opt.ls_iterations = SOLVER["iterations"], SOLVER["ls_iterations"]
    base = mjcf.load_model(m)
    dt, nq, nu, steps = robot.dt, robot.nq, robot.nu, walk.CONTROL_STEPS
    q0 = jnp.asarray(walk.standing(robot), jnp.float32)
    noise_sd = jnp.concatenate([jnp.full(nq, walk.NOISE["q"]), jnp.full(robot.nv, walk.NOISE["qd"])])
    history = 8                                        # commands per physics step kept: > latency / dt + steps
    assert float(latency.max()) / dt + steps < history

    class WalkEnv(Env):
        """The study's episode on MJX (see the module's docstring)."""

        @property
        def observation_size(self):
            return nq - 2 + robot.nv

        @property
        def action_size(self):
            return nu

        @property
        def backend(self):
            return "mjx"

        def _sys(self, idx):
            return base.tree_replace({k: v[idx] for k, v in table.items()})

        def _observe(self, ps, key):
            noise = noise_sd * jax.random.normal(key, noise_sd.shape)
            return walk_net.observation(ps.q + noise[:nq], ps.qd + noise[nq:], jnp)

        def reset(self, rng):
            rng, k_idx, k_q, k_obs = jax.random.split(rng, 4)
            idx = jax.random.randint(k_idx, (), 0, len(thetas))
            q = q0.at[7:].add(jax.random.uniform(k_q, (nq - 7,), minval=-0.01, maxval=0.01))
            ps = pipeline.init(self._sys(idx), q, jnp.zeros(robot.nv))
            info = {"idx": idx, "rng": rng, "sent": jnp.zeros((history, nu))}
            metrics = {"forward_m": jnp.zeros(()), "fell": jnp.zeros(())}      # per step: an episode's sums
            return State(ps, self._observe(ps, k_obs), jnp.zeros(()), jnp.zeros(()), metrics, info)

        def step(self, state, action):
            idx, ps = state.info["idx"], state.pipeline_state
            sys, u = self._sys(idx), walk_net.CTRL * action
            sent = jnp.where(ps.time < dt / 2, jnp.broadcast_to(u, (history, nu)), state.info["sent"])
            sent = jnp.concatenate([sent[steps:], jnp.broadcast_to(u, (steps, nu))])   # per physics step
            x_before, lowest = ps.q[0], jnp.inf
            for acting in delay_commands(sent, latency[idx], dt)[-steps:]:    # as walk.simulate
                ps = pipeline.step(sys, ps, acting)
                lowest = jnp.minimum(lowest, ps.q[2])
            period = steps * dt
            ahead = walk.SPEED * period
            forward = ahead - jnp.abs(ps.q[0] - x_before - ahead)
            reward = (forward + period * (walk.ALIVE - walk.EFFORT * jnp.mean(action ** 2))) / period
            fell = (lowest < walk.FALL_HEIGHT).astype(jnp.float32)
            rng, key = jax.random.split(state.info["rng"])
            metrics = {**state.metrics, "forward_m": ps.q[0] - x_before, "fell": fell}
            return state.replace(pipeline_state=ps, obs=self._observe(ps, key), reward=reward, done=fell,
                                 metrics=metrics, info={**state.info, "rng": rng, "sent": sent})

    settings = dict(PPO, num_envs=8, batch_size=8, num_minibatches=2, num_eval_envs=4, episode_length=20,
                    unroll_length=5) if smoke else PPO
    curve, kept, started = [], {}, time.monotonic()

    class Deadline(Exception):
        pass

    def write(step, make_policy, params, check: bool = False):
        """The walker and the training record so far to `out` (after each evaluation: a run stopped by its
        time limit keeps its last walker); with check, the exported network against Brax's own policy."""
        net = walk_net.from_brax(params[0], params[1])
        out.mkdir(parents=True, exist_ok=True)
        walk.save(net, out / "ppo.json", robot.name, {"trained_on": "uniform_dr (PPO, Brax on MJX)",
                                                     "env_steps": int(step), "hidden": list(HIDDEN)})
        record = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "ppo": settings,
                  "hidden": list(HIDDEN), "solver": SOLVER, "draws": len(thetas), "minutes": minutes,
                  "env_steps": int(step), "physics_steps": int(step) * steps, "wall_s": time.monotonic() - started,
                  "first_eval_s": curve[0]["wall_s"] if curve else None, "curve": curve}
        if check:
            obs = np.asarray(params[0].mean) + np.asarray(params[0].std) * np.random.default_rng(1).standard_normal(
                (256, len(net.mean)))
            ref = make_policy(params, deterministic=True)(jnp.asarray(obs, jnp.float32), jax.random.PRNGKey(2))[0]
            record["export_max_command_gap"] = float(np.abs(net.act(obs) - walk_net.CTRL * np.asarray(ref)).max())
        (out / "ppo_training.json").write_text(json.dumps(record, indent=1))
        return record

    def keep(step, make_policy, params):
        kept.update(step=step, make_policy=make_policy, params=params)
        write(step, make_policy, params)

    def progress(step, metrics):
        curve.append({"env_steps": int(step), "wall_s": time.monotonic() - started,
                      **{k: float(v) for k, v in metrics.items() if k.startswith("eval/episode_")}})
        print(json.dumps(curve[-1]), flush=True)
        if step > 0 and time.monotonic() - started - curve[0]["wall_s"] > 60 * minutes:   # after the compilation
            raise Deadline

    network = lambda *a, **k: ppo_networks.make_ppo_networks(*a, **k, policy_hidden_layer_sizes=HIDDEN)  # noqa: E731
    try:
        ppo.train(WalkEnv(), num_timesteps=20_000 if smoke else 600_000_000, num_evals=3 if smoke else 200,
                  network_factory=network, progress_fn=progress, policy_params_fn=keep, seed=0, **settings)
    except Deadline:
        pass
    record = write(kept["step"], kept["make_policy"], kept["params"], check=True)
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)


def evaluate() -> None:
    from twin_bayes.policy import walk
    from twin_bayes.sim import load_robot
    robot = load_robot("humanoid")
    truths_dir = Path(walk.__file__).resolve().parents[1] / "robots" / "humanoid" / "truths"
    walkers = {name: walk.load(RESULTS / "humanoid_walk" / f"{name}.json", robot.name)
               for name in ("ppo", "uniform_dr")}
    runs = []
    for truth_name in TRUTHS:
        truth, noise = walk.read_truth(truths_dir / f"{truth_name}.toml", robot)
        for name, walker in walkers.items():
            for seed in SEEDS:
                figures = walk.real_run(robot, truth, walker, RUN_S, seed, noise).figures(0)
                runs.append({"truth": truth_name, "walker": name, "seed": seed, **figures})
                print(json.dumps(runs[-1]), flush=True)
    training = json.loads((RESULTS / "humanoid_walk_ppo" / "ppo_training.json").read_text())
    summary = {w: {"distance_m": [min(r["distance_m"] for r in runs if r["walker"] == w),
                                  max(r["distance_m"] for r in runs if r["walker"] == w)],
                   "falls": sum(r["falls"] for r in runs if r["walker"] == w),
                   "runs": sum(r["walker"] == w for r in runs)} for w in walkers}
    (RESULTS / "humanoid_walk_ppo.json").write_text(json.dumps(
        {"run_s": RUN_S, "truths": TRUTHS, "seeds": SEEDS, "summary": summary, "runs": runs,
         "training": {k: v for k, v in training.items() if k != "curve"}}, indent=1))
    print(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=5.0, help="training time (checked after each evaluation)")
    t.add_argument("--out", type=Path, default=RESULTS / "humanoid_walk_ppo")
    t.add_argument("--smoke", action="store_true", help="tiny batches and episodes: the code path on a CPU")
    sub.add_parser("evaluate")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    elif args.step == "train":
        train(args.minutes, args.out, args.smoke)
    else:
        evaluate()


if __name__ == "__main__":
    main()
