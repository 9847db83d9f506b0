"""`twin-bayes` command line: demo | check-sim | fit | fit-fleet | evaluate | report, plus the commands of
the modules in `COMMAND_MODULES` (each has `register(subparsers) -> {name: handler}`).

Building the parser loads no JAX (nor numpy): every handler imports what it needs, so `twin-bayes
--help` is fast and the robot-side commands (replay, keys, watch) never load JAX. A module in
`COMMAND_MODULES` keeps its `register` as light (imports inside its handlers). Handlers raise
ValueError (ConfigError, DataError, WindowError, ... are ValueErrors) or FileNotFoundError for bad
input: `main` prints it and exits 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

EXIT_BAD_INPUT = 2
COMMAND_MODULES: tuple[str, ...] = ("twin_bayes.service.commands", "twin_bayes.service.robot_commands",
                                    "twin_bayes.service.ros2_commands", "twin_bayes.policy.commands",
                                    "twin_bayes.service.warmup")
NUTS_WARMUP = 300
NUTS_SAMPLES = 300
#: fit options (argparse dest) that apply to some engines only -> those engines
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {"adam_steps": ("svi", "whole-log"), "horizon": ("whole-log",),
                                              "warmup": ("nuts",), "samples": ("nuts",)}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except for required options, flags, options without a
    default value (their help says what happens without them) and help that names its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        if action.required or default is None or default is False or default is argparse.SUPPRESS or default == [] \
                or "default" in help:
            return help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The parser of `twin-bayes` and of every subcommand: `HelpFormatter` unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def check_engine_options(args: argparse.Namespace, engine: str) -> None:
    """ValueError if an option of `ENGINE_OPTIONS` is given for an engine it does not apply to."""
    for dest, engines in ENGINE_OPTIONS.items():
        if getattr(args, dest, None) not in (None, False) and engine not in engines:
            raise ValueError(f"--{dest.replace('_', '-')} applies to --engine {' or '.join(engines)}, "
                             f"not to {engine}")


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache for the commands that run JAX (~/.cache/twin-bayes/jax unless
    $JAX_COMPILATION_CACHE_DIR says otherwise; every executable, as `compiled.enable_cache` keeps), set
    through the environment that JAX reads when it is first imported, so that commands that never
    import JAX do not import it for this."""
    if "jax" in sys.modules:
        from twin_bayes.compiled import enable_cache
        enable_cache()
        return
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "twin-bayes" / "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _print(obj, as_json: bool, table=None) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=float))
    elif table is not None:
        from rich.console import Console
        Console().print(table)
    else:
        print(json.dumps(obj, indent=2, default=float))


def _param_table(title, rows, columns):
    from rich.table import Table
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != "parameter" else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    return t


# --- check-sim ---------------------------------------------------------------------------
def cmd_check_sim(args) -> int:
    from twin_bayes.sim import checks, load_robot
    robot = load_robot(args.robot)
    out = {"robot": robot.name, "grad_mode": robot.grad_mode, "agreement": checks.agreement(robot),
           "directions": checks.directions(robot)}
    if not args.no_gradients:
        if robot.name.startswith("humanoid"):
            names = [n for n in robot.param_names if n.split(":")[0] in
                     ("body_mass", "dof_damping", "dof_armature", "geom_friction")][:6]
            grads = checks.gradient_check(robot, names=names, steps=40, rel_step=1e-5)
        else:
            grads = checks.gradient_check(robot)
        out["gradients"] = {"max_rel_err": max(g["rel_err"] for g in grads.values()
                                               if abs(g["fd"]) > 1e-6 or abs(g["ad"]) > 1e-6), "per_parameter": grads}
    ok = out["agreement"]["ok"] and all(d["ok"] for d in out["directions"].values())
    out["ok"] = ok
    if args.json:
        _print(out, True)
    else:
        a = out["agreement"]
        print(f"{robot.name}: max |q_brax - q_mujoco| = {a['max_abs_err']:.2e} rad over {a['horizon_s']} s "
              f"(tolerance {a['tolerance_rad']:.0e}) -> {'ok' if a['ok'] else 'FAIL'}")
        for k, d in out["directions"].items():
            print(f"  {k}: {'ok' if d['ok'] else 'FAIL'}  {({x: round(y, 4) for x, y in d.items() if x != 'ok'})}")
        if "gradients" in out:
            print(f"  gradients vs central differences: max relative error {out['gradients']['max_rel_err']:.1e}")
    return 0 if ok else 1


