"""Humanoid identification: which parameters emulated telemetry pins down, and which it cannot.

    .venv/bin/python experiments/humanoid_ident.py                     # both humanoid twins, seed 0
    .venv/bin/python experiments/humanoid_ident.py --configs humanoid_fixed --seeds 0 1 2 --seconds 1.2
    .venv/bin/python experiments/humanoid_ident.py --configs humanoid --engine whole-log --seeds $(seq 0 9)
    .venv/bin/python experiments/humanoid_ident.py --configs humanoid --engine whole-log --seeds $(seq 0 9) --resume

Per twin config and seed: a hidden truth drawn from the config's prior (`service.emulate.draw_truth`),
`--seconds` of native-MuJoCo telemetry from it (Telemetry, below; sensor noise q 0.002 rad, qd 0.02 rad/s),
brought in window by window (0.3 s each) with `Twin.update`, or with `--engine whole-log` fitted at once by the
whole-log engine on segments restarted from the measured state every `--horizon` s (`inference.whole_log`: its
Laplace posterior, κ-tempered, as `WHOLE_LOG_DRAWS` draws; the noise scales stay at the config's). Per parameter:
posterior mean, 90 % interval, whether it covers the truth, contraction 1 − var_post / var_prior; pairs
with posterior |r| ≥ 0.8. A parameter is called identifiable when its contraction exceeds 0.5 in every
seed that ran. Over all (seed, parameter) pairs, the coverage of the 90 % intervals (with its Wilson interval,
the RMS of (mean − truth) / sd and the PIT tails) is counted for the parameters whose truths are drawn from the
prior, where a calibrated posterior covers 0.90 on average, and for the noise scales apart: their truths are the
emulator's fixed NOISE, not prior draws (as in `benchmarks/calibration.py`).

Telemetry: humanoid_fixed (root welded in the air) tracks random sines inside each joint's range with a
joint-space PD (`sim.emulator.tracking_excitation`): under open-loop torques its hanging leg rested on a
joint limit in 25-78 % of the samples, whose constraint made the likelihood too rough for the Laplace
proposal; 1.2 s (4 windows). No open-loop command keeps the
floating humanoid up (its knees buckle within about 0.4 s), so its telemetry is closed loop: the walking
study's pretrained walker (`WALKER`, `policy.walk`) walking on the real humanoid from a standing start,
its sensor noise seeded by the seed; 0.9 s (3 windows): stance, swing and heel strikes, where torso mass,
hip damping and foot friction act.

Writes experiments/results/humanoid_ident.json (every config studied so far, the whole-log engine's under
"<config> whole-log"; configs may run as separate, parallel processes; `--resume` keeps the seeds a study of the same
settings already stored there, so a long study stops and goes on) and humanoid_ident.png (prior vs
posterior of each config's first seed, truth marked).
twin_bayes._jax sets NPROC (XLA's intra-op pool size) to at least 8: with one pool thread per core, the
humanoid Newton steps deadlock on 2 cores (two batched LAPACK solves each wait for pool threads that the other
holds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from twin_bayes import _jax  # noqa: E402,F401  (first: NPROC against the 2-core LAPACK deadlock, float64)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from twin_bayes import Twin  # noqa: E402
from twin_bayes.config import load_config  # noqa: E402
from twin_bayes.data import Trajectory, consecutive_windows  # noqa: E402
from twin_bayes.diagnostics import coverage_stats, identification_table, pit  # noqa: E402
from twin_bayes.inference.whole_log import fit_twin  # noqa: E402
from twin_bayes.models import TwinModel  # noqa: E402
from twin_bayes.policy import walk  # noqa: E402
from twin_bayes.service.emulate import draw_truth  # noqa: E402
from twin_bayes.sim import load_robot  # noqa: E402
from twin_bayes.sim.checks import start_state  # noqa: E402
from twin_bayes.sim.emulator import emulate, tracking_excitation  # noqa: E402

CONFIGS = ("humanoid_fixed", "humanoid")
SECONDS = {"humanoid_fixed": 1.2, "humanoid": 0.9}   # default telemetry per seed: 4 and 3 windows of 0.3 s
NOISE = {"q": 0.002, "qd": 0.02}      # emulated sensor noise sd (rad, rad/s)
IDENTIFIED = 0.5                      # contraction above which, in every seed, a parameter counts as pinned down
CONFOUNDED = 0.8                      # posterior |r| of a confounded pair
DRAWS = 4000
WHOLE_LOG_DRAWS = 1000                # Laplace draws of a whole-log fit (its 5 % / 95 % quantiles to about 1 %)
SAVED_DRAWS = 64                      # particles kept in the report per seed (its plot; a stream has 16)
HORIZON_S = 0.09                      # the whole-log engine's restarts (30 steps of the humanoid's 3 ms)
RESULTS = Path(__file__).resolve().parent / "results"
WALKER = RESULTS / "humanoid_walk" / "pretrained.json"


class CompileClock:
    """Seconds JAX spends tracing, lowering, compiling and loading cached executables, since `take()`."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")

    def __init__(self):
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._add)

    def _add(self, event, duration, **_):
        if event in self.EVENTS:
            self.seconds += float(duration)

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def telemetry(cfg, model: TwinModel, seed: int, seconds: float):
    """Hidden truth (all robot parameters) and the Trajectory it produces: (seconds/dt + 1) samples (fewer
    where the floating humanoid falls).

    The telemetry comes from the robot's own MJCF (its constraint solver's iterations), whatever the
    twin config's `solver_iterations`."""
    robot = load_robot(cfg.robot.name, cfg.robot.actuator)
    truth = draw_truth(cfg, robot, seed)
    steps = int(round(seconds / robot.dt))
    if robot.nq == robot.nv:
        q0, u = tracking_excitation(robot, truth, seconds, seed, start_state(robot)[0])
        return truth, emulate(robot, truth, seconds, seed=seed, noise=NOISE, commands=u, q0=q0)
    q, qd, ctrl = walk.telemetry(robot, truth, walk.load(WALKER, robot.name), steps * robot.dt + 1e-9, seed,
                                 (NOISE["q"], NOISE["qd"]))
    return truth, Trajectory(np.arange(len(q)) * robot.dt, q, qd, ctrl, source=f"walker, seed {seed}")


