"""The inference thread: stored chunks -> windows -> `Twin.update` -> checkpoint -> publish.

One `RobotTwin` per robot. The thread wakes when ingest stores a chunk
(`notify(robot_id)`), cuts the robot's new chunks into windows
(`service.windows`), updates its twin, checkpoints every twin with the last
applied chunk per robot, and hands posterior, prediction and alert messages to
the I/O thread through `publish(type, robot_id, build)` (build(seq) -> frames).
It never touches a socket. On start it resumes from the newest valid
checkpoint and re-applies the stored chunks after it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from twin_bayes.diagnostics.calibration import OnlineCalibration
from twin_bayes.inference import Twin
from twin_bayes.inference.posterior import Particles
from twin_bayes.models import WindowError
from twin_bayes.service import checkpoint, protocol
from twin_bayes.service.store import StoreError, TelemetryStore
from twin_bayes.service.windows import Cut, cut_windows

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
FETCH = 1024  # chunks read from the store per pass
RETENTION_EVERY_S = 10.0
Publish = Callable[[str, str, Callable[[int], list[bytes]]], None]


@dataclass(frozen=True)
class WorkerSettings:
    """horizon_s: length of each published prediction (commands held at their latest value);
    alert_probability: P(outside the healthy band) that raises a maintenance alert;
    retain_chunks / retain_versions: store retention (None keeps everything)."""

    checkpoints: Path | None = None
    keep_checkpoints: int = checkpoint.KEEP
    horizon_s: float = 0.05
    alert_probability: float = 0.9
    trend_length: int = 10
    retain_chunks: int | None = None
    retain_versions: int | None = None
    seed: int = 0


@dataclass
class Pending:
    """A published prediction awaiting its data: samples (S, H, nq + nv) at times t (H,) s."""

    prediction_id: int
    t: np.ndarray
    samples: np.ndarray


@dataclass
class RobotTwin:
    """A robot's twin plus what the service tracks about it."""

    robot_id: str
    twin: Twin
    applied_seq: int = -1         # last chunk whose samples went into a window
    windows: int = 0              # windows given to twin.update (accepted or not)
    rejected: int = 0             # windows the twin rejected (posterior kept, marked stale)
    predictions: int = 0
    tail: list = field(default_factory=list)   # fetched chunks after applied_seq, seq order
    fetched_seq: int = -1
    pending: Pending | None = None
    calibration: OnlineCalibration = field(default_factory=OnlineCalibration)
    trend: dict[str, deque] = field(default_factory=dict)
    alerts: dict[str, dict] = field(default_factory=dict)
    last_update: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        p = self.twin.posterior
        return {"posterior_version": p.version, "stale": p.stale, "reason": p.reason,
                "applied_seq": self.applied_seq, "windows": self.windows, "rejected_windows": self.rejected,
                "calibration": self.calibration.as_dict(), "alerts": list(self.alerts.values()),
                "last_update": self.last_update}


def particles_blob(p: Particles) -> bytes:
    """Posterior particles as msgpack {z, log_weights: {dtype, shape, data}} (never pickle)."""
    def pack(a):
        a = np.ascontiguousarray(np.asarray(a), dtype="<f8")
        return {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()}
    return msgpack.packb({"z": pack(p.z), "log_weights": pack(p.log_weights)}, use_bin_type=True)


