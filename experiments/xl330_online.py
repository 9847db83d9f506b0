"""The XL330 online: the real logs replayed through the twin service; the live posterior against offline fits.

    .venv/bin/python experiments/xl330_online.py          # ~20 min on 2 cores: service, offline stream, batch SMC
    .venv/bin/python experiments/xl330_online.py --config xl330_load --live-only   # the service part only

`twin-bayes serve` runs the `xl330_coulomb` twin (a subprocess on loopback ports with a temporary SQLite
store) and `twin-bayes replay --format bam` streams the eight kp = 100/200 logs to it in real time
(another subprocess; 0.1 s chunks, each carrying its log's firmware gain and voltage). The service cuts
1 s windows, updates the posterior after each and publishes a 50 ms prediction that the next window
scores. Recorded here:

- the live posterior after every window (polled by query: version, mean, 90 % interval);
- the online scores of the published predictions (health: coverage, CRPS) and the update latency;
- the windows the service applied, read back from its store and fed offline to a fresh twin one by one
  (`Twin.update`: the service's algorithm without the service) and to one batch SMC fit over all of them
  (`Twin.fit`, what `twin-bayes fit` does): the live posterior's difference from each, in posterior sds;
- the four held-out kp = 400 logs predicted whole by the service (the `predict` query with each log's
  settings): MAE of the median and band coverage, with the range a calibrated twin's coverage of these
  four logs would fall in (`twin_bayes.cli.evaluate_recordings` on the service's posterior snapshot), next
  to the whole-log fit of `experiments/xl330_real.py`; by the streamed posterior, and, where the config
  consolidates (`inference.consolidate_after_s`), by the posterior the service consolidated once the
  stream paused (`service.consolidate`).

Writes experiments/results/xl330_online.json and .png (xl330_online_<config>.json for another config).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes import Twin
from twin_bayes.cli import evaluate_recordings
from twin_bayes.config import load_config
from twin_bayes.data import read_trajectory
from twin_bayes.data.shared import bam_logs
from twin_bayes.inference.discrepancy import ModelError
from twin_bayes.inference.posterior import Particles
from twin_bayes.service.client import TwinClient
from twin_bayes.service.store import TelemetryStore
from twin_bayes.service.worker import stored_windows

FIT_KP, TEST_KP = (100, 200), 400
ROBOT_ID = "xl330"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "twin_bayes.cli", *args]


def follow(client: TwinClient, replay: subprocess.Popen, store: Path, twin: Twin,
           timeout_s: float) -> tuple[list[dict], dict, float]:
    """Poll the service until the replay has ended, every window its stream completed is applied and
    the model error refitted on them; returns the live posterior after each new version [{version,
    windows, t_s, summary}], the final health and when the replay ended (time.monotonic)."""
    history, last, ended, expected = [], -1, None, None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = client.health()
        robot = health["robots"].get(ROBOT_ID, {})
        if robot.get("posterior_version", 0) != last:
            snap = client.snapshot(ROBOT_ID)
            last = snap.extra["version"]
            history.append({"version": last, "windows": robot.get("windows", 0), "t_s": time.monotonic(),
                            "summary": snap.extra["summary"]})
        if expected is None and replay.poll() is not None:
            if replay.returncode != 0:
                raise RuntimeError(f"replay failed: {replay.stderr.read()[-2000:]}")
            ended, expected = time.monotonic(), len(applied_windows(store, twin))
        if (expected is not None and robot.get("windows", 0) >= expected   # the last version: history[-1]
                and robot["model_error"]["fitted_windows"] >= expected):     # refitted on all of them (idle work)
            return history, health, ended
        time.sleep(0.5)
    raise RuntimeError(f"the service did not finish within {timeout_s} s")


def applied_windows(store_path: Path, twin: Twin) -> list[dict]:
    """The usable windows the service cuts from the stream, read from its SQLite store (the worker's own
    cut; the store may be read while the service writes)."""
    store = TelemetryStore(store_path)
    try:
        chunks = store.get_chunks(ROBOT_ID, -1, limit=1_000_000)
    finally:
        store.close()
    cuts = stored_windows(chunks, twin.model)
    return [{"q": c.q, "qd": c.qd, "ctrl": c.ctrl, "settings": c.settings or None} for c in cuts if c.usable]


def difference(live: dict, other: dict) -> dict:
    """Per parameter: |Δmean| over the other posterior's sd and the ratio of widths, both with sd taken as
    (q95 − q05) / 3.29 (exact for a normal; every posterior here reports those quantiles)."""
    sd = lambda s: (s["q95"] - s["q05"]) / 3.29  # noqa: E731
    ratio = lambda a, b: a / b if b > 0 else float("inf")  # noqa: E731   (a collapsed posterior: width 0)
    return {n: {"abs_dmean_over_sd": ratio(abs(live[n]["mean"] - other[n]["mean"]), sd(other[n])),
                "width_ratio": ratio(sd(live[n]), sd(other[n]))} for n in other}


def held_out(client: TwinClient, logs) -> dict:
    """Each held-out log predicted whole by the service's predict query (its settings, its goals)."""
    rows = []
    for tr in logs:
        reply = client.predict(ROBOT_ID, tr.q[0], tr.qd[0], tr.ctrl[:-1], quantiles=QUANTILES,
                               settings={k: tr.settings[k] for k in ("servo_kp", "servo_vin")})
        q = reply.arrays["q"][:, :, 0]                        # (Q, T)
        obs = tr.q[1:, 0]
        rows.append({"file": Path(tr.source).name, "posterior_version": reply.extra["posterior_version"],
                     "mae_median_q": float(np.mean(np.abs(q[2] - obs))),
                     "coverage50": float(np.mean((obs >= q[1]) & (obs <= q[3]))),
                     "coverage90": float(np.mean((obs >= q[0]) & (obs <= q[4])))})
    return {"per_log": rows, **{k: float(np.mean([r[k] for r in rows]))
                                for k in ("mae_median_q", "coverage50", "coverage90")}}


