"""Streaming agrees with batch: the same data in 10 windows through `Twin.update` against one NUTS fit.

Per seed, the truth of arm2's six parameters is drawn from the twin's prior
(`calibration.draw_truth`), the emulator records `--windows` windows of 1 s,
a fresh twin streams them one by one, and a second twin, restored from the
streamed posterior (so both linearise the start-state noise at the same
point), refits all windows at once with NUTS (`--chains` × `--samples`).
Per parameter: the difference of means in combined Monte Carlo standard
errors (sd/√ESS of each side) and the ratio of sds. Agreement: |Δmean| below
3.5 combined standard errors for every parameter (the test version of this,
`tests/inference/test_batch.py`, uses five 0.5 s windows).

    .venv/bin/python benchmarks/agreement.py                 # 3 seeds, 10 windows
    .venv/bin/python benchmarks/agreement.py --seeds 1 --samples 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from calibration import draw_truth  # noqa: E402
from common import command, machine  # noqa: E402
from update import setup_jax, windows_of  # noqa: E402


def compare(stream, nuts, chains) -> dict:
    import arviz as az
    ess_a = stream.ess
    ess_b = az.ess(az.convert_to_dataset({"z": chains}))["z"].values
    sa, sb = stream.summary(), nuts.summary()
    out = {}
    for i, n in enumerate(stream.names):
        se = float(np.hypot(sa[n]["sd"] / np.sqrt(ess_a), sb[n]["sd"] / np.sqrt(ess_b[i])))
        out[n] = {"stream_mean": sa[n]["mean"], "nuts_mean": sb[n]["mean"], "stream_sd": sa[n]["sd"],
                  "nuts_sd": sb[n]["sd"], "mean_diff_in_se": (sa[n]["mean"] - sb[n]["mean"]) / se,
                  "sd_ratio": sa[n]["sd"] / sb[n]["sd"], "nuts_ess": float(ess_b[i])}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="arm2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/agreement.json"))
    args = ap.parse_args(argv)
    jax, cache = setup_jax()
    from twin_bayes.config import load_config
    from twin_bayes.inference import Twin
    from twin_bayes.models import TwinModel
    from twin_bayes.sim.emulator import emulate

    cfg = load_config(args.config)
    model = TwinModel(cfg)
    T = model.window_samples
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        truth = draw_truth(jax, model, seed)
        traj = emulate(model.robot, truth, args.windows * (T - 1) * model.robot.dt, seed=seed)
        windows = [model.window(*w) for w in windows_of(traj, T, args.windows)]
        streamed = Twin(cfg, model=model)
        t0 = time.perf_counter()
        reports = [streamed.update(w) for w in windows]
        t_stream = time.perf_counter() - t0
        batch = Twin(cfg, model=model)
        batch.restore(streamed.particles, 0)
        t0 = time.perf_counter()
        res = batch.fit(windows, engine="nuts", num_warmup=args.warmup, num_samples=args.samples,
                        num_chains=args.chains)
        t_nuts = time.perf_counter() - t0
        per = compare(streamed.posterior, batch.posterior, res.chains)
        worst = max(abs(p["mean_diff_in_se"]) for p in per.values())
        rows.append({"seed": seed, "stream_wall_s": t_stream, "nuts_wall_s": t_nuts,
                     "all_accepted": all(r.accepted for r in reports), "engines": [r.engine for r in reports],
                     "nuts_divergences": int(res.divergent.sum()), "max_abs_mean_diff_in_se": worst,
                     "agree": worst < 3.5, "parameters": per})
        print(f"seed {seed}: stream {t_stream:.1f} s, NUTS {t_nuts:.1f} s, max |Δmean| {worst:.2f} se, "
              f"sd ratios {[round(p['sd_ratio'], 2) for p in per.values()]}", flush=True)
        out = {"benchmark": "agreement", "command": command(), "machine": machine(compilation_cache_dir=cache),
               "config": cfg.name, "settings": vars(args), "agree_all_seeds": all(r["agree"] for r in rows),
               "median_sd_ratio": float(np.median([p["sd_ratio"] for r in rows for p in r["parameters"].values()])),
               "seeds": rows}
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))   # after every seed: partial runs count
    print(f"agree on all seeds: {out['agree_all_seeds']}; median sd ratio stream/NUTS {out['median_sd_ratio']:.2f}")


if __name__ == "__main__":
    main()