class Worker:
    def __init__(self, store: TelemetryStore, twins: dict[str, Twin], publish: Publish,
                 settings: WorkerSettings = WorkerSettings()):
        self.store = store
        self.settings = settings
        self.publish = publish
        self.robots = {rid: RobotTwin(rid, twin) for rid, twin in twins.items()}
        self.inbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.checkpoint_status: dict[str, Any] = {}
        self.error = ""
        self.update_latency: deque[float] = deque(maxlen=256)
        self._retained_at = -RETENTION_EVERY_S
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-inference", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.resume()
        for rid in self.robots:
            self.inbox.put(rid)
        self._thread.start()

    def stop(self) -> None:
        """Finish the window in progress (its checkpoint included) and end the thread."""
        self._stopping.set()
        self.inbox.put(None)
        self._thread.join()

    def notify(self, robot_id: str) -> None:
        """Called by ingest (any thread) after a chunk of robot_id is durable."""
        self.inbox.put(robot_id)

    def _run(self) -> None:
        """Round-robin over robots with work: one window each per turn, so none starves."""
        ready: set[str | None] = set()
        retaining = bool(self.settings.retain_chunks or self.settings.retain_versions)
        while True:
            try:  # with retention, wake up idle too: retention postponed by its interval is then due
                ready.add(self.inbox.get(block=not ready, timeout=RETENTION_EVERY_S if retaining else None))
                while True:
                    ready.add(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if None in ready or self._stopping.is_set():
                return
            for rid in sorted(ready):
                try:
                    more = self._step(self.robots[rid])
                except Exception as e:  # keep serving; the failure shows in health
                    log.exception("inference for %s failed", rid)
                    self.error = f"{rid}: {type(e).__name__}: {e}"
                    more = False
                if not more:
                    ready.discard(rid)
                if self._stopping.is_set():
                    return
            if retaining:
                self._retention()

    # --- checkpoints --------------------------------------------------------------------
    def resume(self) -> None:
        """Restore every twin from the newest valid checkpoint (older ones if newer are damaged)."""
        d = self.settings.checkpoints
        if d is None or not checkpoint.checkpoints(d):
            return
        try:
            ck = checkpoint.load_latest(d)
        except checkpoint.CheckpointError as e:
            self.checkpoint_status = {"error": str(e), "resumed": False}
            return
        for rid, meta in ck.meta.get("robots", {}).items():
            rt = self.robots.get(rid)
            if rt is None or tuple(meta["names"]) != rt.twin.model.names:
                continue
            p = Particles(jnp.asarray(ck.arrays[f"{rid}/z"]), jnp.asarray(ck.arrays[f"{rid}/log_weights"]))
            rt.twin.restore(p, int(meta["version"]))
            rt.twin.key = jnp.asarray(ck.arrays[f"{rid}/key"])
            rt.applied_seq = rt.fetched_seq = int(meta["applied_seq"])
            rt.windows, rt.rejected = int(meta["windows"]), int(meta["rejected"])
            rt.predictions = int(meta["predictions"])
        self.checkpoint_status = {"resumed": True, "path": str(ck.path), "step": ck.step,
                                  "skipped": [[str(p), why] for p, why in ck.skipped]}

    def _save_checkpoint(self) -> None:
        if self.settings.checkpoints is None:
            return
        arrays, robots = {}, {}
        for rid, rt in self.robots.items():
            p = rt.twin.particles
            arrays[f"{rid}/z"] = np.asarray(p.z)
            arrays[f"{rid}/log_weights"] = np.asarray(p.log_weights)
            arrays[f"{rid}/key"] = np.asarray(rt.twin.key)
            robots[rid] = {"names": list(rt.twin.model.names), "version": rt.twin.posterior.version,
                           "applied_seq": rt.applied_seq, "windows": rt.windows, "rejected": rt.rejected,
                           "predictions": rt.predictions}
        try:
            path = checkpoint.save(self.settings.checkpoints, arrays, {"robots": robots},
                                   keep=self.settings.keep_checkpoints)
            self.checkpoint_status = {**self.checkpoint_status, "last_saved": str(path), "error": ""}
        except OSError as e:
            self.checkpoint_status = {**self.checkpoint_status, "error": f"save failed: {e}"}

    # --- windows ------------------------------------------------------------------------
    def _next_cut(self, rt: RobotTwin) -> Cut | None:
        model = rt.twin.model
        cuts = cut_windows(rt.tail, rt.applied_seq, model.window_samples, model.segment_steps + 1,
                           model.robot.dt, limit=1)
        return cuts[0] if cuts else None

    def _step(self, rt: RobotTwin) -> bool:
        """Apply the robot's next complete window, if any; True if it did (there may be more)."""
        cut = self._next_cut(rt)
        if cut is None:
            for c in self.store.get_chunks(rt.robot_id, rt.fetched_seq, limit=FETCH):
                if c.seq != rt.fetched_seq + 1:
                    break  # a gap: wait for the resend
                rt.tail.append(c)
                rt.fetched_seq = c.seq
            cut = self._next_cut(rt)
        if cut is None:
            return False
        self._apply(rt, cut)
        rt.tail = [c for c in rt.tail if c.seq > cut.last_seq]
        return True

    def _apply(self, rt: RobotTwin, cut: Cut) -> None:
        self._score(rt, cut)
        report = None
        if cut.usable:
            try:
                report = rt.twin.update({"q": cut.q, "qd": cut.qd, "ctrl": cut.ctrl,
                                         "settings": cut.settings or None})
            except WindowError as e:
                rt.last_update = {"accepted": False, "reason": str(e)}
            rt.windows += 1
        rt.applied_seq = cut.last_seq
        if report is not None:
            rt.rejected += not report.accepted
            self.update_latency.append(report.latency_s)
            rt.last_update = {k: report.as_dict()[k] for k in ("accepted", "reason", "version", "stages",
                                                                "ess", "drift", "latency_s")}
        self._save_checkpoint()
        if report is None:
            return
        post = rt.twin.posterior
        if report.accepted:
            try:
                self.store.put_posterior_version(rt.robot_id, post.version, post.summary(),
                                                 particles_blob(rt.twin.particles))
            except StoreError as e:
                self.error = f"{rt.robot_id}: posterior version not stored ({e})"
            self._alerts(rt)
        self._publish_posterior(rt)
        self._predict(rt, cut)

    def _publish_posterior(self, rt: RobotTwin) -> None:
        post, rid, applied = rt.twin.posterior, rt.robot_id, rt.applied_seq
        summary, stale, reason = post.summary(), post.stale, post.reason
        self.publish("posterior", rid, lambda seq: protocol.posterior(
            rid, seq, post.version, summary, stale=stale, reason=reason, applied_seq=applied))

    # --- predictions and their scores ---------------------------------------------------
    def _predict(self, rt: RobotTwin, cut: Cut) -> None:
        model = rt.twin.model
        dt = model.robot.dt
        h = max(1, int(round(self.settings.horizon_s / dt)))
        commands = np.repeat(cut.ctrl[-1:], h, axis=0)
        key = jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), rt.predictions)
        b = rt.twin.predict(cut.q[-1], cut.qd[-1], commands, QUANTILES, cut.settings or None, key=key)
        t = cut.t[-1] + dt * np.arange(1, h + 1)
        pid, rid, version = rt.predictions, rt.robot_id, rt.twin.posterior.version
        rt.predictions += 1
        rt.pending = Pending(pid, t, np.concatenate([b.samples_q, b.samples_qd], axis=-1))
        arrays = {"t": t, "q_bands": b.q, "qd_bands": b.qd, "ctrl": commands}
        self.publish("prediction", rid, lambda seq: protocol.prediction(
            rid, seq, version, arrays, quantiles=list(QUANTILES), prediction_id=pid))

    def _score(self, rt: RobotTwin, cut: Cut) -> None:
        """Score the pending prediction against the window that follows it, if it covers the horizon."""
        p, rt.pending = rt.pending, None
        if p is None:
            return
        dt = rt.twin.model.robot.dt
        i = int(np.searchsorted(cut.t, p.t[0] - 0.5 * dt))
        seen = cut.t[i:i + len(p.t)]
        if len(seen) < len(p.t) or np.max(np.abs(seen - p.t)) > 0.5 * dt:
            return
        observed = np.concatenate([cut.q, cut.qd], axis=-1)[i:i + len(p.t)]
        s = rt.calibration.update(p.samples, observed)
        try:
            self.store.put_score(rt.robot_id, p.prediction_id, float(p.t[-1] - p.t[0] + dt),
                                 s["coverage_50"], s["coverage_90"], s["crps"], s["log_score"])
        except StoreError as e:
            self.error = f"{rt.robot_id}: score not stored ({e})"

    # --- maintenance alerts -------------------------------------------------------------
    def _alerts(self, rt: RobotTwin) -> None:
        """Raise or clear maintenance alerts. `rt.alerts` is replaced, never mutated, because the
        I/O thread reads it for health."""
        post = rt.twin.posterior
        alerts = dict(rt.alerts)
        for name, spec in rt.twin.cfg.parameters.items():
            if spec.healthy is None:
                continue
            lo, hi = spec.healthy
            x = post.values[:, post.names.index(name)]
            p_out = float(post.weights[(x < lo) | (x > hi)].sum())
            mean = float(post.weights @ x)
            trend = rt.trend.setdefault(name, deque(maxlen=self.settings.trend_length))
            trend.append([post.version, mean])
            active = p_out > self.settings.alert_probability
            alert = {"parameter": name, "healthy": [lo, hi], "p_outside": p_out, "mean": mean,
                     "active": active, "posterior_version": post.version, "trend": list(trend)}
            changed = active != (name in alerts)
            if active:
                alerts[name] = alert
            else:
                alerts.pop(name, None)
            if changed:
                rid = rt.robot_id
                self.publish("alert", rid, lambda seq, a=alert: protocol.reply(rid, seq, "alert", **a))
        rt.alerts = alerts

    def _retention(self) -> None:
        """Apply retention (at most every RETENTION_EVERY_S) when no robot has more unapplied
        chunks than the retention keeps."""
        keep = self.settings.retain_chunks
        if time.monotonic() < self._retained_at + RETENTION_EVERY_S or (
                keep is not None and any(self.store.last_seq(r) - rt.applied_seq >= keep
                                         for r, rt in self.robots.items())):
            return
        self._retained_at = time.monotonic()
        try:
            self.store.apply_retention(max_chunks=keep, keep_versions=self.settings.retain_versions)
        except StoreError as e:
            self.error = f"retention failed ({e})"