def if_calibrated(config: str, snap, logs) -> dict:
    """The central 90 % ranges of the mean 50 / 90 % coverage of `logs` that a calibrated twin would score,
    from a local twin holding the service's posterior snapshot (particles, weights, model error)."""
    twin = Twin(load_config(config))
    z = jax.vmap(twin.model.unconstrain)(jnp.asarray(snap.arrays["values"]))
    twin.restore(Particles(z, jnp.log(jnp.asarray(snap.arrays["weights"]))), int(snap.extra["version"]))
    me = snap.extra["model_error"]
    twin.model_error = me and ModelError.from_dict(me, twin.model.robot.nq, len(twin.model.setting_names))
    overall = evaluate_recordings(twin, logs)["overall"]
    return {k: overall[k] for k in ("coverage50_if_calibrated", "coverage90_if_calibrated")}


def consolidated(client: TwinClient, windows: int, timeout_s: float) -> dict:
    """Wait until the service has consolidated the robot's `windows` windows (health `consolidation`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = client.health()["robots"][ROBOT_ID]["consolidation"]
        if done.get("windows") == windows:
            if done["error"] or done["refused"]:
                raise RuntimeError(f"consolidation failed: {done}")
            return done
        time.sleep(1.0)
    raise RuntimeError(f"the service did not consolidate within {timeout_s} s")


def offline(config: str, windows: list[dict]) -> dict:
    """The same windows offline: one by one (streaming) and as one batch SMC fit; summaries and wall times."""
    stream = Twin(load_config(config))
    start = time.perf_counter()
    for w in windows:
        stream.update(w)
    stream_s = time.perf_counter() - start
    print(f"offline stream: {stream_s:.0f} s; batch SMC ...", flush=True)
    batch = Twin(load_config(config))
    start = time.perf_counter()
    res = batch.fit([batch.window(w["q"], w["qd"], w["ctrl"], w["settings"]) for w in windows], engine="smc")
    return {"windows": len(windows), "stream_wall_s": stream_s, "batch_smc_wall_s": time.perf_counter() - start,
            "batch_smc_info": res.info, "batch_smc_ess": batch.posterior.ess,
            "stream_posterior": stream.posterior.summary(), "batch_smc_posterior": batch.posterior.summary()}


def plot(history: list[dict], batch: dict, whole_log: dict | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(batch)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    w = [h["windows"] for h in history]
    for ax, n in zip(axes[0], names):
        mean = [h["summary"][n]["mean"] for h in history]
        ax.fill_between(w, [h["summary"][n]["q05"] for h in history], [h["summary"][n]["q95"] for h in history],
                        color="C0", alpha=0.3, step="post", label="live 90 %")
        ax.step(w, mean, "C0", where="post", label="live mean")
        ax.axhspan(batch[n]["q05"], batch[n]["q95"], color="C1", alpha=0.25, label="offline batch SMC 90 %")
        if whole_log and n in whole_log:
            ax.axhspan(whole_log[n]["q05"], whole_log[n]["q95"], color="C2", alpha=0.25, label="whole-log 90 %")
        ax.set_title(n, fontsize=8)
        ax.set_xlabel("windows applied", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(config: str, speed: float, timeout_s: float, out: Path, live_only: bool = False) -> dict:
    fit_paths = [p for kp in FIT_KP for p in bam_logs(kp=kp)]
    test_logs = [read_trajectory(p) for p in bam_logs(kp=TEST_KP)]
    ports = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("ingest", "pub", "query")}
    twin = Twin(load_config(config))                                # its model cuts windows as the service does
    with tempfile.TemporaryDirectory(prefix="twin-bayes-xl330-") as tmp:
        store = Path(tmp) / "telemetry.db"
        serve = subprocess.Popen(cli("serve", "--config", f"{ROBOT_ID}={config}", "--store", str(store),
                                     "--checkpoints", str(Path(tmp) / "checkpoints"), "--silent-after", "3600",
                                     *(a for k, v in ports.items() for a in (f"--{k}", v))),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = TwinClient(ports["query"], timeout_s=600.0, retries=0)
        try:
            client.health()                                           # the service is up
            start = time.monotonic()
            replay = subprocess.Popen(cli("replay", "--format", "bam", "--robot-id", ROBOT_ID, "--speed",
                                          str(speed), "--endpoint", ports["ingest"], "--ack-timeout", "120",
                                          *map(str, fit_paths)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            history, health, ended = follow(client, replay, store, twin, timeout_s)
            replay_out = json.loads(replay.stdout.read().strip().splitlines()[-1])
            metrics = client.metrics()
            streamed = {"model_error": client.snapshot(ROBOT_ID).extra["model_error"],
                        "held_out_kp400": held_out(client, test_logs)}
            consolidation = None
            if twin.cfg.inference.consolidate_after_s:
                consolidation = consolidated(client, health["robots"][ROBOT_ID]["windows"], timeout_s)
                snap = client.snapshot(ROBOT_ID)
                history.append({"version": snap.extra["version"], "windows": consolidation["windows"],
                                "t_s": time.monotonic(), "summary": snap.extra["summary"], "consolidated": True})
            snap = client.snapshot(ROBOT_ID)
            model_error = snap.extra["model_error"]
            test = {**held_out(client, test_logs), **if_calibrated(config, snap, test_logs)}
        finally:
            client.close()
            serve.terminate()           # the service stops after the window in progress
            try:
                serve.wait(300)
            except subprocess.TimeoutExpired:
                serve.kill()
        robot = health["robots"][ROBOT_ID]
        windows = applied_windows(store, twin)
    for h in history:
        h["t_s"] -= start
    live = history[-1]["summary"]                                     # consolidated where the config asks
    result_streamed, streamed_at = (history[-1 - bool(consolidation)][k] for k in ("summary", "t_s"))
    partial = {"history": history, "health": health, "metrics": metrics, "model_error": model_error,
               "held_out": test, "streamed": streamed, "consolidation": consolidation}   # kept if later steps fail
    (out / "xl330_online_live.json").write_text(json.dumps(partial, indent=2, default=float))
    print(f"service done: {robot['windows']} windows; held-out MAE streamed "
          f"{streamed['held_out_kp400']['mae_median_q']:.4f} -> live {test['mae_median_q']:.4f}, "
          f"cov90 {test['coverage90']:.3f} (a calibrated twin: {test['coverage90_if_calibrated'][0]:.3f}–"
          f"{test['coverage90_if_calibrated'][1]:.3f})", flush=True)
    off = None if live_only else offline(config, windows)
    whole_log_file = RESULTS / f"xl330_real_{config}.json"   # experiments/xl330_real.py
    whole = json.loads(whole_log_file.read_text()) if whole_log_file.exists() else None
    result = {
        "command": " ".join([".venv/bin/python", "experiments/xl330_online.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_1_5_15_min": list(os.getloadavg())},
        "config": config, "fit_logs": [p.name for p in fit_paths],
        "replay": {"speed": speed, "chunks": replay_out.get("chunks"), "acked": replay_out.get("acked"),
                   "rejected": replay_out.get("rejected"), "wall_s": ended - start},
        "service": {"windows": robot["windows"], "rejected_windows": robot["rejected_windows"],
                    "posterior_version": robot["posterior_version"], "online_scores": robot["calibration"],
                    "update_latency_s": metrics["update_latency_s"],
                    "last_window_applied_after_s": streamed_at, "model_error": model_error,
                    "consolidation": consolidation},
        "live_posterior": live, "streamed_posterior": result_streamed,
        "live_history": history, "streamed": streamed,
        "live_minus_whole_log": difference(live, whole["parameters"]) if whole else None,
        "offline": off and {**off,
                            "streamed_minus_offline_stream": difference(result_streamed, off["stream_posterior"]),
                            "live_minus_batch_smc": difference(live, off["batch_smc_posterior"])},
        "held_out_kp400": test,
        "whole_log_held_out_kp400": whole["held_out"] if whole else None,
    }
    if off:
        plot(history, off["batch_smc_posterior"], whole["parameters"] if whole else None, out / "xl330_online.png")
        result["plot"] = "xl330_online.png"
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="xl330_coulomb")
    ap.add_argument("--speed", type=float, default=1.0, help="replay speed, x real time")
    ap.add_argument("--timeout", type=float, default=3600.0, help="s to wait for the service")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--live-only", action="store_true", help="skip the offline stream and batch SMC fits")
    args = ap.parse_args(argv)
    if not bam_logs(kp=TEST_KP):
        print("no XL330 logs found (../shared/data/bam_xl330 or $TWIN_BAYES_DATA/bam_xl330)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.config, args.speed, args.timeout, args.out, args.live_only)
    path = args.out / ("xl330_online.json" if args.config == "xl330_coulomb" else f"xl330_online_{args.config}.json")
    path.write_text(json.dumps(result, indent=2, default=float))
    (args.out / "xl330_online_live.json").unlink(missing_ok=True)    # the partial record of this run
    s, o, h = result["service"], result["offline"], result["held_out_kp400"]
    worst = lambda d: max(v["abs_dmean_over_sd"] for v in d.values())  # noqa: E731
    versus = "" if o is None else (f"max |Δmean|/sd streamed vs offline stream "
                                   f"{worst(o['streamed_minus_offline_stream']):.3g}, vs batch SMC "
                                   f"{worst(o['live_minus_batch_smc']):.3g}; ")
    print(f"live: {s['windows']} windows, online cov90 {s['online_scores'].get('coverage_90')}; {versus}"
          f"held-out kp=400 MAE {h['mae_median_q']:.4f} cov90 {h['coverage90']:.2f} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
