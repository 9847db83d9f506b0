"""Humanoid walking: a walker trained by ARS on the nominal model, on uniform domain randomisation and on the
twin's posterior, run on real humanoids of hidden truths; the twin predicts its distance.

    .venv/bin/python experiments/humanoid_walk.py            # 3 hidden truths x 3 sensor-noise seeds, 10 s runs
    .venv/bin/python experiments/humanoid_walk.py --quick    # 1 truth x 1 seed, tiny budgets, 0.36 s of telemetry

The real humanoids are native MuJoCo under the truth files in twin_bayes/robots/humanoid/truths/ (torso and
leg masses, hip and knee damping and armature, foot friction, command latency); the trainer and the twin
see none of them. The walker is `policy.walk` (a designed foot-placement gait, SIMBICON-like, 22 gains),
refined by ARS (`policy.ars`) on batched `mujoco.rollout` episodes. The twin is `humanoid_latency`: the
floating humanoid's torso mass, hip damping and foot friction, and its command latency.

1. Pretraining: `PRETRAIN` ARS iterations on the nominal model from the designed gait (`walk.designed_gait`).
2. Per truth, the pretrained walker runs `TELEMETRY_S` on the real humanoid; its telemetry (sensor noise on
   every 3 ms reading, the commands as sent) is fitted by the whole-log engine on segments of `HORIZON_S`
   from their measured starts (30-312 s per twin, where streaming it window by window through `Twin.update`
   took from 151 s to more than 83 minutes; latent starts, as the identification study's `--engine
   whole-log` fits them, take about 15 minutes per twin); the posterior is saved for `twin-bayes policy
   predict`.
3. Fine-tuning, the same budget each (`FINETUNE` iterations × 2·directions episodes of `EPISODE_S`):
   on the nominal model, on `DRAWS` uniform draws over the config's prior 5-95 % ranges, and per truth
   on `DRAWS` posterior particles.
4. Every walker runs `RUN_S` on each real humanoid (sensor-noise seeds `SEEDS`); the truth's fitted twin
   gives its 90 % interval of the distance from `DRAWS` other posterior draws.

Writes experiments/results/humanoid_walk[_quick].json, _distance.png, _gait.png and, under
humanoid_walk[_quick]/, the walkers (JSON) and the posteriors.
"""
import json
import time
from pathlib import Path

from twin_bayes import _jax  # noqa: F401  (first: NPROC against the 2-core LAPACK deadlock, float64)
import jax  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from twin_bayes.config import load_config  # noqa: E402
from twin_bayes.data import Trajectory  # noqa: E402
from twin_bayes.inference import Twin  # noqa: E402
from twin_bayes.inference.whole_log import fit_twin  # noqa: E402
from twin_bayes.inference.store import SUMMARY, load_posterior, save_posterior  # noqa: E402
from twin_bayes.models import TwinModel  # noqa: E402
from twin_bayes.policy import ars, experiment, walk  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRUTHS = Path(walk.__file__).resolve().parents[1] / "robots" / "humanoid" / "truths"
SETTINGS = ars.Settings(directions=16, top=8, step_size=0.1, noise=0.3)
EPISODE_S, RUN_S, DRAWS, SEEDS = 8.0, 10.0, 32, [1, 2, 3]
TELEMETRY_S, HORIZON_S = 0.9, 0.09     # the twin's telemetry per real humanoid and its whole-log restarts
QUICK_TELEMETRY_S = 0.36               # --quick: 4 segments (19 Newton steps, 55 s warm; 49 steps on 0.9 s)
PRETRAIN, FINETUNE = 80, 30


def fit_posterior(cfg, model: TwinModel, robot, truth_file: Path, truth, noise, walker, seed: int, seconds: float,
                  out: Path):
    """The twin of one real humanoid, fitted on `seconds` of the walker's telemetry there (data seed `seed`) by the
    whole-log engine on segments restarted from the measured state every `HORIZON_S` (`inference.whole_log`; the
    noise scales are the sensors' datasheet figures `walk.NOISE`, which that engine does not estimate), and
    its fit record {fitted_on, seconds, wall_s, fit}. A posterior already in `out` fitted on the same inputs
    (`fitted_on`: config and its inference settings, engine, walker, truth file, seed, seconds) is loaded
    instead. RuntimeError where the fit found no mode."""
    fitted_on = {"config": cfg.name, "inference": cfg.inference.model_dump(), "engine": "whole-log",
                 "horizon_s": HORIZON_S, "noise_scale": walk.NOISE, "walker": walker.as_dict(),
                 "truth": truth_file.name, "seed": seed, "seconds": seconds}
    try:
        saved = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError):
        saved = {}
    cfg = cfg.model_copy(update={"observation": cfg.observation.model_copy(update={"noise_scale": walk.NOISE}),
                                 "inference": cfg.inference.model_copy(update={"particles": DRAWS * 8})})
    if saved.get("fitted_on") == fitted_on:
        experiment.log.info("%s: twin loaded from %s (fitted on the same telemetry)", truth_file.stem, out)
        return load_posterior(Twin(cfg, model), out), {k: saved.get(k) for k in ("seconds", "wall_s", "fit")}
    started = time.perf_counter()
    q, qd, ctrl = walk.telemetry(robot, truth, walker, seconds + 1e-9, seed, noise)
    twin = Twin(cfg, model)
    fit = fit_twin(twin, [Trajectory(np.arange(len(q)) * robot.dt, q, qd, ctrl, source=truth_file.stem)],
                   adam_steps=0, horizon_s=HORIZON_S, latent_starts=False)   # measured starts: seconds, not minutes
    if fit["refused"]:
        raise RuntimeError(f"{truth_file.stem}: the whole-log fit found no mode ({fit['refused']})")
    fit.pop("model_error")
    record = {"seconds": (len(q) - 1) * robot.dt, "wall_s": time.perf_counter() - started, "fit": fit}
    experiment.log.info("%s: twin fitted on %.2f s in %.0f s", truth_file.stem, record["seconds"], record["wall_s"])
    save_posterior(twin, out, {"config": cfg.name, "fitted_on": fitted_on, **record,   # config: a shipped name
                               "parameters": twin.posterior.summary()})
    return twin, record