def prior_draws(model: TwinModel) -> np.ndarray:
    """DRAWS physical draws (DRAWS, P) from the config's prior."""
    return np.asarray(jax.vmap(model.constrain)(model.sample_prior(jax.random.PRNGKey(1), DRAWS)))


def posterior_draws(names, values: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """DRAWS resampled posterior draws {name: (DRAWS,)} of weighted particles values (N, P), weights (N,)."""
    idx = np.random.default_rng(0).choice(len(weights), DRAWS, p=weights / weights.sum())
    return {n: values[idx, i] for i, n in enumerate(names)}


def parameter_table(twin: Twin, truth: dict[str, float]) -> dict:
    """Per parameter {truth, mean, q05, q95, contraction, covered, z, pit}; confounded pairs; the weighted
    particles. z: (mean − truth) / posterior sd; pit: posterior probability below the truth."""
    post = twin.posterior
    draws = posterior_draws(post.names, post.values, post.weights)
    summary = post.summary()
    table = identification_table(post.names, prior_draws(twin.model), draws, summary, truth, CONFOUNDED)
    for i, n in enumerate(post.names):
        sd = summary[n]["sd"]                   # 0: held fixed (the whole-log engine's noise scales)
        table["parameters"][n] |= {"z": (summary[n]["mean"] - truth[n]) / sd if sd > 0 else None,
                                   "pit": pit(post.values[:, i], post.weights, truth[n])}
    return {**table, "particles": {"values": post.values.tolist(), "weights": post.weights.tolist()}}


def coverage(runs: list[dict], model: TwinModel, engine: str = "update") -> dict:
    """How often the 90 % intervals held the truths, over all (seed, parameter) pairs: for the parameters
    whose truths are drawn from the prior (`draw_truth`), where a calibrated posterior covers 0.90 on
    average, and for the noise scales apart, whose truths are the emulator's fixed `NOISE` (as in
    `benchmarks/calibration.py`; not with the whole-log engine, which does not estimate them). Each with its Wilson
    95 % interval, the RMS of z (1 when calibrated) and the share of PITs outside [0.05, 0.95] (0.10 when
    calibrated)."""
    out = {}
    groups = (("prior_drawn", model.param_names),) + ((("noise_scales", model.noise_names),) if engine == "update"
                                                       else ())
    for group, names in groups:
        rows = [r["parameters"][n] for r in runs for n in names]
        pits = np.array([p["pit"] for p in rows])
        out[group] = {**coverage_stats([p["covered"] for p in rows]), "parameters": list(names),
                      "rms_z": float(np.sqrt(np.mean([p["z"] ** 2 for p in rows]))),
                      "pit_tails": float(np.mean((pits < 0.05) | (pits > 0.95)))}
    return out


def run_seed(cfg, model: TwinModel, seed: int, seconds: float, clock: CompileClock, engine: str = "update",
             horizon_s: float = HORIZON_S) -> dict:
    """One hidden truth streamed through a fresh twin (engine "update"), or fitted at once by the whole-log
    engine on segments of horizon_s ("whole-log"); its parameter table, updates or fit, and timings."""
    start = time.perf_counter()
    clock.take()
    truth, traj = telemetry(cfg, model, seed, seconds)
    inference = {"seed": seed} | ({"particles": WHOLE_LOG_DRAWS} if engine == "whole-log" else {})
    twin = Twin(cfg.model_copy(update={"inference": cfg.inference.model_copy(update=inference)}), model)
    if engine == "whole-log":
        fit = fit_twin(twin, [traj], adam_steps=0, horizon_s=horizon_s)
        print(f"  {cfg.name} seed {seed}: whole-log fit, {fit['segments']} segments, {fit['optimiser_steps']} Newton "
              f"steps, κ {fit['temper_autocorrelation_steps']:.1f}, {fit['wall_time_s']:.1f} s", flush=True)
        fit.pop("model_error", None)
        # the noise scales are held at the config's, not estimated: reported neither as truths nor as parameters
        names, noise = model.param_names, cfg.observation.noise_scale
        record = {"fit": fit, "seconds_used": (len(traj.t) - 1) * model.robot.dt}
    else:
        updates = []
        for w in consecutive_windows(traj.q, traj.qd, traj.ctrl, model.window_samples):
            r = twin.update(w)
            updates.append({k: r.as_dict()[k] for k in ("accepted", "reason", "engine", "stages", "ess",
                                                         "newton_steps", "temper", "latency_s")})
            print(f"  {cfg.name} seed {seed} window {len(updates)}: {r.engine} accepted={r.accepted} ess {r.ess:.1f} "
                  f"newton {r.newton_steps} stages {r.stages} κ {r.temper:.2f} {r.latency_s:.1f} s", flush=True)
        names, noise = model.names, NOISE
        record = {"windows": len(updates), "updates": updates,
                  "seconds_used": len(updates) * (model.window_samples - 1) * model.robot.dt}
    truth_all = truth | {f"noise:{c}": noise[c] for c in model.channels}
    table = parameter_table(twin, truth_all)
    return {"seed": seed, "truth": {n: truth_all[n] for n in names}, **table,
            "parameters": {n: table["parameters"][n] for n in names},
            "particles": {k: v[:SAVED_DRAWS] for k, v in table["particles"].items()}, **record,
            "lowest_height_m": float(traj.q[:, 2].min()) if model.robot.nq > model.robot.nv else None,
            "wall_s": time.perf_counter() - start, "compile_s": clock.take()}


def verdicts(runs: list[dict], names) -> dict:
    """Per parameter: contraction in every seed, coverage count, and identifiable / not identifiable."""
    out = {}
    for n in names:
        c = [r["parameters"][n]["contraction"] for r in runs]
        out[n] = {"contraction": c, "covered": sum(r["parameters"][n]["covered"] for r in runs), "seeds": len(runs),
                  "verdict": "identifiable" if min(c) > IDENTIFIED else "not identifiable"}
    return out


def plot(configs: dict, path: Path) -> None:
    """One histogram per (config, parameter) of each config's first seed: prior, posterior, truth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = []
    for config, study_ in configs.items():
        run, names = study_["runs"][0], list(study_["runs"][0]["parameters"])
        prior = prior_draws(TwinModel(load_config(study_["config"])))
        post = posterior_draws(names, np.array(run["particles"]["values"]), np.array(run["particles"]["weights"]))
        panels += [(config, n, prior[:, i], post[n], run["truth"][n]) for i, n in enumerate(names)]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
    for ax, (config, name, prior, post, truth) in zip(axes.ravel(), panels):
        lo, hi = np.quantile(np.concatenate([prior, post, [truth]]), [0.005, 0.995])
        ax.hist(prior, np.linspace(min(lo, truth), max(hi, truth), 50), density=True, color="0.7", label="prior")
        narrow = ax.twinx()     # own density scale: a contracted posterior would flatten the prior to nothing
        p_lo, p_hi = np.quantile(post, [0.005, 0.995])
        narrow.hist(post, np.linspace(p_lo, p_hi + 1e-12 * abs(p_hi), 30), density=True, color="C0", alpha=0.8,
                    label="posterior")
        narrow.set_yticks([])
        ax.axvline(truth, color="C3", lw=1.5, label="truth")
        ax.set_title(f"{config}\n{name}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    (h_prior, l_prior), (h_post, l_post) = axes[0, 0].get_legend_handles_labels(), narrow.get_legend_handles_labels()
    fig.legend(h_prior + h_post, l_prior + l_post, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def study(config: str, seeds: list[int], seconds: float, clock: CompileClock, save, engine: str = "update",
          horizon_s: float = HORIZON_S, stored: dict | None = None) -> dict:
    """All seeds of one config on one compiled TwinModel; save(result) after each seed (a fit of the floating
    humanoid takes minutes per seed). `stored`: an earlier result of this config and engine whose runs are
    kept for the seeds it has, where it ran with the same telemetry length, horizon and start search."""
    start = time.perf_counter()
    cfg = load_config(config)
    model = TwinModel(cfg)
    same = stored is not None and all(stored.get(k) == v for k, v in (
        ("engine", engine), ("seconds", seconds), ("horizon_s", horizon_s if engine == "whole-log" else None),
        ("start_search", cfg.inference.start_search)))
    kept = {r["seed"]: r for r in stored["runs"]} if same else {}
    runs = []
    for seed in seeds:
        runs.append(kept[seed] if seed in kept else run_seed(cfg, model, seed, seconds, clock, engine, horizon_s))
        covered = {n: p["covered"] for n, p in runs[-1]["parameters"].items()}
        print(f"  {config} seed {seed}: covered {sum(covered.values())}/{len(covered)} "
              f"{[n for n, c in covered.items() if not c]} missed", flush=True)
        result = {"config": config, "engine": engine, "horizon_s": horizon_s if engine == "whole-log" else None,
                  "particles": WHOLE_LOG_DRAWS if engine == "whole-log" else cfg.inference.particles,
                  "window_s": cfg.inference.window_s, "start_search": cfg.inference.start_search,
                  "telemetry": "PD-tracked random sines (tracking_excitation)" if config == "humanoid_fixed" else
                  f"the walker {WALKER.relative_to(RESULTS.parent.parent)}",
                  "seconds": seconds, "coverage": coverage(runs, model, engine), "runs": runs,
                  "kept_seeds": [s for s in seeds[:len(runs)] if s in kept],
                  "verdicts": verdicts(runs, list(runs[0]["parameters"])),
                  "wall_s": time.perf_counter() - start, "compile_s": sum(r["compile_s"] for r in runs)}
        save(result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--seconds", type=float, default=None,
                    help=f"telemetry per seed, whole 0.3 s windows used (default per config: {SECONDS})")
    ap.add_argument("--engine", choices=["update", "whole-log"], default="update",
                    help="stream the windows through Twin.update, or one whole-log fit on segments")
    ap.add_argument("--horizon", type=float, default=HORIZON_S,
                    help="whole-log engine: restart from the measured state every S seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in the JSON for these seeds (same config, engine, telemetry length, "
                         "horizon and start search) and fit only the others")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = CompileClock()
    command = " ".join([".venv/bin/python", "experiments/humanoid_ident.py", *(argv or sys.argv[1:])])
    path = args.out / "humanoid_ident.json"
    for config in args.configs:
        load = list(os.getloadavg())
        key = config if args.engine == "update" else f"{config} whole-log"

        def save(result, key=key, load=load):
            result["command"] = command
            result["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                                 "NPROC": os.environ["NPROC"], "load_average_start": load,
                                 "load_average_end": list(os.getloadavg())}
            # The report gathers every config studied so far (configs may run as separate processes).
            report = json.loads(path.read_text()) if path.exists() else {"configs": {}}
            report.update(rule=f"identifiable: contraction > {IDENTIFIED} in every seed; confounded: posterior "
                               f"|r| >= {CONFOUNDED}", noise=NOISE)
            report["configs"][key] = result
            path.write_text(json.dumps(report, indent=2, default=float))

        stored = json.loads(path.read_text())["configs"].get(key) if args.resume and path.exists() else None
        result = study(config, args.seeds, args.seconds or SECONDS[config], clock, save, args.engine, args.horizon,
                       stored)
        for n, v in result["verdicts"].items():
            print(f"{config:15s} {n:28s} contraction {min(v['contraction']):6.2f}  covered {v['covered']}/"
                  f"{v['seeds']}  {v['verdict']}", flush=True)
        for group, c in result["coverage"].items():
            print(f"{config:15s} {group:14s} 90 % intervals cover {c['covered']}/{c['n']} = {c['coverage']:.2f} "
                  f"[Wilson {c['wilson95'][0]:.2f}, {c['wilson95'][1]:.2f}]  RMS z {c['rms_z']:.2f}  "
                  f"PIT tails {c['pit_tails']:.2f}", flush=True)
        plot(json.loads(path.read_text())["configs"], args.out / "humanoid_ident.png")
    print(f"-> {args.out / 'humanoid_ident.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
