"""`twin-bayes demo`: the whole loop on loopback, ending with the posterior against the hidden truth.

    emulated robot (`twin-bayes emulate` subprocess: native MuJoCo, hidden truth, real time)
        -> TwinService (this process: ingest, inference, PUB, queries; a temporary SQLite store)
        -> live view (`service.watch`) until the last window is applied
        -> snapshot and a held-out prediction by query -> HTML report (`diagnostics.write_report`)

The simulator check (Brax against native MuJoCo) runs while the first window's update compiles.
Sockets are ephemeral loopback ports; the store and checkpoints live in a temporary folder that
is removed at the end, Ctrl-C included.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin_bayes.config import load_config
from twin_bayes.inference.discrepancy import MIN_WINDOWS
from twin_bayes.models import TwinModel
from twin_bayes.service.client import Subscriber, TwinClient
from twin_bayes.service.emulate import draw_truth, write_truth
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.watch import watch
from twin_bayes.service.worker import WorkerSettings

ANY_PORT = "tcp://127.0.0.1:*"
CHUNK_S = 0.1          # telemetry chunk length (s), as `twin-bayes emulate` sends by default
HELD_OUT_S = 1.0       # length of the held-out prediction in the report (s)
REPORT_DRAWS = 400     # posterior draws (resampled by weight) shown in the report
SILENT_AFTER_S = 600.0  # the robot stops once its stream is sent; health should not call that a fault


@dataclass
class DemoResult:
    """truth: the hidden parameters; summary: the service's final posterior summary
    ({name: {mean, sd, q05, q95, ...}}); windows: windows applied; report: the HTML file;
    model_calibration: health's score of the windows predicted before they were seen."""

    truth: dict[str, float]
    summary: dict[str, dict[str, float]]
    windows: int
    report: Path
    model_calibration: dict


def settled_health(client: TwinClient, robot_id: str, windows: int, timeout_s: float = 60.0) -> dict:
    """The robot's health once its idle work on the last of `windows` applied windows is done (every
    window after the first scored, and the model error refitted on all of them where there are
    MIN_WINDOWS to fit it on), or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        robot = client.health()["robots"][robot_id]
        scored = robot["model_calibration"]["n_batches"] >= windows - 1
        fitted = windows < MIN_WINDOWS or robot["model_error"]["fitted_windows"] >= windows
        if scored and fitted or time.monotonic() > deadline:
            return robot
        time.sleep(0.2)


def stream_plan(model: TwinModel, seconds: float) -> tuple[int, int, int]:
    """(windows, chunk_samples, chunks): `seconds` rounded to whole windows, and the whole chunks that
    hold them (windows share their boundary sample: w windows need w·(T − 1) + 1 samples)."""
    chunk = max(1, round(CHUNK_S / model.robot.dt))
    windows = max(1, round(seconds / model.cfg.inference.window_s))
    return windows, chunk, -(-(windows * (model.window_samples - 1) + 1) // chunk)


def _check_simulator(model: TwinModel) -> None:
    from twin_bayes.sim import checks
    robot = model.robot
    print(f"2/4  simulator: Brax (MJX pipeline) against native MuJoCo on {robot.name} ...", flush=True)
    a = checks.agreement(robot, seeds=(0,))
    print(f"     max |q_brax - q_mujoco| over {a['horizon_s']} s: {a['max_abs_err']:.1e} rad "
          f"({'ok' if a['ok'] else 'FAIL'}, tolerance {a['tolerance_rad']:.0e})", flush=True)


def _start_robot(model: TwinModel, truth_file: Path, endpoint: str, robot_id: str, seed: int,
                 chunk: int, chunks: int) -> subprocess.Popen:
    """`twin-bayes emulate` in its own session (Ctrl-C reaches the demo only; it stops the robot)."""
    cmd = [sys.executable, "-m", "twin_bayes.cli", "emulate", "--robot", model.robot.name,
           "--config", str(model.cfg.source), "--truth", str(truth_file), "--robot-id", robot_id,
           "--seconds", repr(chunks * chunk * model.robot.dt), "--seed", str(seed),
           "--endpoint", endpoint, "--chunk-samples", str(chunk)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _report(model: TwinModel, client: TwinClient, snap, robot_id: str, truth: dict[str, float], seed: int,
            out: Path) -> Path:
    """Posterior draws from the service's snapshot and its prediction of fresh held-out telemetry."""
    from twin_bayes.diagnostics import to_inference_data, write_report
    from twin_bayes.sim.emulator import emulate
    values, weights = snap.arrays["values"], snap.arrays["weights"]
    idx = np.random.default_rng(seed).choice(len(weights), REPORT_DRAWS, p=weights / weights.sum())
    samples = {n: values[None, idx, i] for i, n in enumerate(snap.extra["names"])}
    held = emulate(model.robot, truth, HELD_OUT_S, seed=seed + 1)
    pred = client.predict(robot_id, held.q[0], held.qd[0], held.ctrl[:-1], quantiles=(0.05, 0.5, 0.95))
    bands = {q: pred.arrays["q"][i] for i, q in enumerate(pred.extra["quantiles"])}
    return write_report(to_inference_data(samples), out, title=f"twin-bayes demo: {model.robot.name}",
                        truth=truth, predictive=[{"name": f"held-out {HELD_OUT_S:g} s", "t": held.t[1:],
                                                  "observed": held.q[1:], "bands": bands}])


