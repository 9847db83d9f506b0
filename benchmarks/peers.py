"""Peer comparison: MuJoCo's identification toolbox (`mujoco.sysid`) against twin-bayes on the same data.

For each seed the hidden truth of the estimated parameters (arm2: two link
masses, two joint dampings, two armatures) is drawn from the twin's prior,
the emulated robot (native MuJoCo) records telemetry, and both tools identify
the parameters from the same samples:

* twin-bayes: `Twin.update` window by window (the config's streaming SMC,
  32 particles, learned Student-t noise scales); estimate = posterior
  median, interval = q05..q95 (90 % credible).
* mujoco.sysid: `sysid.optimize` (MuJoCo's native Levenberg-Marquardt,
  finite-difference Jacobian, box bounds) from the prior median (the
  robot's nominal values, the same starting knowledge twin-bayes has), then
  `sysid.calculate_intervals(residuals, J, alpha=0.10)`: 90 % Laplace /
  Student-t confidence intervals from JᵀJ and the pooled residual variance.
  Masses are written as the link geoms' masses (inertia scales with them,
  as twin-bayes' `body_mass` does), dampings and armatures on the joints;
  bounds are the prior median · exp(±4 prior sd). Variants (`--sysid-variants`):
  - `single`: the toolbox as documented: one rollout over the whole
    record from the measured (noisy) first sample, its default residual
    (measured − predicted, each channel divided by its RMS·√T/√2);
  - `single-w`: the same, each channel further scaled so that the residual
    is in units of the config's nominal sensor noise (q 0.002 rad, qd
    0.02 rad/s), so the pooled variance behind the intervals is coherent;
  - `seg-w`: multiple shooting like twin-bayes: the record cut into
    `--sysid-segment-steps` segments, each a separate measured rollout
    started from its measured (noisy) state, noise-weighted as single-w.

Cases (`--cases`):
  - `base`: 5 s of 500 Hz data, Gaussian sensor noise (q 0.002, qd 0.02);
  - `short`: 0.5 s of the same (one half-filled twin window);
  - `heavy`: 5 s, plus Student-t (df = 2) noise of the same scales added to
    every sample (outliers: least squares and Laplace intervals assume
    Gaussian residuals; twin-bayes' likelihood is Student-t df = 4).

Per tool and case: median relative error of the estimate, coverage of the
90 % intervals (all parameters of all seeds pooled), wall time (twin-bayes
without its one-off JIT compile, which is reported apart), and ratios
twin-bayes / sysid.

    .venv/bin/python benchmarks/peers.py                 # 5 seeds, all cases
    .venv/bin/python benchmarks/peers.py --seeds 3 --cases base heavy
    .venv/bin/python benchmarks/peers.py --quick          # 1 seed, short case, smoke run
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from calibration import draw_truth  # noqa: E402
from twin_bayes.diagnostics import coverage_stats  # noqa: E402
from common import command, machine  # noqa: E402
from update import CompileMeter, setup_jax  # noqa: E402

NOISE = {"q": 0.002, "qd": 0.02}
CASES = {
    "base": {"seconds": 5.0, "heavy_df": None},
    "short": {"seconds": 0.5, "heavy_df": None},
    "heavy": {"seconds": 5.0, "heavy_df": 2.0},
}
CAN_EXPRESS = {
    "parameters": "yes: body mass (written as the link geom's mass, so inertia scales with it as in twin-bayes), "
                  "joint damping (MjsJoint.damping[0]) and armature through Parameter modifiers on the MjSpec",
    "observations": "yes: qpos/qvel as SignalType.MjStateQPos/MjStateQVel (arm2 has no sensors)",
    "noisy_start_state": "no: each rollout starts from a given initial state; the measured (noisy) sample is used "
                         "as if exact (errors-in-variables ignored; twin-bayes models it)",
    "noise_model": "no likelihood: weighted least squares; intervals assume Gaussian residuals with one pooled "
                   "variance (calculate_intervals: s2 = |r|^2/(n-p), t quantile). The scipy backend accepts robust "
                   "losses but calculate_intervals ignores them, so no robust intervals for the heavy case",
    "noise_scales": "not estimated per channel (twin-bayes learns noise:q, noise:qd); per-channel weights must be "
                    "given (variants single-w, seg-w use the config's nominal noise)",
    "prior": "no prior: box bounds and a starting point only",
    "backend_verbosity": "sysid.optimize(..., verbose=...) binds its own flag, so the backend's per-iteration "
                         "printing cannot be switched off through optimize(); output=StringIO() silences it",
}


# ----------------------------------------------------------------------------- data

def make_data(model, truth: dict, seconds: float, seed: int, heavy_df: float | None):
    from twin_bayes.sim.emulator import emulate
    traj = emulate(model.robot, truth, seconds, seed=seed, noise=NOISE)
    q, qd = np.array(traj.q), np.array(traj.qd)
    if heavy_df:
        rng = np.random.default_rng(seed + 20_000)
        q = q + NOISE["q"] * rng.standard_t(heavy_df, q.shape)
        qd = qd + NOISE["qd"] * rng.standard_t(heavy_df, qd.shape)
    return np.array(traj.t), q, qd, np.array(traj.ctrl)


# ----------------------------------------------------------------------------- twin-bayes

def fit_twin(cfg, model, seed: int, data, meter) -> dict:
    from twin_bayes.data import Trajectory, trajectory_windows
    from twin_bayes.inference import Twin
    t, q, qd, u = data
    twin = Twin(cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"seed": seed})}), model=model)
    meter.take()
    t0 = time.perf_counter()
    reports = []
    for w in trajectory_windows([Trajectory(t, q, qd, u)], model.window_samples, model.segment_steps + 1,
                                model.robot.dt):
        rep = twin.update(twin.window(w["q"], w["qd"], w["ctrl"]))
        reports.append({"accepted": rep.accepted, "reason": rep.reason, "stages": rep.stages, "samples": len(w["q"])})
    wall = time.perf_counter() - t0
    comp = meter.take()
    summ = twin.posterior.summary()
    return {"wall_s": wall, "compile_s": comp["total_s"],
            "updates": reports, "all_accepted": all(r["accepted"] for r in reports),
            "estimate": {k: v["q50"] for k, v in summ.items()},
            "interval": {k: [v["q05"], v["q95"]] for k, v in summ.items()}}


# ----------------------------------------------------------------------------- as a user meets it
def command_line_start(cfg_name: str, data, truth: dict, segment_steps: int, max_iters: int) -> dict:
    """`twin-bayes fit` of the data from the command line, with an empty compilation cache (cold) and
    with the cache that run filled (warm), next to mujoco.sysid (seg-w) run as its own process on the
    same data: process wall times, interpreter start and imports included."""
    import os
    import subprocess
    import tempfile

    from twin_bayes.data import Trajectory, write_npz
    out = {}
    with tempfile.TemporaryDirectory(prefix="twin-peers-") as tmp:
        npz = Path(tmp) / "arm2.npz"
        write_npz(npz, Trajectory(*data, source="peers"))
        (Path(tmp) / "truth.json").write_text(json.dumps(truth))
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "jax-cache")}
        for label in ("cold", "warm"):
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "twin_bayes.cli", "fit", "--config", cfg_name, "--data",
                                  str(npz), "--out", str(Path(tmp) / f"fit-{label}"), "--json"], env=env,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - start
            if run.returncode:
                raise RuntimeError(f"twin-bayes fit failed: {run.stderr[-2000:]}")
            summary = json.loads(run.stdout)
            out[f"twin_bayes_fit_{label}"] = {"process_wall_s": wall, "fit_wall_s": summary["wall_time_s"],
                                              "engine": summary["engine"], "windows": summary["windows"]}
        start = time.perf_counter()
        run = subprocess.run([sys.executable, __file__, "--config", cfg_name, "--sysid-process", str(npz),
                              "--sysid-segment-steps", str(segment_steps), "--sysid-max-iters", str(max_iters)],
                             capture_output=True, text=True, check=True)
        out["sysid_process"] = {"process_wall_s": time.perf_counter() - start, **json.loads(run.stdout)}
    sysid = out["sysid_process"]["process_wall_s"]
    out["ratios"] = {f"{k}/sysid_process": v["process_wall_s"] / sysid for k, v in out.items() if k.startswith("twin")}
    out["targets"] = {"cold_s": 60.0, "warm_over_sysid": 3.0}
    return out


def sysid_process(cfg_name: str, npz: str, segment_steps: int, max_iters: int) -> None:
    """The sysid half of `command_line_start`, in a process of its own: prints its fit's wall time."""
    from twin_bayes.config import load_config
    from twin_bayes.data import read_npz
    from twin_bayes.models import TwinModel
    cfg = load_config(cfg_name)
    tr = read_npz(npz)
    truth = json.loads((Path(npz).parent / "truth.json").read_text())
    f = fit_sysid(cfg, TwinModel(cfg), (tr.t, tr.q, tr.qd, tr.ctrl), truth, "seg-w", segment_steps, max_iters)
    print(json.dumps({"fit_wall_s": f["wall_s"]}))