# --- data to windows ----------------------------------------------------------------------
def _windows(twin, trajs, final: bool = True):
    """The recordings cut into the twin's fixed windows by the shared cutter (`data.windows`; windows
    share their boundary sample). final=False leaves the last recording's remainder out, as a service
    streaming the same log would (`fit --engine stream`)."""
    from twin_bayes.data import trajectory_windows
    from twin_bayes.models import WindowError
    m = twin.model
    out = []
    for w in trajectory_windows(trajs, m.window_samples, m.segment_steps + 1, m.robot.dt, final):
        try:
            out.append(twin.window(w["q"], w["qd"], w["ctrl"], w["settings"], w["sensors"]))
        except WindowError as err:
            raise WindowError(f"window at t = {w['t'][0]:.3f}..{w['t'][-1]:.3f} s: {err}") from None
    return out


def _read(config, paths, topics=None):
    """Recordings from files for the twin config `config` (a path or a shipped name); topics {kind of
    data.rosbag.TOPIC_KINDS: `--imu`, `--wrench`, `--pose` specs} (a bag's sensor topics as sensor channels). A
    bag's JointState is read by the names of the config's joints, in its robot's order, and feeds the encoders
    and joint torque sensors it observes (`service.ros2_inbound.robot_joints`)."""
    from twin_bayes.data import parse_sensor_topics, read_trajectory, trajectory_format
    from twin_bayes.data.rosbag import TOPIC_KINDS
    sensors = {f"{kind}_topics": parse_sensor_topics(specs, TOPIC_KINDS[kind].fields, f"--{kind}")
               for kind, specs in (topics or {}).items()}
    bags = [trajectory_format(p) == "rosbag2" for p in paths]
    joints = {}
    if any(bags):
        from twin_bayes.service.ros2_inbound import robot_joints
        robot = robot_joints(config)
        joints = {"joints": robot.joints, "joint_sensors": robot.joint_sensors}
    return [read_trajectory(p, **sensors, **(joints if bag else {})) for p, bag in zip(paths, bags)]