def run_demo(config: str = "arm2", seconds: float = 10.0, seed: int = 0, out: str | Path = "out/demo",
             robot_id: str = "demo-robot") -> DemoResult:
    """Run the loop (see the module docstring); raises RuntimeError if the robot fails."""
    model = TwinModel(load_config(config))
    truth = draw_truth(model.cfg, model.robot, seed)
    windows, chunk, chunks = stream_plan(model, seconds)
    with tempfile.TemporaryDirectory(prefix="twin-bayes-demo-") as tmp:
        tmp = Path(tmp)
        write_truth(tmp / "truth.toml", truth)
        settings = ServiceSettings({robot_id: model.cfg}, tmp / "telemetry.db", ANY_PORT, ANY_PORT, ANY_PORT,
                                   silent_after_s=SILENT_AFTER_S,
                                   worker=WorkerSettings(checkpoints=tmp / "checkpoints"))
        service = TwinService(settings, {robot_id: model}).start()
        robot = client = sub = None
        try:
            ep = service.endpoints
            client = TwinClient(ep["query"], timeout_s=600.0, retries=0)
            sub = Subscriber(ep["pub"], ("",), client)
            robot = _start_robot(model, tmp / "truth.toml", ep["ingest"], robot_id, seed, chunk, chunks)
            print(f"1/4  twin service on loopback ({ep['ingest']} ingest, {ep['pub']} PUB, {ep['query']} query); "
                  f"emulated robot (`twin-bayes emulate`, pid {robot.pid}: native MuJoCo, hidden truth drawn from "
                  f"the prior) streams {chunks * chunk * model.robot.dt:.1f} s at {1 / model.robot.dt:.0f} Hz in "
                  f"real time: {windows} window(s) of {model.cfg.inference.window_s:g} s. The first update "
                  "compiles (minutes on a cold cache) while:", flush=True)
            _check_simulator(model)
            print("3/4  live view until the last window is applied:", flush=True)
            applied = service.worker.robots[robot_id]
            done_at: list[float] = []

            def finished() -> bool:
                """The robot failed, the service failed, or all windows are applied and one more
                health message has had time to reach the view."""
                if robot.poll() not in (None, 0) or service.worker.error:
                    return True
                if robot.poll() == 0 and applied.windows >= windows and not done_at:
                    done_at.append(time.monotonic())
                return bool(done_at) and time.monotonic() - done_at[0] > settings.health_every_s + 0.3

            watch(sub, out=sys.stdout, until=finished)
            print(flush=True)   # the view's last line has no newline
            robot_out, robot_err = robot.communicate()
            if robot.returncode != 0:
                raise RuntimeError(f"emulated robot failed: {robot_err.strip()[-2000:]}")
            if service.worker.error:
                raise RuntimeError(f"service: {service.worker.error}")
            print(f"     robot done: {robot_out.strip()}", flush=True)
            mc = settled_health(client, robot_id, applied.windows)["model_calibration"]
            if mc["n_batches"]:
                print(f"     model calibration (each window after the first predicted before it was seen, "
                      f"{mc['n_batches']} windows): "
                      f"90% bands cover {mc['coverage_90']:.2f}, 50% bands {mc['coverage_50']:.2f}", flush=True)
            print("4/4  posterior snapshot and a held-out prediction by query; HTML report ...", flush=True)
            snap = client.snapshot(robot_id)
            report = _report(model, client, snap, robot_id, truth, seed, Path(out))
            return DemoResult(truth, dict(snap.extra["summary"]), applied.windows, report, mc)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the robot, then the service (after the window in progress)",
                  file=sys.stderr, flush=True)
            raise
        finally:
            if robot is not None and robot.poll() is None:
                robot.terminate()
                robot.communicate()
            for closable in (sub, client):
                if closable is not None:
                    closable.close()
            service.stop()
