"""Streaming update latency: `Twin.update` per window for a shipped twin (default arm2).

An emulated robot (native MuJoCo, hidden true parameters, Gaussian sensor
noise) records `--warmup + --windows` windows of telemetry at the config's
rate (arm2: 1 s windows of 500 Hz samples). Each window goes through
`Twin.update` in order, with the config's defaults (32 particles, Laplace
importance sampling; tempered SMC where its weights degenerate).

Figures, per particle count:

* cold windows: the first update (starts from the prior; compiles the state
  Jacobian, the Newton step and the importance draws) and the second, with
  the seconds JAX spent tracing, lowering and compiling inside each
  (`jax.monitoring` events) and the persistent-cache hits/misses, so that
  compile time is reported apart from steady state;
* steady state: windows after the warm-up: median / p90 latency, stages per
  window, latency per stage, real-time factor = window duration / median
  latency (> 1: the twin keeps up with the robot);
* first window from the prior without compiling: a fresh `Twin` on the same
  compiled `TwinModel` (new seed), its first update timed (what starting a
  twin costs once the kernels exist).

    .venv/bin/python benchmarks/update.py                    # 20 windows, 32 particles
    .venv/bin/python benchmarks/update.py --particles 16 32 64
    .venv/bin/python benchmarks/update.py --quick            # 3 windows, smoke run

The persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, default
~/.cache/twin-bayes/jax) is on: a cold figure is a real compile when the
cache missed, a cache load when it hit; the JSON says which.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from common import REPO, command, machine


def setup_jax():
    warnings.filterwarnings("ignore")
    import jax
    jax.config.update("jax_enable_x64", True)
    from twin_bayes.compiled import enable_cache
    enable_cache()                                  # the persistent cache as the service and CLI use it
    return jax, jax.config.jax_compilation_cache_dir


class CompileMeter:
    """Sums JAX's compile-related events (seconds, cache hits/misses) between `reset()` calls."""

    DURATIONS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace_s",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
        "/jax/core/compile/backend_compile_duration": "compile_s",
        "/jax/compilation_cache/cache_retrieval_time_sec": "cache_load_s",
    }
    COUNTS = {"/jax/compilation_cache/cache_hits": "cache_hits",
              "/jax/compilation_cache/cache_misses": "cache_misses"}

    def __init__(self):
        from jax import monitoring
        self.reset()
        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)

    def reset(self):
        self.acc = {v: 0.0 for v in self.DURATIONS.values()} | {v: 0 for v in self.COUNTS.values()}

    def _duration(self, event, duration, **_):
        key = self.DURATIONS.get(event)
        if key:
            self.acc[key] += float(duration)

    def _event(self, event, **_):
        key = self.COUNTS.get(event)
        if key:
            self.acc[key] += 1

    def take(self) -> dict:
        out = dict(self.acc)
        out["total_s"] = out["trace_s"] + out["lower_s"] + out["compile_s"] + out["cache_load_s"]
        self.reset()
        return out


def with_particles(cfg, n: int):
    return cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"particles": n})})


def windows_of(traj, T: int, count: int):
    """The first `count` windows of the shared cutter (T samples, sharing their boundary sample)."""
    from twin_bayes.data import consecutive_windows
    return [(w["q"], w["qd"], w["ctrl"]) for w in consecutive_windows(traj.q, traj.qd, traj.ctrl, T)[:count]]


def run_batched(cfg, model, counts, data, warmup: int, meter: "CompileMeter") -> list[dict]:
    """Throughput of `update_many`: R twins (seeds 0..R-1) each given the same windows in one batched
    call per window; latency per call and windows per second, after `warmup` untimed calls."""
    from twin_bayes.inference import Twin
    from twin_bayes.inference.twin import update_many
    out = []
    for r in counts:
        twins = [Twin(cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"seed": i})}), model)
                 for i in range(r)]
        lat, compile_s = [], 0.0
        for i, (q, qd, u) in enumerate(data):
            w = twins[0].window(q, qd, u)
            meter.take()
            t0 = time.perf_counter()
            reports = update_many(twins, [w] * r)
            wall = time.perf_counter() - t0
            compile_s += meter.take()["total_s"]
            if i >= warmup:
                lat.append(wall)
            print(f"  R={r:3d} window {i:2d}: {wall:8.3f} s ({sum(x.accepted for x in reports)}/{r} accepted)",
                  flush=True)
        med = float(np.median(lat))
        out.append({"robots": r, "median_batch_latency_s": med, "p90_batch_latency_s": pct(lat, 90),
                    "windows_per_s": r / med, "robots_in_real_time": r * cfg.inference.window_s / med,
                    "compile_s": compile_s})
    return out


