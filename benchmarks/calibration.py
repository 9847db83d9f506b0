"""Posterior calibration: do the 90 % credible intervals cover the true parameters 90 % of the time?

For each seed the hidden truth is drawn from the twin's own prior
(`TwinModel.priors` of the estimated parameters, sensor models included; sensor
noise stays at the emulator's, which is the config's nominal noise scale), the
emulated robot (native MuJoCo, Gaussian sensor noise on every observed channel
and sensor, random-sine excitation with the same seed) records `--seconds` of
telemetry, and the twin brings it in window by
window with `Twin.update` (the config's streaming SMC) or, with
`--method fit`, in one `Twin.fit(windows, engine=...)`, or the whole recording
in one whole-log fit (`--engine whole-log`, restarted from the measured state
every `--horizon` s; its noise scales stay at the config's). Coverage is whether
truth lies in [q05, q95] of the final posterior; per parameter and overall
(all parameters of all seeds pooled), with the binomial standard error and a
Wilson 95 % interval. When the truth is drawn from the prior that the twin
uses, a calibrated posterior covers 90 % on average (target band 85-95 %).
The PIT (posterior probability below the truth) is recorded too: calibrated
means uniform on [0, 1]; mass near 0 and 1 means over-confident.

Errors and interval widths are in prior sds (biases are centred on zero, so a relative error
would divide by a truth near zero). Each parameter's contraction (1 − posterior var / prior var; median over seeds)
and the pairs of parameters whose posterior correlation reaches |r| ≥ 0.5 (with
the seeds they do so in) say what the motion leaves unidentified: no
contraction, or a ridge along which two parameters trade.

One `TwinModel` is compiled once and shared: each seed gets
`Twin(cfg with seed, model=model)`, so the jitted kernels are reused.

    .venv/bin/python benchmarks/calibration.py                # 20 seeds, 3 s each
    .venv/bin/python benchmarks/calibration.py --config humanoid_fixed_sensors --seconds 1.2 --excitation tracking \
        --out benchmarks/results/calibration_sensors.json   # sensor models on the fixed humanoid
    .venv/bin/python benchmarks/calibration.py --seeds 10 --seconds 4
    .venv/bin/python benchmarks/calibration.py --config benchmarks/configs/arm2_sensors.toml --seconds 2 \
        --method fit --engine whole-log --horizon 0.1 --out benchmarks/results/calibration_arm2_sensors_whole_log.json
    .venv/bin/python benchmarks/calibration.py --quick        # 2 seeds, smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import command, machine  # noqa: E402
from update import CompileMeter, setup_jax  # noqa: E402


def draw_truth(jax, model, seed: int) -> dict[str, float]:
    """One draw from the prior of the estimated parameters (constrained, physical units)."""
    keys = jax.random.split(jax.random.PRNGKey(1_000_003 * (seed + 1)), len(model.param_names))
    return {n: float(model.priors[i].sample(keys[i])) for i, n in enumerate(model.param_names)}


def run_seed(cfg, model, prior: np.ndarray, seed: int, seconds: float, method: str, engine: str, meter,
             excitation: str = "sines", horizon_s: float | None = None, adam_steps: int = 50) -> dict:
    """One hidden truth: emulate, stream (or fit), and score the posterior; prior (M, D) are constrained
    draws of the twin's prior (contraction and prior sds). excitation: "sines", random-sine commands
    (`sim.emulator.excitation`), or "tracking", a joint-space PD tracking sines inside each joint's range
    (`sim.emulator.tracking_excitation`; motors only). horizon_s, adam_steps: the whole-log engine's restarts and
    its Adam steps before Newton."""
    import jax
    from twin_bayes.data import trajectory_windows
    from twin_bayes.diagnostics import identification_table, pit
    from twin_bayes.inference import Twin
    from twin_bayes.sim.checks import start_state
    from twin_bayes.sim.emulator import emulate, tracking_excitation

    truth = draw_truth(jax, model, seed)
    noise = dict(cfg.observation.noise_scale)
    drive = {}
    if excitation == "tracking":
        q0, u = tracking_excitation(model.robot, truth, seconds, seed, start_state(model.robot)[0])
        drive = {"commands": u, "q0": q0}
    traj = emulate(model.robot, truth, seconds, seed=seed, noise=noise, **drive)
    twin = Twin(cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"seed": seed})}), model=model)
    T = model.window_samples
    windows = [twin.window(w["q"], w["qd"], w["ctrl"], sensors=w["sensors"] or None)
               for w in trajectory_windows([traj], T, T, model.robot.dt, final=False)]
    t0 = time.perf_counter()
    meter.take()
    reports = []
    if method == "update":
        for w in windows:
            rep = twin.update(w)
            reports.append({"accepted": rep.accepted, "reason": rep.reason, "stages": rep.stages,
                            "moves": rep.moves, "ess": rep.ess, "acceptance": rep.acceptance,
                            "latency_s": rep.latency_s})
    elif engine == "whole-log":
        from twin_bayes.inference.whole_log import fit_twin
        info = fit_twin(twin, [traj], adam_steps=adam_steps, horizon_s=horizon_s)
        reports.append({"accepted": info["refused"] is None, "reason": info["refused"], "info": info})
    else:
        res = twin.fit(windows, engine=engine)
        reports.append({"accepted": True, "info": {k: (float(v) if np.isscalar(v) and not isinstance(v, str) else v)
                                                   for k, v in res.info.items()}})
    wall = time.perf_counter() - t0
    comp = meter.take()
    post = twin.posterior
    summ = post.summary()
    truth_all = dict(truth) | {f"noise:{c}": noise[c] for c in noise}
    prior_sd = prior.std(0)
    idx = post.resample(np.random.default_rng(seed), 4000)
    ident = identification_table(post.names, prior, {n: post.values[idx, i] for i, n in enumerate(post.names)},
                                 summ, threshold=0.5)
    per = {}
    for i, name in enumerate(post.names):
        s, x = summ[name], truth_all[name]
        per[name] = {"truth": x, "q05": s["q05"], "q50": s["q50"], "q95": s["q95"], "mean": s["mean"], "sd": s["sd"],
                     "covered": bool(s["q05"] <= x <= s["q95"]), "pit": pit(post.values[:, i], post.weights, x),
                     "contraction": ident["parameters"][name]["contraction"],
                     "err_prior_sd": abs(s["q50"] - x) / prior_sd[i],
                     "ci90_prior_sd": (s["q95"] - s["q05"]) / prior_sd[i],
                     "z": (s["mean"] - x) / s["sd"] if s["sd"] > 0 else None}
    return {"seed": seed, "seconds": seconds, "windows": len(windows), "wall_s": wall, "compile": comp,
            "all_accepted": all(r["accepted"] for r in reports), "updates": reports,
            "posterior_ess": post.ess, "particles": len(post),
            "unique_particles": int(len(np.unique(np.asarray(post.particles.z), axis=0))), "params": per,
            "correlated_pairs": ident["confounded_pairs"]}


def summary(model, rows: list[dict]) -> dict:
    """Coverage overall and per parameter, PIT tails, errors, contraction, correlated pairs and timing
    of the seeds run so far."""
    from twin_bayes.diagnostics import coverage_stats
    names = model.param_names
    per_param = {n: coverage_stats([r["params"][n]["covered"] for r in rows]) for n in model.names}
    for n in model.names:
        pits = np.array([r["params"][n]["pit"] for r in rows])
        per_param[n]["pit_tails"] = float(np.mean((pits < 0.05) | (pits > 0.95)))
        per_param[n]["median_err_prior_sd"] = float(np.median([r["params"][n]["err_prior_sd"] for r in rows]))
        per_param[n]["median_ci90_prior_sd"] = float(np.median([r["params"][n]["ci90_prior_sd"] for r in rows]))
        per_param[n]["median_contraction"] = float(np.median([r["params"][n]["contraction"] for r in rows]))
        per_param[n]["estimated"] = n in names
    pairs: dict[str, list[float]] = {}
    for r in rows:
        for a, b, c in r["correlated_pairs"]:
            pairs.setdefault(f"{a} ~ {b}", []).append(c)
    correlated = {k: {"seeds": len(v), "median_r": float(np.median(v))}
                  for k, v in sorted(pairs.items(), key=lambda kv: -len(kv[1]))}
    steady = [r["wall_s"] for r in rows if r["compile"]["total_s"] < 1.0]
    return {"overall_coverage": coverage_stats([r["params"][n]["covered"] for r in rows for n in names]),
            "per_parameter": per_param, "correlated_pairs": correlated,
            "target": {"nominal": 0.9, "band": [0.85, 0.95]},
            "timing": {"median_seed_wall_s_without_compile": float(np.median(steady)) if steady else None,
                       "first_seed_wall_s": rows[0]["wall_s"], "first_seed_compile": rows[0]["compile"]},
            "seeds": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="arm2")
    ap.add_argument("--seeds", type=int, default=20, help="number of seeds (truths)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=3.0, help="emulated telemetry per seed (whole windows used)")
    ap.add_argument("--particles", type=int, default=None, help="override inference.particles")
    ap.add_argument("--method", choices=["update", "fit"], default="update",
                    help="stream window by window (Twin.update) or one batch refit (Twin.fit)")
    ap.add_argument("--engine", choices=["smc", "nuts", "svi", "whole-log"], default="smc",
                    help="engine of --method fit")
    ap.add_argument("--horizon", type=float, default=None,
                    help="whole-log engine: restart from the measured state every S seconds (default: never)")
    ap.add_argument("--adam-steps", type=int, default=50,
                    help="whole-log engine: Adam steps from the prior mean before its Newton steps (0: Newton only)")
    ap.add_argument("--excitation", choices=["sines", "tracking"], default="sines",
                    help="random-sine torques, or a PD tracking sines inside the joints' ranges (for a robot whose "
                         "joints rest on their limits under open-loop torques, such as the fixed humanoid's leg)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/calibration.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = 2
    if args.engine != "whole-log" and (args.horizon is not None or args.adam_steps != 50):
        ap.error("--horizon and --adam-steps are the whole-log engine's (--method fit --engine whole-log)")
    if args.method != "fit" and args.engine != "smc":
        ap.error("--engine chooses the engine of --method fit")

    load_start = list(os.getloadavg())
    jax, cache = setup_jax()
    meter = CompileMeter()
    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel

    cfg = load_config(args.config)
    if args.particles:
        cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"particles": args.particles})})
    model = TwinModel(cfg)
    prior = np.asarray(jax.vmap(model.constrain)(model.sample_prior(jax.random.PRNGKey(1), 4000)))
    rows = []
    t_all = time.perf_counter()
    header = {"benchmark": "calibration", "command": command(),
              "machine": machine(compilation_cache_dir=cache, load_average_at_start=load_start), "config": cfg.name,
              "settings": {"seeds": args.seeds, "first_seed": args.first_seed, "seconds": args.seconds,
                           "method": args.method, "excitation": args.excitation,
                           "engine": args.engine if args.method == "fit" else cfg.inference.engine,
                           "horizon_s": args.horizon, "adam_steps": args.adam_steps,
                           "particles": cfg.inference.particles, "window_s": cfg.inference.window_s,
                           "interval": "posterior q05..q95 (90 % credible)", "truth": "drawn from TwinModel.priors",
                           "emulator_noise": dict(cfg.observation.noise_scale), "quick": args.quick}}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run_seed(cfg, model, prior, seed, args.seconds, args.method, args.engine, meter, args.excitation,
                     args.horizon, args.adam_steps)
        rows.append(r)
        cov = " ".join("Y" if p["covered"] else "." for n, p in r["params"].items() if n in model.param_names)
        print(f"seed {seed:3d}: {r['wall_s']:7.1f} s (compile {r['compile']['total_s']:6.1f} s)  covered [{cov}]  "
              f"{'all accepted' if r['all_accepted'] else 'SOME UPDATES REJECTED'}", flush=True)
        out = {**header, **summary(model, rows), "seeds_done": len(rows), "total_s": time.perf_counter() - t_all}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))   # each seed: a long run keeps its seeds
    per_param, overall, correlated = out["per_parameter"], out["overall_coverage"], out["correlated_pairs"]
    names, total = model.param_names, out["total_s"]
    print(f"\n{'parameter':<28} {'coverage':>9} {'± se':>6} {'Wilson 95%':>15} {'PIT tails':>9} "
          f"{'err/prior sd':>12} {'contraction':>11}")
    for n in model.names:
        s = per_param[n]
        tag = "" if s["estimated"] else "  (noise, not in overall)"
        print(f"{n:<28} {s['coverage']:>9.2f} {s['se']:>6.2f} [{s['wilson95'][0]:.2f}, {s['wilson95'][1]:.2f}]"
              f"{s['pit_tails']:>10.2f} {s['median_err_prior_sd']:>12.4f} {s['median_contraction']:>11.3f}{tag}")
    print(f"{f'overall ({len(names)} parameters)':<28} {overall['coverage']:>9.2f} {overall['se']:>6.2f} "
          f"[{overall['wilson95'][0]:.2f}, {overall['wilson95'][1]:.2f}]   target 0.90 (0.85-0.95)")
    for pair, c in correlated.items():      # the JSON lists every pair; here those of a quarter of the seeds
        if c["seeds"] < max(2, len(rows) // 4):
            continue
        print(f"correlated (|r| >= 0.5) in {c['seeds']:2d} of {len(rows)} seeds: {pair} "
              f"(median r {c['median_r']:+.2f})")
    print(f"{len(rows)} seeds, {args.seconds} s each, {total:.0f} s in all. JSON: {args.out}")


if __name__ == "__main__":
    main()
