"""Honesty under model error: the streamed arm2 twin on an emulated arm its model class cannot describe.

The truth is `twin_bayes/robots/arm2/truths/misspecified.toml` (docs/EMULATOR.md): joint friction
loss and elbow backlash that no arm2 config can estimate, a command latency and an elbow encoder
offset that the config holds at 0, AR(1)-coloured sensor noise and a 12-bit encoder. Per seed (the
excitation and the noise), native MuJoCo records `--seconds` of telemetry for the twin and
`--held-out` seconds after them. The twin does what the service does with each window
(`twin-bayes serve`): the window predicted from its measured start under its commands by the
posterior before it, without model error, `Twin.update`, then that prediction scored with the model
error learned so far, and the window added to those the model error is learned from
(`Twin.learn_model_error`: the recent windows predicted again by the posterior now). Recorded:

- held-out windows predicted from their measured starts under their commands, with the learned
  model error and without: coverage of the 50 / 90 % bands of q (the target: 0.40–0.60 / 0.85–0.95);
- the model calibration of the re-predicted windows (after the first MIN_WINDOWS);
- the final posterior against the truth of the parameters the config estimates: coverage of the
  90 % interval and (mean − truth) / sd, per parameter over the seeds; and κ, the likelihood's temper.

    .venv/bin/python benchmarks/misspecified.py                  # 10 seeds, 12 + 4 s each
    .venv/bin/python benchmarks/misspecified.py --quick          # 2 seeds
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from common import REPO, command, machine
from twin_bayes.diagnostics import coverage_stats
from update import CompileMeter, setup_jax

TRUTH = REPO / "twin_bayes/robots/arm2/truths/misspecified.toml"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def band_hits(b, observed: np.ndarray) -> dict[str, np.ndarray]:
    """Inside the 50 and 90 % bands of q (Q = QUANTILES, T, nq) per sample of observed (T, nq)."""
    return {"50": (observed >= b.q[1]) & (observed <= b.q[3]), "90": (observed >= b.q[0]) & (observed <= b.q[4])}


def run_seed(cfg, model, truth, seed: int, seconds: float, held_out_s: float, meter) -> dict:
    import jax
    from twin_bayes.data import consecutive_windows
    from twin_bayes.inference import Twin
    from twin_bayes.inference.discrepancy import MIN_WINDOWS
    from twin_bayes.sim.emulator import emulate

    traj = emulate(model.robot, truth.params, seconds + held_out_s, seed=seed, noise=truth.noise or None,
                   misspecified=truth.misspecified)
    windows = consecutive_windows(traj.q, traj.qd, traj.ctrl, model.window_samples)
    n_fit = int(round(seconds / cfg.inference.window_s))
    twin = Twin(cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"seed": seed})}), model=model)
    meter.take()
    start = time.perf_counter()
    tempers, accepted, validated = [], [], {"50": [], "90": []}
    for k, w in enumerate(windows[:n_fit]):
        key = jax.random.PRNGKey(1_000 + k)
        b = twin.predict(w["q"][0], w["qd"][0], w["ctrl"][:-1], QUANTILES, draws_per_particle=1, key=key,
                         model_error=False)                 # by the posterior before the window, as served
        rep = twin.update(twin.window(w["q"], w["qd"], w["ctrl"]))
        tempers.append(rep.temper)
        accepted.append(rep.accepted)
        if k >= MIN_WINDOWS:
            hits = band_hits(twin.with_model_error(b, key, model.settings_vector(None)), w["q"][1:])
            for c in validated:
                validated[c].append(hits[c])
        twin.learn_model_error(w)
    wall = time.perf_counter() - start
    held = {"with": {"50": [], "90": []}, "without": {"50": [], "90": []}}
    for k, w in enumerate(windows[n_fit:]):
        key = jax.random.PRNGKey(2_000 + k)
        for name, me in (("with", True), ("without", False)):
            hits = band_hits(twin.predict(w["q"][0], w["qd"][0], w["ctrl"][:-1], QUANTILES, key=key, model_error=me),
                             w["q"][1:])
            for c in held[name]:
                held[name][c].append(hits[c])
    summ = twin.posterior.summary()
    params = {}
    for n in model.param_names:
        s, x = summ[n], truth.params[n]
        params[n] = {"truth": x, "mean": s["mean"], "sd": s["sd"], "q05": s["q05"], "q95": s["q95"],
                     "covered": bool(s["q05"] <= x <= s["q95"]), "z": (s["mean"] - x) / s["sd"]}
    me = twin.model_error
    return {"seed": seed, "windows": n_fit, "held_out_windows": len(windows) - n_fit, "wall_s": wall,
            "compile": meter.take(), "all_accepted": all(accepted), "temper_final": tempers[-1],
            "temper_median": float(np.median(tempers)),
            "held_out": {name: {f"coverage_{c}": float(np.mean(v[c])) for c in v} for name, v in held.items()},
            "model_calibration": {f"coverage_{c}": float(np.mean(v)) if v else None for c, v in validated.items()},
            "model_error": None if me is None else me.as_dict(), "params": params, "_hits": held}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="arm2")
    ap.add_argument("--truth", type=Path, default=TRUTH)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=12.0, help="emulated telemetry streamed to the twin per seed")
    ap.add_argument("--held-out", type=float, default=4.0, help="s of telemetry after it, predicted window by window")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/misspecified.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = 2
    load_start = list(os.getloadavg())
    jax, cache = setup_jax()
    meter = CompileMeter()
    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel
    from twin_bayes.sim.truth import read_truth

    cfg = load_config(args.config)
    model = TwinModel(cfg)
    truth = read_truth(args.truth, model.robot)
    rows = []
    for seed in range(args.seeds):
        r = run_seed(cfg, model, truth, seed, args.seconds, args.held_out, meter)
        rows.append(r)
        h = r["held_out"]
        print(f"seed {seed}: {r['wall_s']:.0f} s, kappa {r['temper_final']:.2f}, held-out cov90 "
              f"{h['with']['coverage_90']:.2f} (without model error {h['without']['coverage_90']:.2f}), "
              f"params covered {sum(p['covered'] for p in r['params'].values())}/{len(r['params'])}", flush=True)
    pooled = {name: {f"coverage_{c}": float(np.mean(np.concatenate([np.ravel(x) for r in rows
                                                                    for x in r["_hits"][name][c]])))
                     for c in ("50", "90")} for name in ("with", "without")}
    for r in rows:
        del r["_hits"]
    per_param = {n: {**coverage_stats([r["params"][n]["covered"] for r in rows]),
                     "mean_z": float(np.mean([r["params"][n]["z"] for r in rows])),
                     "median_abs_z": float(np.median([abs(r["params"][n]["z"]) for r in rows])),
                     "truth": truth.params[n]} for n in model.param_names}
    out = {"benchmark": "misspecified", "command": command(),
           "machine": machine(compilation_cache_dir=cache, load_average_at_start=load_start),
           "config": cfg.name,
           "truth": str(args.truth.relative_to(REPO)) if args.truth.is_relative_to(REPO) else str(args.truth),
           "settings": {"seeds": args.seeds, "seconds": args.seconds, "held_out_s": args.held_out,
                        "window_s": cfg.inference.window_s, "quantiles": QUANTILES},
           "held_out_q": pooled, "target": {"coverage_90": [0.85, 0.95], "coverage_50": [0.40, 0.60]},
           "model_calibration": {c: float(np.mean([r["model_calibration"][c] for r in rows]))
                                 for c in ("coverage_50", "coverage_90")},
           "temper_final_median": float(np.median([r["temper_final"] for r in rows])),
           "parameters": per_param, "seeds": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nheld-out q bands over {args.seeds} seeds: with model error cov50 {pooled['with']['coverage_50']:.3f} "
          f"cov90 {pooled['with']['coverage_90']:.3f}; without {pooled['without']['coverage_50']:.3f} / "
          f"{pooled['without']['coverage_90']:.3f}; median kappa {out['temper_final_median']:.2f}")
    for n, s in per_param.items():
        print(f"{n:<24} coverage {s['coverage']:.2f}  mean z {s['mean_z']:+.1f}  truth {s['truth']}")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