# ----------------------------------------------------------------------------- mujoco.sysid

def _sysid_params(sysid, spec, model, cfg):
    """One sysid.Parameter per estimated twin parameter, bounded at prior median · exp(±4 sd)."""
    nominal = model.robot.nominal()
    params = sysid.ParameterDict()
    for name in model.param_names:
        kind, target = name.split(":")
        nom = float(nominal[name])
        sd = cfg.parameters[name].scale
        if kind == "body_mass":
            geoms = list(spec.body(target).geoms)
            gm = [float(g.mass) for g in geoms]
            tot = sum(gm)

            def mod(s, p, target=target, gm=gm, tot=tot):
                for g, m0 in zip(s.body(target).geoms, gm):
                    g.mass = m0 * p.value[0] / tot
        elif kind == "dof_damping":
            def mod(s, p, target=target):
                s.joint(target).damping = [p.value[0], 0.0, 0.0]
        elif kind == "dof_armature":
            def mod(s, p, target=target):
                s.joint(target).armature = p.value[0]
        else:
            raise ValueError(f"{name}: this benchmark maps only body_mass, dof_damping, dof_armature to sysid")
        params.add(sysid.Parameter(name, nominal=nom, min_value=nom * math.exp(-4 * sd),
                                   max_value=nom * math.exp(4 * sd), modifier=mod))
    return params


