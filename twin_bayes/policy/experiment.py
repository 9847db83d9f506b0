"""Sim-to-real experiments shared by `experiments/*.py`: which particles a policy trains on,
fitting a twin on emulated telemetry, and scoring policies on the real (native MuJoCo) robot.

The real robot is the shipped MJCF with the actuator model it declares; the
twin's config may model it with another actuator class of the same parameter
names (e.g. `tasks.servo_twin_config`), an approximation of the real robot.

Three sources of training particles (each (N, P) full parameter vectors):
nominal (the config's nominal values, N = 1), uniform domain randomisation
(independent uniform draws over each prior's 5–95 % range) and the twin's
posterior (resampled particles).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.compiled import enable_cache
from twin_bayes.config import TwinConfig, load_config
from twin_bayes.data import consecutive_windows
from twin_bayes.inference import Twin
from twin_bayes.models import TwinModel
from twin_bayes.policy.closed_loop import Run, real_cost, real_rollout, run_cost
from twin_bayes.policy.controller import Policy, Task
from twin_bayes.policy.objective import particle_costs_jit, predicted_costs
from twin_bayes.policy.optimize import Settings, optimize
from twin_bayes.sim import Robot, load_robot
from twin_bayes.sim.emulator import emulate
from twin_bayes.sim.native import native_rollout

log = logging.getLogger(__name__)


def script_args(description: str, results: Path, argv=None) -> argparse.Namespace:
    """The experiment scripts' command line (`--quick`, `--out` default `results`), compilation cache and
    progress logging."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="the short version")
    ap.add_argument("--out", type=Path, default=results, help=f"results folder (default {results})")
    args = ap.parse_args(argv)
    enable_cache()
    logging.basicConfig(format="%(asctime)s %(message)s")
    logging.getLogger("twin_bayes").setLevel(logging.INFO)
    return args


def nominal_thetas(model: TwinModel) -> jnp.ndarray:
    """The nominal model (1, P) with the config's settings."""
    nominal = model.robot.nominal()
    values = jnp.asarray([nominal[n] for n in model.param_names])
    return model.theta(values, jnp.asarray(model.default_settings))[None]


def uniform_thetas(model: TwinModel, key, n: int, lo: float = 0.05, hi: float = 0.95) -> jnp.ndarray:
    """n draws (n, P), each parameter uniform over its prior's [lo, hi] quantile range."""
    k_prior, k_uniform = jax.random.split(key)
    prior = jax.vmap(model.constrain)(model.sample_prior(k_prior, 4000))[:, :len(model.param_names)]
    low, high = jnp.quantile(prior, lo, axis=0), jnp.quantile(prior, hi, axis=0)
    values = jax.random.uniform(k_uniform, (n, len(model.param_names)), minval=low, maxval=high)
    settings = jnp.asarray(model.default_settings)
    return jax.vmap(lambda v: model.theta(v, settings))(values)


