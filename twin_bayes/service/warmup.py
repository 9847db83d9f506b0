"""`twin-bayes warmup`: compile a config's update and predictive into the persistent cache.

A fresh service (or `fit`) spends its first minutes compiling; run at install time, this makes
those minutes happen once per design and machine. The compiled executables land in
$JAX_COMPILATION_CACHE_DIR (default ~/.cache/twin-bayes/jax), where every later process of the
same twin-bayes, JAX and machine finds them.
"""
from __future__ import annotations

import argparse
import json
import time

# The service's default prediction horizon (`service.worker.WorkerSettings.horizon_s`), s.
HORIZON_S = 0.05


def cmd_warmup(args) -> int:
    from twin_bayes.config import ConfigError, load_config
    try:
        cfg = load_config(args.config)
        sizes = sorted({int(x) for x in args.robots.split(",")})
    except (ConfigError, ValueError) as e:
        print(f"twin-bayes warmup: {e}", flush=True)
        return 2
    if any(n < 1 for n in sizes):
        print("twin-bayes warmup: --robots takes positive robot counts, e.g. 1,4,16", flush=True)
        return 2
    out = warmup(cfg, sizes, args.horizon)
    print(json.dumps(out, indent=2))
    return 0


def warmup(cfg, robot_counts, horizon_s: float, model=None) -> dict:
    """For each robot count, batched as the service batches on this machine (`worker.parallelism`):
    one update, the tempered phase (compiled by the service only when some robot's importance
    weights degenerate, typically on a first window; compiled here, its stages not run), and the
    service's two predictions (the horizon after a window, and the window re-predicted for model
    calibration, one robot at a time), on a window emulated at the nominal parameters; then the model error's phase
    (`Twin.learn_model_error`, one robot at a time); the wall time of each (compile included)."""
    import jax
    import numpy as np

    from twin_bayes.inference import Twin, engine
    from twin_bayes.inference.twin import _batches, _stack, predict_many, update_input, update_many
    from twin_bayes.service.worker import PREDICTION_DRAWS, QUANTILES, VALIDATION_DRAWS, parallelism
    from twin_bayes.sim.emulator import emulate
    t0 = time.perf_counter()
    first = Twin(cfg, model)
    m = first.model
    traj = emulate(m.robot, {}, (m.window_samples - 1) * m.robot.dt, seed=0, settings=dict(cfg.settings))
    settings = dict(cfg.settings) or None
    window = first.as_window({"q": traj.q, "qd": traj.qd, "ctrl": traj.ctrl, "sensors": traj.sensors}, settings)
    max_batch, _ = parallelism()
    h = max(1, int(round(horizon_s / m.robot.dt)))
    predictions = ((np.repeat(traj.ctrl[-1:], h, axis=0), -1, PREDICTION_DRAWS), (traj.ctrl[:-1], 0, VALIDATION_DRAWS))
    timings = {"load_s": time.perf_counter() - t0, "max_batch": max_batch}
    twins, tempered = [first], set()
    # The tempered phase with no stage allowed past its first reweighting: the same executable (the
    # model's numbers are traced), without the minutes its stages run from the prior.
    compile_only = m.with_numbers(max_stages=np.ones_like(m.numbers.max_stages))
    for n in robot_counts:
        start = time.perf_counter()
        twins += [Twin(cfg, m) for _ in range(n - len(twins))]
        for idx, rows in _batches(twins[:n], max_batch):
            if len(rows) not in tempered:     # once per batch size
                tempered.add(len(rows))
                states, windows = _stack([update_input(twins[i].state) for i in rows]), _stack([window] * len(rows))
                engine.temper_jit(compile_only, states, engine.propose_jit(m, states, windows))
        update_many(twins[:n], [window] * n, max_batch)
        for (commands, row, draws), k in zip(predictions, (n, 1)):    # windows are re-predicted one by one
            predict_many(twins[:k], [(traj.q[row], traj.qd[row])] * k, [commands] * k,
                         [jax.random.PRNGKey(i) for i in range(k)], QUANTILES, [settings] * k,
                         draws_per_particle=draws, max_batch=max_batch)
        timings[f"robots_{n}_s"] = time.perf_counter() - start
    start = time.perf_counter()
    first.learn_model_error(window)                                       # one robot at a time
    timings["model_error_s"] = time.perf_counter() - start
    return {"config": str(cfg.source), "robot_counts": list(robot_counts), "horizon_s": horizon_s, **timings}


def register(sub: argparse._SubParsersAction) -> dict:
    w = sub.add_parser("warmup", help="compile a config's update and predictions into the persistent cache",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--config", required=True, help="twin config TOML (or a shipped config name)")
    w.add_argument("--robots", default="1", help="comma-separated robot counts a service will batch (each "
                   "count compiles its executables; counts round up to 1, 4, 16, 64)")
    w.add_argument("--horizon", type=float, default=HORIZON_S,
                   help="prediction horizon the service publishes (s)")
    return {"warmup": cmd_warmup}