def fit_sysid(cfg, model, data, truth: dict, variant: str, segment_steps: int, max_iters: int) -> dict:
    import mujoco
    from absl import logging as absl_logging
    from mujoco import sysid

    absl_logging.set_verbosity(absl_logging.ERROR)   # "sensor data dimension" warnings: state signals, no sensors
    t, q, qd, u = data
    xml = cfg.source.parent / f"{cfg.robot.name}.xml"
    t0 = time.perf_counter()
    spec = mujoco.MjSpec.from_file(str(xml))
    m0 = spec.compile()
    names = [(f"{j}_qpos", sysid.SignalType.MjStateQPos) for j in _joints(m0)] + \
            [(f"{j}_qvel", sysid.SignalType.MjStateQVel) for j in _joints(m0)]
    n = len(t)
    if variant.startswith("seg"):
        L = segment_steps
        starts = [s for s in range(0, n - 1, L) if min(s + L, n - 1) - s >= 2]
    else:
        L, starts = n - 1, [0]
    inits, ctrls, sens, seq = [], [], [], []
    for s in starts:
        e = min(s + L, n - 1) + 1
        tt = t[s:e] - t[s]             # each rollout starts at time 0
        inits.append(sysid.create_initial_state(m0, q[s], qd[s]))
        ctrls.append(sysid.TimeSeries(tt, u[s:e]))
        sens.append(sysid.TimeSeries.from_names(tt, np.hstack([q[s:e], qd[s:e]]), m0, names=names))
        seq.append(f"seg{s}")
    ms = sysid.ModelSequences(cfg.robot.name, spec, seq, inits, ctrls, sens, allow_missing_sensors=True)
    base_fn = sysid.build_residual_fn(models_sequences=[ms])
    weighted = variant.endswith("-w")
    # sysid's default residual (measured - predicted, t-major, channels minor) divides each channel
    # of each rollout by ||measured channel||/sqrt(2); the weighted variants multiply that back and
    # divide by the nominal noise sd, so residuals are in noise units.
    sig = np.array([NOISE["q"]] * q.shape[1] + [NOISE["qd"]] * qd.shape[1])
    col = []
    for s in starts:
        e = min(s + L, n - 1) + 1
        col.append(np.linalg.norm(np.hstack([q[s + 1:e], qd[s + 1:e]]), axis=0) / np.sqrt(2) / sig)
    nc = len(sig)

    def residual_fn(x, params, **kw):
        res, preds, recs = base_fn(x, params, **kw)
        if weighted:
            out = []
            for r, c in zip(res, col):
                w = np.tile(c, r.shape[0] // nc)
                out.append(r * (w if r.ndim == 1 else w[:, None]))
            res = out
        return res, preds, recs

    def cost(x):
        p = _sysid_params(sysid, spec, model, cfg)
        r, _, _ = residual_fn(np.asarray(x, float), p)
        return float(sum(np.sum(np.square(ri)) for ri in r))

    params = _sysid_params(sysid, spec, model, cfg)
    log = io.StringIO()
    opt_params, opt = sysid.optimize(params, residual_fn, optimizer="mujoco", verbose=False,
                                     max_iters=max_iters, output=log)
    res_star, _, _ = residual_fn(opt.x, opt_params)
    cov, half = sysid.calculate_intervals(res_star, opt.jac, alpha=0.10)
    wall = time.perf_counter() - t0
    x = np.asarray(opt.x, dtype=float)
    x_true = np.array([truth[nme] for nme in model.param_names])
    cost_opt, cost_truth = cost(x), cost(x_true)
    iters = log.getvalue().count("\n")
    return {"wall_s": wall, "segments": len(starts), "residuals": int(sum(r.size for r in res_star)),
            "estimate": {nme: float(x[i]) for i, nme in enumerate(model.param_names)},
            "interval": {nme: [float(x[i] - half[i]), float(x[i] + half[i])]
                         for i, nme in enumerate(model.param_names)},
            "half_width": {nme: float(half[i]) for i, nme in enumerate(model.param_names)},
            "at_bound": {nme: bool(np.isclose(x[i], params[nme].min_value[0])
                                   or np.isclose(x[i], params[nme].max_value[0]))
                         for i, nme in enumerate(model.param_names)},
            "cost_at_estimate": cost_opt, "cost_at_truth": cost_truth,
            "local_minimum": bool(cost_truth < cost_opt),
            "log_lines": iters, "log_tail": log.getvalue()[-600:]}


def _joints(m):
    import mujoco
    return [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)]