def pct(x, q):
    return float(np.percentile(np.asarray(x, dtype=float), q)) if len(x) else float("nan")


def run_particles(cfg, model, n: int, data, warmup: int, seed: int, meter: CompileMeter) -> dict:
    from twin_bayes.inference import Twin
    cfg_n = with_particles(cfg, n)
    twin = Twin(cfg_n.model_copy(update={"inference": cfg_n.inference.model_copy(update={"seed": seed})}), model=model)
    rows = []
    for i, (q, qd, u) in enumerate(data):
        w = twin.window(q, qd, u)
        meter.take()
        t0 = time.perf_counter()
        rep = twin.update(w)
        wall = time.perf_counter() - t0
        comp = meter.take()
        rows.append({"window": i, "latency_s": wall, "report_latency_s": rep.latency_s, "engine": rep.engine,
                     "stages": rep.stages,
                     "beta": rep.beta, "accepted": rep.accepted, "reason": rep.reason, "ess": rep.ess,
                     "acceptance": rep.acceptance, "divergent": rep.divergent, "surprise": rep.surprise,
                     "drift": rep.drift, "compile": comp})
        print(f"  N={n:3d} window {i:2d}: {wall:8.3f} s  {rep.engine} stages {rep.stages:2d}  ess {rep.ess:5.1f}  "
              f"acc {rep.acceptance:4.2f}  compile {comp['total_s']:7.2f} s  "
              f"{'ok' if rep.accepted else 'REJECTED: ' + rep.reason}", flush=True)
    steady = [r for r in rows[warmup:]]
    lat = [r["latency_s"] for r in steady]
    stg = [r["stages"] for r in steady]
    per_stage = [r["latency_s"] / max(r["stages"], 1) for r in steady]
    window_s = cfg.inference.window_s
    # A fresh twin (new seed) on the same model: the first window from the prior without compiling.
    fresh = Twin(cfg_n.model_copy(update={"inference": cfg_n.inference.model_copy(update={"seed": seed + 1})}),
                 model=model)
    w0 = fresh.window(*data[0])
    meter.take()
    t0 = time.perf_counter()
    rep0 = fresh.update(w0)
    first_warm = time.perf_counter() - t0
    comp0 = meter.take()
    post = twin.posterior.summary()
    return {
        "particles": n,
        "cold": {f"window_{r['window']}": {"latency_s": r["latency_s"], "stages": r["stages"],
                                           "compile": r["compile"]} for r in rows[:warmup]},
        "steady": {
            "windows": len(steady),
            "median_latency_s": float(np.median(lat)) if lat else float("nan"),
            "p90_latency_s": pct(lat, 90), "min_latency_s": min(lat, default=float("nan")),
            "max_latency_s": max(lat, default=float("nan")),
            "median_stages": float(np.median(stg)) if stg else float("nan"),
            "mean_stages": float(np.mean(stg)) if stg else float("nan"),
            "median_latency_per_stage_s": float(np.median(per_stage)) if per_stage else float("nan"),
            "real_time_factor": window_s / float(np.median(lat)) if lat else float("nan"),
            "accepted_fraction": float(np.mean([r["accepted"] for r in steady])) if steady else float("nan"),
            "compile_s_in_steady_windows": float(sum(r["compile"]["total_s"] for r in steady)),
        },
        "first_window_from_prior_no_compile": {"latency_s": first_warm, "stages": rep0.stages,
                                               "accepted": rep0.accepted, "compile": comp0},
        "final_posterior": {k: {"mean": v["mean"], "q05": v["q05"], "q95": v["q95"]} for k, v in post.items()},
        "windows": rows,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="arm2", help="twin config (shipped name or TOML path)")
    ap.add_argument("--particles", type=int, nargs="+", default=[32], help="particle counts to measure")
    ap.add_argument("--windows", type=int, default=20, help="timed (steady-state) windows after the warm-up")
    ap.add_argument("--warmup", type=int, default=2, help="untimed windows first (the first compiles)")
    ap.add_argument("--seed", type=int, default=0, help="emulator seed (excitation and noise) and twin seed")
    ap.add_argument("--truth", choices=["nominal", "prior"], default="nominal",
                    help="hidden true parameters: the robot's nominal values or one draw from the prior")
    ap.add_argument("--robots", type=int, nargs="*", default=[],
                    help="also measure batched updates (update_many) of this many robots at once")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 timed windows, first particle count only")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/update.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.windows, args.particles = 3, args.particles[:1]

    jax, cache = setup_jax()
    meter = CompileMeter()
    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel
    from twin_bayes.sim.emulator import emulate

    load_start = list(os.getloadavg())
    cache_files_before = len(os.listdir(cache)) if os.path.isdir(cache) else 0
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    model = TwinModel(cfg)
    model_s = time.perf_counter() - t0
    names = model.param_names
    nominal = model.robot.nominal()
    if args.truth == "nominal":
        truth = {n: float(nominal[n]) for n in names}
    else:
        z = model.sample_prior(jax.random.PRNGKey(10_000 + args.seed), 1)[0]
        vals = np.asarray(model.constrain(z))
        truth = {n: float(vals[i]) for i, n in enumerate(names)}
    T = model.window_samples
    n_win = args.warmup + args.windows
    seconds = n_win * (T - 1) * model.robot.dt
    traj = emulate(model.robot, truth, seconds, seed=args.seed)
    data = windows_of(traj, T, n_win)
    print(f"{cfg.name}: {len(names)} parameters, windows of {T} samples ({cfg.inference.window_s} s), "
          f"{n_win} windows; cache {cache} ({cache_files_before} entries)", flush=True)

    results = []
    for n in args.particles:
        results.append(run_particles(cfg, model, n, data, args.warmup, args.seed, meter))
    batched = run_batched(cfg, model, args.robots, data, args.warmup, meter) if args.robots else []

    out = {
        "benchmark": "update",
        "command": command(),
        "machine": machine(compilation_cache_dir=cache, load_average_at_start=load_start),
        "config": cfg.name,
        "settings": {"engine": cfg.inference.engine, "window_s": cfg.inference.window_s,
                     "window_samples": T, "dt": model.robot.dt, "segment_steps": cfg.inference.segment_steps,
                     "mcmc_steps": cfg.inference.mcmc_steps, "target_ess": cfg.inference.target_ess,
                     "max_stages": cfg.inference.max_stages, "warmup": args.warmup, "windows": args.windows,
                     "seed": args.seed, "truth_kind": args.truth, "quick": args.quick},
        "truth": truth,
        "model_construction_s": model_s,
        "compilation_cache_entries_before": cache_files_before,
        "compilation_cache_entries_after": len(os.listdir(cache)) if os.path.isdir(cache) else 0,
        "results": results,
        "batched": batched,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))

    print()
    print(f"{'N':>4} {'cold w0 s':>10} {'(compile)':>10} {'cold w1 s':>10} {'(compile)':>10} {'median s':>9} "
          f"{'p90 s':>8} {'stages':>7} {'s/stage':>8} {'RTF':>6} {'fresh w0 s':>10}")
    for r in results:
        c = list(r["cold"].values())
        c0 = c[0] if c else {"latency_s": float("nan"), "compile": {"total_s": float("nan")}}
        c1 = c[1] if len(c) > 1 else {"latency_s": float("nan"), "compile": {"total_s": float("nan")}}
        s = r["steady"]
        print(f"{r['particles']:>4} {c0['latency_s']:>10.2f} {c0['compile']['total_s']:>10.2f} "
              f"{c1['latency_s']:>10.2f} {c1['compile']['total_s']:>10.2f} {s['median_latency_s']:>9.3f} "
              f"{s['p90_latency_s']:>8.3f} {s['median_stages']:>7.1f} {s['median_latency_per_stage_s']:>8.3f} "
              f"{s['real_time_factor']:>6.2f} {r['first_window_from_prior_no_compile']['latency_s']:>10.2f}")
    for b in batched:
        print(f"batch of {b['robots']:3d}: {b['median_batch_latency_s']:.3f} s per call, "
              f"{b['windows_per_s']:.1f} windows/s, {b['robots_in_real_time']:.1f} robots in real time")
    print(f"\nRTF = window duration ({cfg.inference.window_s} s) / median steady latency. JSON: {args.out}")


if __name__ == "__main__":
    main()