def plot_distance(result: dict, path) -> None:
    """Real distance per walker and run (dots, colour = truth), the twin's 90 % interval (grey), 3 m line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ["nominal", "uniform_dr", "posterior"]
    truths = list(result["truths"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, name in enumerate(names):
        rows = [r for r in result["runs"] if r["policy"] == name]
        for k, r in enumerate(rows):
            x = j + 0.7 * (k + 0.5) / len(rows) - 0.35
            lo, hi = r["predicted"]["distance_m"]["q05"], r["predicted"]["distance_m"]["q95"]
            ax.plot([x, x], [lo, hi], color="0.75", lw=3)
            ax.plot(x, r["distance_m"], "x" if r["falls"] else "o", color=f"C{truths.index(r['truth'])}", ms=5)
    ax.axhline(3.0, color="k", ls="--", lw=1)
    ax.set_xticks(range(len(names)), ["nominal model", "uniform DR", "posterior"])
    ax.set_ylabel(f"forward distance in {result['run_s']:g} s (m)")
    ax.set_title("walker on the real humanoid: o no fall, x fell (colour = hidden truth);\n"
                 "grey: twin's predicted 90% interval; dashed: 3 m", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CHAINS = (("torso", "lwaist", "pelvis", "right_thigh", "right_shin", "right_foot"),
          ("pelvis", "left_thigh", "left_shin", "left_foot"))


def plot_gait(robot, runs: dict, truth: dict, path, frames: int = 12) -> None:
    """Torso x and height against time for each walker (one real run), and a side-view filmstrip (x, z of
    the torso, pelvis and leg bodies) of the posterior walker's run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = robot.model_with(robot.to_vector(truth))
    d = mujoco.MjData(m)
    fig, (ax_x, ax_z, ax_f) = plt.subplots(3, 1, figsize=(8, 8), gridspec_kw={"height_ratios": [1, 1, 1.4]})
    for name, run in runs.items():
        t = np.arange(run.qpos.shape[1]) * robot.dt
        ax_x.plot(t, run.qpos[0, :, 0] - run.qpos[0, 0, 0], label=name)
        ax_z.plot(t, run.qpos[0, :, 2], label=name)
    ax_z.axhline(walk.FALL_HEIGHT, color="k", ls="--", lw=1)
    ax_x.set_ylabel("torso x (m)")
    ax_z.set_ylabel("torso height (m)")
    ax_z.set_xlabel("time (s)")
    ax_x.legend(fontsize=8)
    qpos = runs["posterior"].qpos[0]
    valid = np.flatnonzero(~np.isnan(qpos[:, 0]))
    for i, row in enumerate(np.linspace(0, valid[-1], frames).astype(int)):
        d.qpos[:] = qpos[row]
        mujoco.mj_kinematics(m, d)
        for chain in CHAINS:
            xz = np.array([d.xpos[m.body(b).id][[0, 2]] for b in chain])
            ax_f.plot(xz[:, 0], xz[:, 1], "-o", color=plt.cm.viridis(i / frames), ms=2, lw=1)
    ax_f.set_aspect("equal")
    ax_f.set_xlabel("x (m)")
    ax_f.set_ylabel("z (m)")
    ax_f.set_title(f"posterior walker, side view every {valid[-1] * robot.dt / (frames - 1):.2f} s", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    quick = args.quick
    name = "humanoid_walk" + ("_quick" if quick else "")
    store = Path(args.out) / name
    store.mkdir(parents=True, exist_ok=True)
    pretrain, finetune, run_s, episode_s, telemetry_s = ((4, 2, 2.0, 2.0, QUICK_TELEMETRY_S) if quick else
                                                         (PRETRAIN, FINETUNE, RUN_S, EPISODE_S, TELEMETRY_S))
    files = sorted(TRUTHS.glob("*.toml"))[:1 if quick else None]
    seeds = SEEDS[:1] if quick else SEEDS
    cfg = load_config("humanoid_latency")
    model = TwinModel(cfg)
    robot = model.robot
    truths = {f.stem: walk.read_truth(f, robot) for f in files}
    started = time.perf_counter()

    def train(thetas, policy, iterations, seed, label):
        """ARS on the training distribution of parameter draws thetas (n, P) (models and latencies)."""
        thetas = np.asarray(thetas)
        models = [robot.model_with(t) for t in thetas]
        latencies = [float(robot.layout.latency(t)) for t in thetas]
        trained, history = walk.train(robot, models, policy, iterations, episode_s, seed, SETTINGS, latencies)
        experiment.log.info("%s: mean return %.3f -> %.3f over %d iterations", label, history[0]["mean_return"],
                            history[-1]["mean_return"], iterations)
        walk.save(trained, store / f"{label}.json", robot.name, {"trained_on": label, "iterations": iterations})
        return trained, [h["mean_return"] for h in history], int(sum(h["steps"] for h in history))

    nominal = experiment.nominal_thetas(model)
    pre, pre_curve, pre_steps = train(nominal, walk.designed_gait(), pretrain, 0, "pretrained")
    training = {"pretrained": {"curve": pre_curve, "steps": pre_steps}}
    walkers = {}
    for label, thetas in (("nominal", nominal),
                          ("uniform_dr", experiment.uniform_thetas(model, jax.random.PRNGKey(0), DRAWS))):
        walkers[label], curve, steps = train(thetas, pre, finetune, 1, label)
        training[label] = {"curve": curve, "steps": steps}
    identification, twins = {}, {}
    for i, (truth_name, (truth, noise)) in enumerate(truths.items()):
        twin, record = fit_posterior(cfg, model, robot, files[i], truth, noise, pre, 100 + i, telemetry_s,
                                     store / f"posterior_{truth_name}")
        twins[truth_name] = twin
        summary = twin.posterior.summary()
        identification[truth_name] = {
            **record,
            "posterior": {n: {**summary[n], "truth": truth.get(n),
                              "covered": summary[n]["q05"] <= truth[n] <= summary[n]["q95"] if n in truth else None}
                          for n in summary}}
        thetas, _ = experiment.posterior_draws(twin, DRAWS, seed=i)
        label = f"posterior_{truth_name}"
        walkers[label], curve, steps = train(thetas, pre, finetune, 1, label)
        training[label] = {"curve": curve, "steps": steps}
    runs, gait_runs = [], {}
    for i, (truth_name, (truth, noise)) in enumerate(truths.items()):
        thetas, noise_sd = experiment.posterior_draws(twins[truth_name], DRAWS, seed=1000 + i)
        for policy_name in ("nominal", "uniform_dr", "posterior"):
            walker = walkers["posterior_" + truth_name if policy_name == "posterior" else policy_name]
            for seed in seeds:
                run = walk.real_run(robot, truth, walker, run_s, seed, noise)
                predicted = walk.interval(walk.predicted(robot, thetas, noise_sd, walker, run_s, seed), 0.9)
                d = predicted["distance_m"]
                runs.append({"truth": truth_name, "policy": policy_name, "seed": seed, **run.figures(0),
                             "predicted": predicted, "distance_within_predicted_90": d["q05"] <= run.distance[0]
                             <= d["q95"]})
                if i == 0 and seed == seeds[0]:
                    gait_runs[policy_name] = run
                experiment.log.info("%s %s seed %d: %.2f m, falls %d", truth_name, policy_name, seed,
                                    run.distance[0], run.fell[0])
    summary = {}
    for policy_name in ("nominal", "uniform_dr", "posterior"):
        rows = [r for r in runs if r["policy"] == policy_name]
        summary[policy_name] = {
            "runs": len(rows), "distance_mean_m": float(np.mean([r["distance_m"] for r in rows])),
            "walked_3m_without_fall": int(sum(r["distance_m"] >= 3.0 and not r["falls"] for r in rows)),
            "no_fall": int(sum(not r["falls"] for r in rows)),
            "distance_within_predicted_90": int(sum(r["distance_within_predicted_90"] for r in rows))}
    result = {"run_s": run_s, "episode_s": episode_s, "seeds": seeds, "draws": DRAWS, "telemetry_s": telemetry_s,
              "horizon_s": HORIZON_S,
              "fall_height_m": walk.FALL_HEIGHT, "ars": SETTINGS._asdict(), "config": cfg.name,
              "pretrain_iterations": pretrain,
              "finetune_iterations": finetune,
              "finetune_budget_episodes": finetune * 2 * SETTINGS.directions,
              "truths": {k: {"file": str(f.relative_to(TRUTHS.parents[2])),
                             "params": {n: v for n, v in t[0].items() if v != robot.nominal()[n]}}
                         for (k, t), f in zip(truths.items(), files)},
              "training": training, "identification": identification, "summary": summary, "runs": runs,
              "wall_s": time.perf_counter() - started}
    stem = experiment.write_result(result, name, args.out)
    plot_distance(result, f"{stem}_distance.png")
    plot_gait(robot, gait_runs, next(iter(truths.values()))[0], f"{stem}_gait.png")
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