# ----------------------------------------------------------------------------- scoring

def score(fit: dict, truth: dict) -> dict:
    out = {}
    for name, x in truth.items():
        lo, hi = fit["interval"][name]
        finite = bool(np.isfinite(lo) and np.isfinite(hi))
        out[name] = {"truth": x, "estimate": fit["estimate"][name], "lo": lo, "hi": hi,
                     "rel_err": abs(fit["estimate"][name] - x) / abs(x),
                     "covered": bool(lo <= x <= hi) if finite else True, "finite": finite,
                     "rel_width": (hi - lo) / abs(x) if finite else float("inf")}
    return out


def summarise(rows: list[dict], tool: str, names) -> dict:
    per = [r[tool]["score"][n] for r in rows for n in names]
    cov = coverage_stats([p["covered"] for p in per])
    # twin-bayes: runs that compiled nothing (JAX's nested compile events overlap, so subtracting
    # them from a compiling run's wall time is not a wall time); the first run compiles.
    walls = ([r[tool]["wall_s"] for r in rows if r[tool].get("compile_s", 0.0) < 1.0]
             or [r[tool]["wall_s"] for r in rows])
    return {"median_rel_err": float(np.median([p["rel_err"] for p in per])),
            "mean_rel_err": float(np.mean([p["rel_err"] for p in per])),
            "coverage90": cov,
            "infinite_intervals": int(sum(not p["finite"] for p in per)),
            "median_rel_width": float(np.median([p["rel_width"] for p in per])),
            "median_wall_s": float(np.median(walls)),
            "per_parameter": {n: {"median_rel_err": float(np.median([r[tool]["score"][n]["rel_err"] for r in rows])),
                                  "coverage": float(np.mean([r[tool]["score"][n]["covered"] for r in rows]))}
                              for n in names}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="arm2")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=100, help="seeds differ from calibration.py's by default")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--sysid-variants", nargs="+", choices=["single", "single-w", "seg-w"],
                    default=["single", "single-w", "seg-w"])
    ap.add_argument("--sysid-segment-steps", type=int, default=250, help="segment length of the seg-w variant")
    ap.add_argument("--sysid-max-iters", type=int, default=100)
    ap.add_argument("--no-twin", action="store_true", help="only run mujoco.sysid (fast)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, the short case")
    ap.add_argument("--no-command-line", action="store_true", help="skip the cold/warm command-line comparison")
    ap.add_argument("--sysid-process", metavar="NPZ", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/peers.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.cases = 1, ["short"]
    if args.sysid_process:
        return sysid_process(args.config, args.sysid_process, args.sysid_segment_steps, args.sysid_max_iters)

    import os
    load_start = list(os.getloadavg())
    jax, cache = setup_jax()
    meter = CompileMeter()
    from twin_bayes.config import load_config
    from twin_bayes.models import TwinModel

    cfg = load_config(args.config)
    model = TwinModel(cfg)
    names = model.param_names
    results = {}
    for case in args.cases:
        spec = CASES[case]
        rows = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            truth = draw_truth(jax, model, seed)
            data = make_data(model, truth, spec["seconds"], seed, spec["heavy_df"])
            row = {"seed": seed, "truth": truth}
            for v in args.sysid_variants:
                f = fit_sysid(cfg, model, data, truth, v, args.sysid_segment_steps, args.sysid_max_iters)
                f["score"] = score(f, truth)
                row[f"sysid:{v}"] = f
            if not args.no_twin:
                f = fit_twin(cfg, model, seed, data, meter)
                f["score"] = score(f, truth)
                row["twin_bayes"] = f
            rows.append(row)
            msg = "  ".join(f"{k}: err {np.median([p['rel_err'] for p in row[k]['score'].values()]):.3f} "
                            f"cov {np.mean([p['covered'] for p in row[k]['score'].values()]):.2f} "
                            f"{row[k]['wall_s']:.1f}s"
                            for k in row if k.startswith(("sysid", "twin")))
            print(f"{case:>6} seed {seed}: {msg}", flush=True)
        tools = [f"sysid:{v}" for v in args.sysid_variants] + ([] if args.no_twin else ["twin_bayes"])
        summ = {tool: summarise(rows, tool, names) for tool in tools}
        ratios = {}
        if not args.no_twin:
            tb = summ["twin_bayes"]
            for v in args.sysid_variants:
                sy = summ[f"sysid:{v}"]
                ratios[f"twin_bayes/sysid:{v}"] = {
                    "median_rel_err": tb["median_rel_err"] / sy["median_rel_err"] if sy["median_rel_err"] else None,
                    "coverage90": (tb["coverage90"]["coverage"] / sy["coverage90"]["coverage"]
                                   if sy["coverage90"]["coverage"] else None),
                    "coverage90_difference": tb["coverage90"]["coverage"] - sy["coverage90"]["coverage"],
                    "wall_time": tb["median_wall_s"] / sy["median_wall_s"] if sy["median_wall_s"] else None}
        results[case] = {"settings": spec, "summary": summ, "ratios": ratios, "seeds": rows}
    start = None
    if not args.no_command_line:
        truth = draw_truth(jax, model, args.first_seed)
        start = command_line_start(args.config, make_data(model, truth, CASES["base"]["seconds"], args.first_seed,
                                                          None), truth, args.sysid_segment_steps, args.sysid_max_iters)
        print("command line:", json.dumps(start), flush=True)

    out = {
        "benchmark": "peers",
        "command": command(),
        "machine": machine(compilation_cache_dir=cache, load_average_at_start=load_start),
        "config": cfg.name,
        "settings": {"seeds": args.seeds, "first_seed": args.first_seed, "cases": args.cases,
                     "sysid_variants": args.sysid_variants, "sysid_segment_steps": args.sysid_segment_steps,
                     "sysid_max_iters": args.sysid_max_iters, "emulator_noise": NOISE,
                     "twin": {"engine": cfg.inference.engine, "particles": cfg.inference.particles,
                              "window_s": cfg.inference.window_s, "noise": cfg.observation.noise,
                              "df": cfg.observation.df},
                     "truth": "drawn from TwinModel.priors per seed (calibration.draw_truth)",
                     "quick": args.quick},
        "sysid_can_express": CAN_EXPRESS,
        "results": results,
        "command_line_start": start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))

    print(f"\n{'case':<6} {'tool':<16} {'med rel err':>11} {'cov90':>6} {'± se':>5} {'inf CI':>6} "
          f"{'med CI/truth':>12} {'wall s':>8}")
    for case, r in results.items():
        for tool, s in r["summary"].items():
            print(f"{case:<6} {tool:<16} {s['median_rel_err']:>11.4f} {s['coverage90']['coverage']:>6.2f} "
                  f"{s['coverage90']['se']:>5.2f} {s['infinite_intervals']:>6d} {s['median_rel_width']:>12.4f} "
                  f"{s['median_wall_s']:>8.2f}")
        for k, v in r["ratios"].items():
            print(f"{case:<6} {k:<30} err x{v['median_rel_err'] or float('nan'):.2f}  "
                  f"coverage x{v['coverage90'] or float('nan'):.2f} ({v['coverage90_difference']:+.2f})  "
                  f"wall x{v['wall_time'] or float('nan'):.1f}")
    print(f"twin-bayes wall time excludes its one-off JIT compile. JSON: {args.out}")


if __name__ == "__main__":
    main()