def posterior_draws(twin: Twin, n: int, seed: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """n resampled posterior particles: thetas (n, P) and their sensor-noise sds (n, 2) (q rad, qd rad/s)."""
    post = twin.posterior
    values = post.values[post.resample(np.random.default_rng(seed), n)]
    model = twin.model
    settings = jnp.asarray(model.default_settings)
    thetas = jax.vmap(lambda v: model.theta(v, settings))(jnp.asarray(values))
    noise = [values[:, post.names.index(f"noise:{c}")] for c in ("q", "qd")]
    return thetas, jnp.asarray(np.stack(noise, axis=1))


def telemetry_window(run: Run) -> dict:
    """A closed-loop run as a twin window: rows are the readings before each command, and the command."""
    return {"q": run.q_meas, "qd": run.qd_meas, "ctrl": run.u}


def fit_closed_loop(twin: Twin, truth: dict[str, float], seed: int, policy: Policy, task: Task,
                    real_robot: Robot) -> tuple[list, float]:
    """The real robot runs `policy` on `task` (sensor-noise seed `seed`); its telemetry goes into twin
    window by window (whole windows only). The update reports, and the run's `segment_floor`."""
    truth = {**truth, **twin.cfg.settings}
    run = real_rollout(real_robot, truth, policy, task, seed=seed)
    reports = [twin.update(w) for w in consecutive_windows(run.q_meas, run.qd_meas, run.u, twin.model.window_samples)]
    return reports, segment_floor(real_robot, truth, run, twin.model.segment_steps)


def segment_floor(robot: Robot, truth: dict[str, float], run: Run, steps: int) -> float:
    """RMS velocity misfit (rad/s) of native replays of a real run's commands in `steps`-step segments,
    each started from its measured state, under the true parameters: the least misfit a twin that starts
    its segments from measured states can reach (the qd sensor noise where a noisy start is forgiven)."""
    model = robot.model_with(robot.to_vector(truth))
    sq = [(native_rollout(robot, truth, run.q_meas[s], run.qd_meas[s], run.u[s:s + steps], model=model)[1]
           - run.qd_meas[s + 1:s + steps + 1]) ** 2 for s in range(0, len(run.u) - steps, steps)]
    return float(np.sqrt(np.mean(sq)))


def fit_twin(twin: Twin, truth: dict[str, float], seed: int, windows: int, real_robot: Robot | None = None) -> list:
    """Stream `windows` excitation windows of emulated telemetry from `real_robot` (default: the twin's)
    under `truth` into twin; the update reports."""
    model = twin.model
    T = model.window_samples
    traj = emulate(real_robot or model.robot, truth, windows * (T - 1) * model.robot.dt, seed=seed,
                   settings=twin.cfg.settings)
    return [twin.update(w) for w in consecutive_windows(traj.q, traj.qd, traj.ctrl, T)]


def score(twin: Twin, truth: dict[str, float], policy: Policy, task: Task, seeds, particles: int = 32,
          noise: dict[str, float] | None = None, real_robot: Robot | None = None) -> dict:
    """Real tracking cost over `seeds` (sensor-noise draws) on `real_robot` (default: the twin's)
    and the cost the twin's posterior predicts.

    The prediction runs each posterior particle with its own sensor-noise draw;
    `predicted_q05/q95` bound 90 % of it.
    """
    robot = twin.model.robot
    truth = {**truth, **twin.cfg.settings}
    real = [real_cost(real_robot or robot, truth, policy, task, seed=s, noise=noise) for s in seeds]
    thetas, noise_sd = posterior_draws(twin, particles, seed=int(seeds[0]))
    pred = np.asarray(predicted_costs(robot, jax.random.PRNGKey(int(seeds[0])), thetas, noise_sd, policy, task))
    q05, q95 = np.quantile(pred, [0.05, 0.95])
    return {"real": real, "real_mean": float(np.mean(real)), "predicted_mean": float(pred.mean()),
            "predicted_q05": float(q05), "predicted_q95": float(q95),
            "real_within_predicted_90": bool(q05 <= np.mean(real) <= q95)}


def compare(twin_factory, task: Task, init: Policy, truths: list[dict], seeds: list[int], fit_windows: int = 2,
            train_particles: int = 8, nominal_steps: int = 150, adapt_steps: int = 40,
            uniform_steps: int | None = None, settings: Settings = Settings(), cvar_alpha: float | None = 0.25,
            real_seeds: int = 3, real_robot: Robot | None = None, fit=None, nominal: Policy | None = None,
            policy_robot: Robot | None = None) -> dict:
    """Policies from the nominal model, uniform DR and each fitted posterior (mean and CVaR), scored on the real robot.

    `twin_factory()` gives a fresh Twin (one compiled model shared by all).
    The nominal policy is optimised from `init` for `nominal_steps` (or given
    as `nominal`); the others start from it (warm start) and take
    `adapt_steps` (the uniform-DR policy, trained once for all truths,
    `uniform_steps`, default the same). For every truth and seed a twin is
    fitted: `fit(truth, seed)` gives (the fitted Twin, its update reports),
    by default a fresh twin on `fit_windows` windows of emulated excitation
    telemetry (data seed `seed`). Every policy runs `real_seeds` times on the
    real robot (sensor-noise seeds 1000·seed + r). `real_robot` emulates the
    telemetry and runs the policies (default: the twin's robot).
    `cvar_alpha=None` leaves out the risk-averse policy. Policies are
    optimised through `policy_robot` (default: the twin's robot), a twin of
    the same parameters whose gradients may be cheaper
    (`sim.load_robot(..., solver_iterations=1)`); the twin's own robot
    predicts the real costs.
    """
    twin = twin_factory()
    model = twin.model
    robot = policy_robot or model.robot
    nominal_th = nominal_thetas(model)
    nominal_hist = None     # a given nominal policy was optimised elsewhere
    if nominal is None:
        nominal, nominal_hist = optimize(robot, nominal_th, init, task, nominal_steps, settings)
        log.info("nominal policy: objective %.4g -> %.4g", nominal_hist[0], nominal_hist[-1])
    uniform_th = uniform_thetas(model, jax.random.PRNGKey(0), train_particles)
    uniform_steps = adapt_steps if uniform_steps is None else uniform_steps
    uniform, uniform_hist = optimize(robot, uniform_th, nominal, task, uniform_steps, settings)
    if fit is None:
        def fit(truth, seed):
            fitted = twin_factory()
            return fitted, fit_twin(fitted, truth, seed, fit_windows, real_robot)
    runs = []
    for i, truth in enumerate(truths):
        for seed in seeds:
            twin, reports = fit(truth, seed)
            post_th, _ = posterior_draws(twin, train_particles, seed)
            posterior, post_hist = optimize(robot, post_th, nominal, task, adapt_steps, settings)
            policies = {"nominal": (nominal, nominal_th), "uniform_dr": (uniform, uniform_th),
                        "posterior": (posterior, post_th)}
            if cvar_alpha is not None:
                risk_averse, _ = optimize(robot, post_th, nominal, task, adapt_steps, settings, cvar_alpha)
                policies["posterior_cvar"] = (risk_averse, post_th)
            real = [1000 * seed + r for r in range(real_seeds)]
            scores = {}
            for name, (policy, train_th) in policies.items():
                scores[name] = score(twin, truth, policy, task, real, real_robot=real_robot)
                expected = particle_costs_jit(robot, train_th, policy, task)
                scores[name]["expected_by_its_optimiser"] = float(np.mean(expected))
            log.info("truth %d seed %d: real cost %s", i, seed,
                     {k: round(v["real_mean"], 6) for k, v in scores.items()})
            runs.append({"truth": i, "seed": seed, "updates_accepted": [bool(r.accepted) for r in reports],
                         "posterior_objective_start_end": [float(post_hist[0]), float(post_hist[-1])],
                         "policies": scores})
    per_run = {n: [r["policies"][n] for r in runs] for n in runs[0]["policies"]}
    summary = {n: {"real_mean": float(np.mean([s["real_mean"] for s in v])),
                   "real_sd": float(np.std([s["real_mean"] for s in v])),
                   "real_within_predicted_90": float(np.mean([s["real_within_predicted_90"] for s in v]))}
               for n, v in per_run.items()}
    return {"truths": truths, "seeds": seeds, "fit_windows": fit_windows, "train_particles": train_particles,
            "nominal_steps": nominal_steps, "adapt_steps": adapt_steps, "uniform_steps": uniform_steps,
            "cvar_alpha": cvar_alpha,
            "optimizer": {"adam_learning_rate": settings.learning_rate, "clip_global_norm": settings.clip},
            "nominal_objective_start_end": None if nominal_hist is None else [float(nominal_hist[0]),
                                                                              float(nominal_hist[-1])],
            "uniform_objective_start_end": [float(uniform_hist[0]), float(uniform_hist[-1])],
            "summary": summary, "runs": runs}


def plot_compare(result: dict, title: str, path) -> None:
    """Real tracking cost per policy and run (dots), their mean, and the twin's predicted 90 % intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, name in enumerate(names):
        for k, run in enumerate(result["runs"]):
            s = run["policies"][name]
            x = j + 0.6 * (k + 0.5) / len(result["runs"]) - 0.3
            ax.plot([x, x], [s["predicted_q05"], s["predicted_q95"]], color="0.7", lw=3)
            ax.plot(x, s["real_mean"], "o", color=f"C{run['truth']}", ms=4)
        ax.plot([j - 0.35, j + 0.35], [result["summary"][name]["real_mean"]] * 2, "k-", lw=1.5)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("real tracking cost")
    ax.set_title(f"{title}\ndots: real cost per run (colour = hidden truth); grey: twin's predicted 90% interval; "
                 "line: mean", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readapt(twin: Twin, task: Task, policy: Policy, truth: dict[str, float], change: dict[str, float],
            episodes: int, change_at: int, adapt_steps: int, train_particles: int = 8,
            settings: Settings = Settings(), seed: int = 0) -> dict:
    """Episodes on the real robot, which changes before episode `change_at` (truth values × `change`).

    Two copies of `policy` run the same episodes (same sensor-noise seeds): a
    fixed one, and one re-adapted after every accepted twin update by
    `adapt_steps` optax steps warm started from its previous self. The twin
    learns from the re-adapting copy's closed-loop telemetry.
    """
    robot = twin.model.robot
    changed = {k: v * change.get(k, 1.0) for k, v in truth.items()}
    adapted = policy
    rows = []
    for e in range(episodes):
        real = {**(truth if e < change_at else changed), **twin.cfg.settings}
        run = real_rollout(robot, real, adapted, task, seed=1000 * seed + e)
        fixed = real_cost(robot, real, policy, task, seed=1000 * seed + e)
        report = twin.update(telemetry_window(run))
        row = {"episode": e, "changed": e >= change_at, "cost_fixed": fixed,
               "cost_readapted": run_cost(run, task),
               "update_accepted": bool(report.accepted), "drift": bool(report.drift),
               "posterior_mean": {n: twin.posterior.mean()[n] for n in change}, "optax_steps": 0}
        if report.accepted:
            thetas, _ = posterior_draws(twin, train_particles, seed + e)
            adapted, _ = optimize(robot, thetas, adapted, task, adapt_steps, settings)
            row["optax_steps"] = adapt_steps
        log.info("episode %d: fixed %.4g, re-adapted %.4g, drift %s", e, fixed, row["cost_readapted"], report.drift)
        rows.append(row)
    before = np.mean([r["cost_fixed"] for r in rows[:change_at]])
    after_fixed = np.mean([r["cost_fixed"] for r in rows[change_at:]])
    increase = after_fixed - before
    recovered = [(after_fixed - r["cost_readapted"]) / increase for r in rows[change_at:]]
    first = next((i for i, f in enumerate(recovered) if f >= 0.5), None)
    steps = None if first is None else int(sum(r["optax_steps"] for r in rows[change_at:change_at + first]))
    return {"truth": truth, "change": change, "episodes": episodes, "change_at": change_at,
            "adapt_steps_per_update": adapt_steps, "train_particles": train_particles,
            "cost_before_change": float(before), "cost_after_change_fixed": float(after_fixed),
            "cost_increase": float(increase), "recovered_fraction": [float(f) for f in recovered],
            "first_episode_half_recovered": None if first is None else change_at + first,
            "optax_steps_to_half_recovery": steps, "rows": rows}


def plot_readapt(result: dict, title: str, path) -> None:
    """Real cost per episode, fixed policy vs re-adapted policy, with the change marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    e = [r["episode"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(e, [r["cost_fixed"] for r in result["rows"]], "o-", label="fixed policy")
    ax.plot(e, [r["cost_readapted"] for r in result["rows"]], "s-",
            label=f"re-adapted ({result['adapt_steps_per_update']} optax steps per twin update)")
    ax.axvline(result["change_at"] - 0.5, color="k", ls="--", lw=1, label="robot changes")
    ax.set_yscale("log")
    ax.set_xlabel("episode")
    ax.set_ylabel("real tracking cost")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(result: dict, name: str, directory) -> Path:
    """Write result as directory/name.json; returns the path stem for figures."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    return directory / name


def run_compare(config: str | TwinConfig, task: Task, init: Policy, truths: list[dict], seeds: list[int],
                name: str, title: str, directory, **kwargs) -> dict:
    """`compare` with a twin config (a shipped name or a TwinConfig) on its real robot (the MJCF's own
    actuator model), written to directory/name.json and .png."""
    cfg = config if isinstance(config, TwinConfig) else load_config(config)
    model = TwinModel(cfg)
    result = compare(lambda: Twin(cfg, model), task, init, truths, seeds, real_robot=load_robot(cfg.robot.name),
                     **kwargs)
    stem = write_result(result, name, directory)
    plot_compare(result, title, stem.with_suffix(".png"))
    return result