# --- fit -------------------------------------------------------------------------------------
def cmd_fit(args) -> int:
    from twin_bayes import Twin
    from twin_bayes.config import load_config
    from twin_bayes.diagnostics import divergences, load_netcdf, summarize
    from twin_bayes.inference.store import NETCDF, save_posterior
    cfg = load_config(args.config)
    engine = args.engine or cfg.inference.engine
    check_engine_options(args, engine)
    twin = Twin(cfg)
    trajs = _read(args.config, args.data, {kind: getattr(args, kind) for kind in SENSOR_OPTIONS})
    windows = [] if engine == "whole-log" else _windows(twin, trajs, final=engine != "stream")
    start = time.perf_counter()
    kwargs = {}
    if engine == "nuts":
        kwargs = {"num_warmup": NUTS_WARMUP if args.warmup is None else args.warmup,
                  "num_samples": NUTS_SAMPLES if args.samples is None else args.samples}
    elif engine == "svi" and args.adam_steps is not None:
        kwargs = {"steps": args.adam_steps}
    if engine == "whole-log":
        from twin_bayes.inference.whole_log import fit_twin
        info = fit_twin(twin, trajs, horizon_s=args.horizon,
                        **({} if args.adam_steps is None else {"adam_steps": args.adam_steps}))
        evaluations = info["simulator_evaluations"]
    elif engine == "stream":
        reports = []
        for w in windows:              # as the service: each window updates and is kept for the model error
            reports.append(twin.update(w).as_dict())
            twin.record_window(w)
        twin.refit_model_error()
        info = {"engine": "stream", "windows": len(reports), "accepted": sum(r["accepted"] for r in reports),
                "tempered": sum(r["engine"] == "smc" for r in reports)}
        evaluations = None
    else:
        res = twin.fit(windows, engine=engine, **kwargs)
        info, evaluations = res.info, res.evaluations
    if info.get("refused"):
        print(f"fit refused ({engine}): {info['refused'][0]}: {info['refused'][1]}; nothing written",
              file=sys.stderr)
        return 1
    wall = time.perf_counter() - start
    out = Path(args.out)
    save_posterior(twin, out, engine=info.get("engine", engine))
    idata = load_netcdf(out / NETCDF)
    stats = summarize(idata)
    summary = {"config": str(cfg.source), "engine": engine, "data": [str(p) for p in args.data],
               "windows": len(windows), "wall_time_s": wall, "evaluations": evaluations,
               "divergences": divergences(idata), "info": info,
               "parameters": {n: {k: stats[n][k] for k in ("mean", "sd", "q05", "q95", "r_hat", "ess_bulk")}
                              for n in twin.model.names}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    rows = [(n, v["mean"], v["sd"], v["q05"], v["q95"], v["r_hat"], v["ess_bulk"])
            for n, v in summary["parameters"].items()]
    fed = f"{len(windows)} windows"
    if engine == "whole-log":
        fed = f"{len(trajs)} recordings" if args.horizon is None else f"{info['segments']} segments of {args.horizon} s"
    _print(summary, args.json, _param_table(f"posterior ({engine}, {wall:.1f} s, {fed}) -> {out}",
                                            rows, ["parameter", "mean", "sd", "5%", "95%", "r_hat", "ess"]))
    return 0


# --- fit-fleet -------------------------------------------------------------------------------
def cmd_fit_fleet(args) -> int:
    """NUTS over a fleet of robots of one design: per-robot posteriors around a population ([fleet] section)."""
    import jax

    from twin_bayes import Twin
    from twin_bayes.config import load_config
    from twin_bayes.inference.fleet import check_robot_ids, fit_fleet, save_fleet
    from twin_bayes.models import FleetModel, TwinModel
    cfg = load_config(args.config)
    short = [r[0] for r in args.robot if len(r) < 2]
    if short:
        raise ValueError(f"--robot {short[0]}: give the robot id, then its data file(s)")
    ids = [r[0] for r in args.robot]
    check_robot_ids(ids)
    fleet = FleetModel(TwinModel(cfg), len(ids))
    twin = Twin(cfg, fleet.model)
    windows = [_windows(twin, _read(args.config, r[1:])) for r in args.robot]
    empty = [i for i, ws in zip(ids, windows) if not ws]
    if empty:
        raise ValueError(f"--robot {empty[0]}: no window of at least {fleet.model.segment_steps + 1} samples "
                         "in its data")
    start = time.perf_counter()
    fit = fit_fleet(fleet, jax.random.PRNGKey(cfg.inference.seed), ids, windows, args.warmup, args.samples, args.chains)
    head = {"config": str(cfg.source), "engine": "nuts-fleet", "hierarchical": list(fleet.hierarchical),
            "data": {r[0]: r[1:] for r in args.robot}, "wall_time_s": time.perf_counter() - start}
    summary = save_fleet(fit, args.out, head)
    cols = ("mean", "sd", "q05", "q95", "r_hat")
    rows = [(n, "population", *(v[k] for k in cols)) for n, v in summary["population"].items()]
    rows += [(n, robot, *(v[k] for k in cols)) for robot, s in summary["robots"].items() for n, v in s.items()]
    _print(summary, args.json, _param_table(f"fleet posterior ({len(ids)} robots, {head['wall_time_s']:.1f} s) "
                                            f"-> {args.out}", rows, ["parameter", "robot", "mean", "sd", "5%",
                                                                     "95%", "r_hat"]))
    return 0


# --- evaluate ------------------------------------------------------------------------------
def _scored(twin, traj, draws_per_particle: int) -> tuple[dict, dict]:
    """A recording predicted whole from its first state under its commands, scored against it; and the
    coverages (S,) of its predictive draws at 50 and 90 % (`diagnostics.draw_coverage`)."""
    import numpy as np

    from twin_bayes.diagnostics import band_coverage, calibrated_range, crps_ensemble, draw_coverage
    b = twin.predict(traj.q[0], traj.qd[0], traj.ctrl[:-1], quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
                     settings=traj.settings, draws_per_particle=draws_per_particle)
    obs = traj.q[1:]
    draws = {level: draw_coverage(b.samples_q, level / 100, np.isfinite(obs)) for level in (50, 90)}
    return {"file": traj.source, "samples": int(len(obs)),
            "mae_q": float(np.mean(np.abs(b.mean_q - obs))),
            "coverage50": band_coverage(b.samples_q, obs, 0.5),
            "coverage90": band_coverage(b.samples_q, obs, 0.9),
            "crps_q": float(np.mean(crps_ensemble(b.samples_q, obs))),
            **{f"coverage{level}_if_calibrated": calibrated_range([d]) for level, d in draws.items()}}, draws


def evaluate_trajectory(twin, traj, draws_per_particle: int = 8) -> dict:
    """Predict a whole recording from its first state under its commands; score against it. The
    coverage<L>_if_calibrated [lo, hi] are the central 90 % of what a calibrated twin would score."""
    return _scored(twin, traj, draws_per_particle)[0]


def evaluate_recordings(twin, trajs, draws_per_particle: int = 8) -> dict:
    """`evaluate_trajectory` of each recording ("files") and their means ("overall"), where the
    coverage<L>_if_calibrated ranges are those of the mean over these recordings."""
    import numpy as np

    from twin_bayes.diagnostics import calibrated_range
    scored = [_scored(twin, tr, draws_per_particle) for tr in trajs]
    files = [row for row, _ in scored]
    overall = {k: float(np.mean([f[k] for f in files])) for k in ("mae_q", "coverage50", "coverage90", "crps_q")}
    for level in (50, 90):
        overall[f"coverage{level}_if_calibrated"] = calibrated_range([draws[level] for _, draws in scored])
    return {"files": files, "overall": overall}


def cmd_evaluate(args) -> int:
    from twin_bayes import Twin
    from twin_bayes.config import load_config
    from twin_bayes.inference.store import load_posterior
    twin = load_posterior(Twin(load_config(args.config)), args.posterior)
    if args.horizon is not None:   # multiple shooting: restarted from the measured state every horizon
        from twin_bayes.diagnostics.shooting import horizon_report
        out, rows, columns = horizon_report(twin, _read(args.config, args.data), args.horizon)
        _print(out, args.json, _param_table(f"held-out prediction, restarted every {args.horizon} s", rows, columns))
        return 0
    scores = evaluate_recordings(twin, _read(args.config, args.data))
    out = {"posterior": str(args.posterior), **scores}
    span = lambda r: f"{r[0]:.2f}–{r[1]:.2f}"  # noqa: E731
    rows = [(Path(f["file"]).name, f["mae_q"], f["coverage50"], f["coverage90"], span(f["coverage90_if_calibrated"]),
             f["crps_q"]) for f in scores["files"]]
    o = scores["overall"]
    rows.append(("overall", o["mae_q"], o["coverage50"], o["coverage90"], span(o["coverage90_if_calibrated"]),
                 o["crps_q"]))
    _print(out, args.json, _param_table("held-out prediction", rows,
                                        ["parameter", "MAE q (rad)", "cov 50%", "cov 90%",
                                         "cov 90% of a calibrated twin (90 % range)", "CRPS"]))
    return 0


# --- report -------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from twin_bayes.diagnostics import load_netcdf, write_report
    from twin_bayes.inference.store import NETCDF
    idata = load_netcdf(Path(args.posterior) / NETCDF)
    path = write_report(idata, args.out, title=f"twin-bayes posterior: {args.posterior}")
    print(path)
    return 0


# --- demo ---------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    """Emulated robot with hidden truth -> twin service -> live view -> posterior against the truth."""
    from twin_bayes.service.demo import run_demo
    try:
        res = run_demo(args.config, args.seconds, args.seed, args.out)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        print(f"twin-bayes demo: {e}", file=sys.stderr)
        return 1
    rows = [(n, res.truth[n], s["mean"], s["q05"], s["q95"], "yes" if s["q05"] <= res.truth[n] <= s["q95"] else "no")
            for n, s in res.summary.items() if n in res.truth]
    covered = sum(r[-1] == "yes" for r in rows)
    print(f"     posterior after {res.windows} window(s) against the hidden truth:")
    _print({}, False, _param_table(f"{covered}/{len(rows)} truths inside the 90% interval", rows,
                                   ["parameter", "truth", "mean", "5%", "95%", "covered"]))
    print(f"     report: {res.report}")
    return 0


#: `fit`'s options naming a ROS 2 bag's sensor topics (kinds of data.rosbag.TOPIC_KINDS) -> what their help says.
SENSOR_OPTIONS = {
    "imu": "sensor_msgs/Imu topic as sensor channels, fields angular_velocity, linear_acceleration, orientation each "
           "to an MJCF sensor, e.g. /imu=angular_velocity:torso_gyro,linear_acceleration:torso_accel",
    "wrench": "geometry_msgs/WrenchStamped topic as sensor channels, fields force (N, a `force` sensor), torque "
              "(N·m, a `torque` sensor) each to an MJCF sensor, e.g. /wrist/ft=force:wrist_force,torque:wrist_torque",
    "pose": "geometry_msgs/PoseStamped topic (motion capture) as sensor channels, fields position (m, a `framepos` "
            "sensor), orientation (a `framequat` sensor) each to an MJCF sensor, e.g. /mocap/torso=position:torso_pos"}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The `twin-bayes` parser and its handlers {command: handler(args) -> exit status}."""
    p = Parser(prog="twin-bayes", description="A probabilistic digital twin for robots.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    d = sub.add_parser("demo", help="emulated robot -> twin service -> live view -> posterior against the hidden truth")
    d.add_argument("--config", default="arm2", help="twin config (shipped name or file)")
    d.add_argument("--seconds", type=float, default=10.0, help="robot time to stream (rounded to whole windows)")
    d.add_argument("--seed", type=int, default=0, help="seed of the hidden truth, excitation and noise")
    d.add_argument("--out", default="out/demo", help="directory of the HTML report")
    c = sub.add_parser("check-sim", help="Brax twin against native MuJoCo, physics directions, gradients")
    c.add_argument("--robot", required=True, help="shipped robot name or MJCF file")
    c.add_argument("--json", action="store_true", help="print the results as JSON")
    c.add_argument("--no-gradients", action="store_true", help="skip the gradient check against finite differences")
    f = sub.add_parser("fit", help="posterior from recorded data")
    f.add_argument("--config", required=True, help="twin config (shipped name or file)")
    f.add_argument("--data", nargs="+", required=True, help="recordings (.npz, bam .json, rosbag2 .mcap/.db3)")
    for kind, help in SENSOR_OPTIONS.items():
        f.add_argument(f"--{kind}", action="append", default=[], metavar="TOPIC=FIELD:SENSOR[,...]",
                       help=f"a ROS 2 bag's {help} (repeat per topic)")
    f.add_argument("--out", required=True, help="directory for particles.npz, posterior.nc, summary.json")
    f.add_argument("--engine", choices=("stream", "smc", "nuts", "svi", "whole-log"),
                   help="stream: the service's online engine, window by window (the same windows and posterior "
                        "as the log streamed to `serve`); smc, nuts, svi: one batch fit of all windows; "
                        "whole-log: each recording simulated open loop from its first state, plus a learned "
                        "model error (inference.whole_log) (default: the config's inference.engine)")
    f.add_argument("--adam-steps", type=int, help="Adam steps of svi (default 1500) and of whole-log before its "
                                                    "Newton polish (default 50)")
    f.add_argument("--horizon", type=float, metavar="S",
                   help="whole-log: restart each recording from its measured state every S seconds, the segments "
                        "of `evaluate --horizon S` (default: each recording whole)")
    f.add_argument("--warmup", type=int, help=f"nuts: warm-up steps per chain (default: {NUTS_WARMUP})")
    f.add_argument("--samples", type=int, help=f"nuts: draws per chain (default: {NUTS_SAMPLES})")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    ff = sub.add_parser("fit-fleet", help="hierarchical posterior of a fleet of robots of one design (NUTS)")
    ff.add_argument("--config", required=True, help="twin config with a [fleet] section")
    ff.add_argument("--robot", nargs="+", action="append", required=True, metavar=("ID", "FILE"),
                    help="a robot id and its recordings; repeat for each robot")
    ff.add_argument("--out", required=True, help="directory of the per-robot and population posteriors")
    ff.add_argument("--warmup", type=int, default=NUTS_WARMUP, help="NUTS warm-up steps per chain")
    ff.add_argument("--samples", type=int, default=NUTS_SAMPLES, help="NUTS draws per chain")
    ff.add_argument("--chains", type=int, default=2, help="NUTS chains")
    ff.add_argument("--json", action="store_true", help="print the summary as JSON")
    e = sub.add_parser("evaluate", help="predict recordings from their first state; MAE, band coverage, CRPS")
    e.add_argument("--config", required=True, help="twin config (shipped name or file)")
    e.add_argument("--posterior", required=True, help="directory written by `twin-bayes fit`")
    e.add_argument("--data", nargs="+", required=True, help="held-out recordings (.npz, bam .json, rosbag2 .mcap/.db3)")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e.add_argument("--horizon", type=float, default=None, metavar="S",
                   help="restart from the measured state every S seconds and score each joint at the horizon's "
                        "end (RMSE, MAE) and over it (50/90%% band coverage, CRPS); default: each recording whole")
    r = sub.add_parser("report", help="HTML report of a fitted posterior")
    r.add_argument("--posterior", required=True, help="directory written by `twin-bayes fit`")
    r.add_argument("--out", required=True, help="directory of index.html and its PNGs")
    commands = {"demo": cmd_demo, "check-sim": cmd_check_sim, "fit": cmd_fit, "fit-fleet": cmd_fit_fleet,
                "evaluate": cmd_evaluate, "report": cmd_report}
    for module in COMMAND_MODULES:
        commands.update(importlib.import_module(module).register(sub))
    return p, commands


def main(argv=None) -> int:
    p, commands = build_parser()
    args = p.parse_args(argv)
    use_compilation_cache()
    warnings.filterwarnings("ignore", "ArviZ is undergoing a major refactor", FutureWarning)  # on import, every run
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"twin-bayes {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
