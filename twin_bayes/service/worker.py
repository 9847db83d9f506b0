"""The inference thread: stored chunks -> windows -> batched `update_many` -> checkpoint -> publish.

One `RobotTwin` per robot. The thread wakes when ingest stores a chunk
(`notify(robot_id)`), cuts each ready robot's stored samples into its next
window (`data.windows.cut_windows`, the cutter every path shares; windows share
their boundary sample) and works in turns: a turn takes the robots ready longest,
as many as one batched call per thread holds (on CPU 2 × 4, `parallelism`), updates
them (`inference.update_many`, batched per design), stores and publishes their
posteriors, then their predictions. A robot whose window became ready during a turn
waits for at most that turn, not for the whole fleet's; a turn that starts when no
robot was waiting first waits `batch_wait_s` for a turn's worth. Posterior, prediction and
alert messages go to the I/O thread through `publish(type, robot_id, build)`
(build(seq) -> frames); the thread never touches a socket. Every twin's whole
`TwinState` is checkpointed with the position of its next window and the store's
identity, at most every `checkpoint_every_s` and when the worker stops.
Re-predicting applied windows for model calibration and refitting the model error is the thread's
idle work: one unit at a time (one robot's window, or one robot's refit), when no robot has a window
ready and the recent load allows, so an update waits at most for one such unit. So is consolidation,
for configs that ask for it: once a robot's stream has paused, what it has stored is refitted whole
(`service.consolidate`) and its posterior continues from that fit. On start it resumes from the newest
valid checkpoint and re-applies the stored chunks after it, so a restart gives the posteriors an
uninterrupted run would have, however old the checkpoint (consolidations aside: when they run depends
on the pauses the service saw); a checkpoint of another store is refused.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import msgpack
import numpy as np

from twin_bayes.data.windows import cut_windows
from twin_bayes.diagnostics.calibration import OnlineCalibration
from twin_bayes.inference import Twin, engine
from twin_bayes.inference.posterior import Particles
from twin_bayes.inference.twin import predict_many, update_many
from twin_bayes.models import Window, WindowError
from twin_bayes.service import checkpoint, protocol
from twin_bayes.service.consolidate import consolidate, stored_recordings
from twin_bayes.service.ingest import settings_groups
from twin_bayes.service.metrics import ServiceMetrics
from twin_bayes.service.plan import horizon_commands
from twin_bayes.service.protocol import Message
from twin_bayes.service.store import StoreError, TelemetryStore

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PREDICTION_DRAWS = 2   # predictive draws per posterior particle of a published prediction
VALIDATION_DRAWS = 1   # predictive draws per posterior particle when a window is re-predicted
VALIDATION_QUEUE = 32  # applied windows per robot kept for re-prediction while the worker is busy (the newest)
VALIDATION_LOAD = 0.75  # idle work waits while the worker was busy more than this share of the last LOAD_WINDOW_S
LOAD_WINDOW_S = 10.0
REFIT_EVERY = 8        # windows recorded since a robot's last model-error refit that make a refit idle work at once
FETCH = 1024  # chunks read from the store per pass
RETENTION_EVERY_S = 10.0
Publish = Callable[[str, str, Callable[[int], list[bytes]]], None]


@dataclass(frozen=True)
class WorkerSettings:
    """horizon_s: length of each published prediction (under the commands the service knows: the stored
    chunk's own, then the robot's plan, then the last held);
    alert_probability: P(outside the healthy band) that raises a maintenance alert;
    retain_chunks / retain_versions: store retention (None keeps everything);
    validate: re-predict applied windows from their start under their real commands and score them
    (health's model_calibration), and refit the model error, as idle work: when no robot has a window
    ready and the worker (turns and idle work) was busy at most VALIDATION_LOAD of the last LOAD_WINDOW_S
    (idle work started in the gaps of a fleet near capacity would delay its next windows), one unit at a
    time, waited for: one robot's oldest waiting window re-predicted, the robot validated longest ago
    first (every window once the worker catches up, the newest VALIDATION_QUEUE per robot under
    sustained load; the update's throughput is kept), then a refit of that robot's model error once
    REFIT_EVERY windows were recorded since its last (a refit predicts all 32 recorded windows again, 0.35 s
    for arm2: after every window it would take more than a core at four robots); with no window left to
    re-predict, the refit of a robot with any window recorded since its last; false: neither, and
    predictions carry no learned model error;
    prediction_draws: predictive draws per posterior particle of each published prediction (the
    rollouts and so the cost grow with it; 2 × 32 particles: 64 draws per band);
    max_batch, threads: robots per batched call and threads running the batches (None: `parallelism()`); a
    turn updates at most max_batch × threads robots;
    batch_wait_s: when a robot's data arrive and no other robot was waiting, the worker waits up to this long
    (s) for more robots, up to a turn's worth, before it starts the turn (dynamic batching: robots streaming
    in step complete their windows within milliseconds of each other, and a turn begun with the first of
    them would hold the others back by a whole turn);
    checkpoint_every_s: the twins' states are checkpointed after a turn at most this often (s), and when the
    worker stops; 0: after every turn. The posteriors do not depend on it (a restart re-applies the stored
    telemetry after the checkpoint it resumes from), only the work a restart redoes: a checkpoint holds about
    1 MB per arm2 robot;
    preload: before its first window, the worker makes in this process the calls `twin-bayes warmup` makes
    (`service.warmup.warmup`, for 1 robot and for this service's robots of each design), so that no
    executable is first loaded from the compilation cache in the middle of a stream (each such load
    stalls every robot's update 0.2–2.5 s); meanwhile chunks are acked and stored as always. Its
    timings are in health (`preload`)."""

    checkpoints: Path | None = None
    keep_checkpoints: int = checkpoint.KEEP
    checkpoint_every_s: float = 10.0
    batch_wait_s: float = 0.05
    horizon_s: float = 0.05
    alert_probability: float = 0.9
    trend_length: int = 10
    retain_chunks: int | None = None
    retain_versions: int | None = None
    seed: int = 0
    validate: bool = True
    prediction_draws: int = PREDICTION_DRAWS
    max_batch: int | None = None
    threads: int | None = None
    preload: bool = False


def parallelism() -> tuple[int, int]:
    """(robots per batch, threads) for this machine. On CPU a batch of 4 robots already fills a core
    (their particles are batched too) and larger ones gain nothing, so batches of 4 run on up to two
    threads, one per core (the rest of the service needs little); an accelerator gains from large
    batches on one thread."""
    if jax.default_backend() == "cpu":
        return 4, max(1, min(2, os.cpu_count() or 1))
    return 64, 1


class StoreMismatch(RuntimeError):
    """The checkpoints belong to another telemetry store: resuming would skip or repeat data."""


class Cut(NamedTuple):
    """A robot's next window: arrays (n, ·) and times t (n,) s; usable: at least one segment;
    settings: the recording's known constants; end_seq, end_row: chunk and row of its last sample
    (where the next window starts); sensors {name: (n, dim)}: the readings of the sensors the twin
    observes."""

    t: np.ndarray
    q: np.ndarray
    qd: np.ndarray
    ctrl: np.ndarray
    usable: bool
    settings: dict[str, float]
    end_seq: int
    end_row: int
    sensors: dict[str, np.ndarray]


def next_cut(chunks: list[Message], row0: int, model) -> Cut | None:
    """The next complete window of consecutive chunks (seq order) from row row0 of the first, cut by
    the shared cutter (`data.windows.cut_windows`, not final: a trailing part waits), or None."""
    fields = ("t", "q", "qd", "ctrl", *(protocol.SENSOR + s for s in model.sensors))
    cat = {k: np.concatenate([chunks[0].arrays[k][row0:]] + [c.arrays[k] for c in chunks[1:]]) for k in fields}
    sizes = [chunks[0].n - row0] + [c.n for c in chunks[1:]]
    settings, groups = settings_groups(chunks, sizes)
    bounds, _ = cut_windows(cat["t"], model.window_samples, model.segment_steps + 1, model.robot.dt, groups,
                            final=False)
    if not bounds:
        return None
    b = bounds[0]
    ends = np.cumsum(sizes)
    j = int(np.searchsorted(ends, b.stop - 1, side="right"))     # chunk of the window's last sample
    row = b.stop - 1 - (ends[j - 1] if j else 0) + (row0 if j == 0 else 0)
    return Cut(*(cat[k][b.start:b.stop] for k in ("t", "q", "qd", "ctrl")), b.usable,
               settings[int(np.searchsorted(ends, b.start, side="right"))], chunks[j].seq, int(row),
               {s: cat[protocol.SENSOR + s][b.start:b.stop] for s in model.sensors})


def stored_windows(chunks: list[Message], model) -> list[Cut]:
    """Every window the service cuts from consecutive stored chunks (seq order from the first): what
    the worker applies, for offline comparisons."""
    gap = next((i for i, c in enumerate(chunks) if c.seq != chunks[0].seq + i), len(chunks))
    out, row, chunks = [], 0, chunks[:gap]
    while chunks and (cut := next_cut(chunks, row, model)) is not None:
        out.append(cut)
        chunks, row = [c for c in chunks if c.seq >= cut.end_seq], cut.end_row
    return out


def channels(model, q, qd, readings) -> dict[str, np.ndarray]:
    """{q: q (..., nq), qd: qd (..., nv), sensor:<name>: its columns of readings (..., R)} of a twin's model."""
    return {"q": q, "qd": qd, **protocol.sensor_fields(model.sensors, model.sensor_widths, readings)}


def measured_channels(model, q, qd, readings, mask=None) -> dict[str, np.ndarray]:
    """What was measured after a start state, per channel (`channels`), aligned with a prediction from that state
    under the commands that follow. From rows 0 … T − 1 (row 0 the start) of q (T, nq), qd (T, nv) and readings
    (T, R): q (T − 1, nq), qd (T − 1, nv) of rows 1 …, readings of rows 0 … T − 2 (read under each command).
    NaN (not scored) where mask (T,) is 0 (padding) and in a delayed sensor's first rows, which the prediction
    holds at the start (`TwinModel.scored_readings`)."""
    ok = np.ones(len(q), bool) if mask is None else np.asarray(mask) != 0
    state, reading = ok[1:, None], ok[:-1, None] & model.scored_readings(len(q) - 1)
    return channels(model, np.where(state, q[1:], np.nan), np.where(state, qd[1:], np.nan),
                    np.where(reading, readings[:-1], np.nan))


@dataclass
class Pending:
    """A published prediction awaiting its data: its draws per channel (`channels`), q (S, H, nq) and qd (S, H, nv)
    at times t (H,) s, each sensor's readings (S, H, dim) at t − dt."""

    prediction_id: int
    t: np.ndarray
    samples: dict[str, np.ndarray]


@dataclass
class RobotTwin:
    """A robot's twin plus what the service tracks about it."""

    robot_id: str
    twin: Twin
    applied_seq: int = -1         # chunk of the last applied window's last sample (-1: none yet)
    applied_row: int = 0          # that sample's row in the chunk: the next window starts there
    windows: int = 0              # windows given to twin.update (accepted or not)
    rejected: int = 0             # windows the twin rejected (posterior kept, marked stale)
    predictions: int = 0
    tail: list = field(default_factory=list)   # fetched chunks from applied_seq on, seq order
    fetched_seq: int = -1
    pending: Pending | None = None
    calibration: OnlineCalibration = field(default_factory=OnlineCalibration)       # of the forecasts, q and qd
    model_calibration: OnlineCalibration = field(default_factory=OnlineCalibration)  # of the windows re-predicted
    calibration_channels: dict[str, OnlineCalibration] = field(init=False)   # each per channel: q, qd, sensor:<name>
    model_calibration_channels: dict[str, OnlineCalibration] = field(init=False)
    validated_round: int = -1     # the last validation round that re-predicted one of its windows
    unfitted: int = 0             # windows recorded since its model error's last refit here
    applied_at: float = 0.0       # time.monotonic() when its last window was applied
    consolidated: int = 0         # `windows` when it was last consolidated
    consolidation: dict = field(default_factory=dict)   # the last consolidation's figures, for health
    trend: dict[str, deque] = field(default_factory=dict)
    alerts: dict[str, dict] = field(default_factory=dict)
    last_update: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ("q", "qd", *(protocol.SENSOR + n for n in self.twin.model.sensors))
        self.calibration_channels = {c: OnlineCalibration() for c in names}
        self.model_calibration_channels = {c: OnlineCalibration() for c in names}

    def status(self) -> dict[str, Any]:
        p = self.twin.posterior

        def scores(joint: OnlineCalibration, per_channel: dict[str, OnlineCalibration]) -> dict[str, Any]:
            return {**joint.as_dict(), "channels": {c: cal.as_dict() for c, cal in per_channel.items()}}
        return {"posterior_version": p.version, "stale": p.stale, "reason": p.reason,
                "applied_seq": self.applied_seq, "windows": self.windows, "rejected_windows": self.rejected,
                "calibration": scores(self.calibration, self.calibration_channels),
                "model_calibration": scores(self.model_calibration, self.model_calibration_channels),
                "model_error": self.model_error_status(), "consolidation": self.consolidation,
                "alerts": list(self.alerts.values()),
                "last_update": self.last_update}

    def model_error_status(self) -> dict[str, Any]:
        """The learned model error of the predictions (null fields until known) and its windows:
        recorded, and recorded at its last refit."""
        state, me = self.twin.state.model_error, self.twin.model_error
        none = {"sd_rad": None, "time_const_s": None, "reference_settings": None, "settings_exponents": None}
        return {**(me.as_dict() if me is not None else none),
                "windows": int(state.count), "fitted_windows": int(state.fitted_count)}



def particles_blob(p: Particles) -> bytes:
    """Posterior particles as msgpack {z, log_weights: {dtype, shape, data}} (never pickle)."""
    def pack(a):
        a = np.ascontiguousarray(np.asarray(a), dtype="<f8")
        return {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()}
    return msgpack.packb({"z": pack(p.z), "log_weights": pack(p.log_weights)}, use_bin_type=True)


class Worker:
    def __init__(self, store: TelemetryStore, twins: dict[str, Twin], publish: Publish,
                 settings: WorkerSettings = WorkerSettings(), metrics: ServiceMetrics | None = None):
        self.store = store
        self.metrics = metrics or ServiceMetrics()
        self.settings = settings
        self.publish = publish
        self.robots = {rid: RobotTwin(rid, twin) for rid, twin in twins.items()}
        self.inbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.checkpoint_status: dict[str, Any] = {}
        self.preload_status: dict[str, Any] = {}
        self.error = ""
        self.update_latency: deque[float] = deque(maxlen=256)
        # robot -> its applied windows not yet re-predicted (oldest first, the newest VALIDATION_QUEUE):
        # (cut, its padded Window, the draws of the posterior before it)
        self._unvalidated: dict[str, deque[tuple[Cut, Window, np.ndarray]]] = {}
        self._retained_at = -RETENTION_EVERY_S
        self._checkpointed_at = -float("inf")
        self._unsaved = False     # windows applied since the last checkpoint
        self._rounds = 0
        # (end, duration) s of turns and idle work, the last LOAD_WINDOW_S
        self._busy: deque[tuple[float, float]] = deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-inference", daemon=True)
        batch, threads = parallelism()
        self.max_batch = settings.max_batch or batch
        threads = settings.threads or threads
        self.turn_size = self.max_batch * threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="twin-batch") if threads > 1 else None

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
        if self._pool is not None:
            self._pool.shutdown()

    def notify(self, robot_id: str) -> None:
        """Called by ingest (any thread) after a chunk of robot_id is durable."""
        self.inbox.put(robot_id)

    def _run(self) -> None:
        """Turns over the robots with work, the robot ready longest first: each turn the next window of
        up to `turn_size` of them, in one batched update per design, so none starves and a fleet costs
        one call per batch."""
        ready: dict[str | None, None] = {}      # robots that may have a window, in the order they became ready
        retaining = bool(self.settings.retain_chunks or self.settings.retain_versions)
        if self.settings.preload:
            self._preload()
        while True:
            try:  # no robot with data: wait for some, unless there is idle work the load allows
                waiting, idle = not ready, self._has_idle_work()
                block = waiting and not (idle and self.load() <= VALIDATION_LOAD)
                # wake up to look at the load again, for retention postponed by its interval, or for a
                # consolidation that falls due
                timeout = 0.1 * LOAD_WINDOW_S if idle else RETENTION_EVERY_S if retaining else None
                due = [w for rt in self.robots.values() if (w := self._consolidation_wait(rt)) is not None]
                if due:
                    timeout = max(0.01, min(due + ([timeout] if timeout is not None else [])))
                ready.setdefault(self.inbox.get(block=block, timeout=timeout if block else None))
                if waiting:
                    self._gather(ready)
                while True:
                    ready.setdefault(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if None in ready or self._stopping.is_set():
                self._checkpoint(due=True)
                return
            try:
                cuts = {}
                for rid in list(ready):
                    if len(cuts) == self.turn_size:
                        break
                    cut = self._next_cut(self.robots[rid])
                    del ready[rid]             # back at the end of the line if it has another window
                    if cut is not None:
                        cuts[rid] = cut
                        ready[rid] = None
                if cuts:
                    self._busy_with(self._apply, cuts)
                elif self._has_idle_work() and self.load() <= VALIDATION_LOAD:
                    self._busy_with(self._idle_work)
            except Exception as e:  # keep serving; the failure shows in health
                log.exception("inference failed")
                self.error = f"{type(e).__name__}: {e}"
                ready.clear()
            if retaining:
                self._retention()

    def _busy_with(self, work, *args) -> None:
        """work(*args), its time recorded for `load`."""
        start = time.monotonic()
        work(*args)
        end = time.monotonic()
        self._busy.append((end, end - start))

    def load(self) -> float:
        """The share of the last LOAD_WINDOW_S spent busy: in turns (updates, their publishing and
        predictions) and idle work."""
        now = time.monotonic()
        while self._busy and self._busy[0][0] < now - LOAD_WINDOW_S:
            self._busy.popleft()
        return sum(d for _, d in self._busy) / LOAD_WINDOW_S

    def _gather(self, ready: dict) -> None:
        """Dynamic batching: after a first robot's notice, wait up to `batch_wait_s` for a turn's worth."""
        deadline, want = time.monotonic() + self.settings.batch_wait_s, min(self.turn_size, len(self.robots))
        while len(ready) < want and None not in ready and (left := deadline - time.monotonic()) > 0:
            ready.setdefault(self.inbox.get(timeout=left))

    def _preload(self) -> None:
        """`service.warmup.warmup` per design, for 1 robot and the design's robot count (`preload`)."""
        from twin_bayes.service.warmup import warmup
        designs: dict[int, list[RobotTwin]] = {}
        for rt in self.robots.values():
            designs.setdefault(id(rt.twin.model), []).append(rt)
        start, status = time.perf_counter(), {"designs": []}
        self.preload_status = {"running": True}
        try:
            for robots in designs.values():
                twin = robots[0].twin
                status["designs"].append(warmup(twin.cfg, sorted({1, len(robots)}), self.settings.horizon_s,
                                                twin.model))
        except Exception as e:  # serving goes on; executables then load on first use
            log.exception("preload failed")
            status["error"] = f"{type(e).__name__}: {e}"
        self.preload_status = {**status, "running": False, "wall_s": time.perf_counter() - start}

    # --- checkpoints --------------------------------------------------------------------
    def resume(self) -> None:
        """Restore every twin's whole state from the newest valid checkpoint (older ones if newer are
        damaged). Raises StoreMismatch for checkpoints written against another store."""
        d = self.settings.checkpoints
        if d is None or not checkpoint.checkpoints(d):
            return
        try:
            ck = checkpoint.load_latest(d)
        except checkpoint.CheckpointError as e:
            self.checkpoint_status = {"resume_error": str(e), "resumed": False}
            return
        theirs = ck.meta.get("store_id")
        if theirs != self.store.store_id:
            raise StoreMismatch(f"{ck.path} was written against telemetry store {theirs}, but {self.store.path} "
                                f"is store {self.store.store_id}: resuming would skip or repeat telemetry. Use the "
                                f"checkpoints of this store, or another checkpoint directory")
        problems = []
        for rid, meta in ck.meta.get("robots", {}).items():
            rt = self.robots.get(rid)
            if rt is None or tuple(meta["names"]) != rt.twin.model.names:
                continue
            prefix = f"{rid}/"
            arrays = {k[len(prefix):]: v for k, v in ck.arrays.items() if k.startswith(prefix)}
            try:
                rt.twin.state = engine.state_from_arrays(rt.twin.state, arrays)
            except ValueError as e:
                problems.append(f"{rid}: {e}")
                continue
            rt.applied_seq, rt.applied_row = int(meta["applied_seq"]), int(meta["applied_row"])
            rt.fetched_seq = max(rt.applied_seq - 1, -1)    # the next fetch starts at the applied chunk
            rt.windows, rt.rejected = int(meta["windows"]), int(meta["rejected"])
            me = rt.twin.state.model_error      # windows recorded after its last refit: refitted when idle
            rt.unfitted = int(me.count - me.fitted_count) if self.settings.validate else 0
            rt.predictions = int(meta["predictions"])
            rt.consolidated = int(meta.get("consolidated", 0))
        self.checkpoint_status = {"resumed": True, "path": str(ck.path), "step": ck.step,
                                  "skipped": [[str(p), why] for p, why in ck.skipped]}
        if problems:
            self.checkpoint_status["resume_error"] = "not resumed: " + "; ".join(problems)

    def _checkpoint(self, due: bool = False) -> None:
        """Save a checkpoint if windows were applied since the last one and it is due (`checkpoint_every_s`)."""
        if self._unsaved and (due or time.monotonic() >= self._checkpointed_at + self.settings.checkpoint_every_s):
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        self._checkpointed_at, self._unsaved = time.monotonic(), False
        if self.settings.checkpoints is None:
            return
        arrays, robots = {}, {}
        for rid, rt in self.robots.items():
            arrays.update({f"{rid}/{k}": v for k, v in engine.state_arrays(rt.twin.state).items()})
            robots[rid] = {"names": list(rt.twin.model.names), "applied_seq": rt.applied_seq,
                           "applied_row": rt.applied_row, "windows": rt.windows, "rejected": rt.rejected,
                           "predictions": rt.predictions, "consolidated": rt.consolidated}
        try:
            path = checkpoint.save(self.settings.checkpoints, arrays,
                                   {"store_id": self.store.store_id, "robots": robots},
                                   keep=self.settings.keep_checkpoints)
            self.checkpoint_status = {**self.checkpoint_status, "last_saved": str(path), "error": ""}
        except OSError as e:
            self.checkpoint_status = {**self.checkpoint_status, "error": f"save failed: {e}"}

    # --- windows ------------------------------------------------------------------------
    def _next_cut(self, rt: RobotTwin) -> Cut | None:
        """The robot's next complete window from its stored chunks (fetching more when needed), or None."""
        cut = self._cut(rt) if rt.tail else None
        if cut is None:
            fetched = rt.fetched_seq
            for c in self.store.get_chunks(rt.robot_id, rt.fetched_seq, limit=FETCH):
                if c.seq != rt.fetched_seq + 1 or (not rt.tail and rt.applied_seq >= 0 and c.seq != rt.applied_seq):
                    break  # a gap: wait for the resend
                rt.tail.append(c)
                rt.fetched_seq = c.seq
            if rt.fetched_seq != fetched:
                cut = self._cut(rt)
        return cut

    def _cut(self, rt: RobotTwin) -> Cut | None:
        return next_cut(rt.tail, rt.applied_row if rt.applied_seq >= 0 else 0, rt.twin.model)

    def _apply(self, cuts: dict[str, Cut]) -> None:
        """Score, update (batched per design), store and publish the robots' windows; then their
        predictions, and a checkpoint when due."""
        robots = [self.robots[rid] for rid in cuts]
        for rt in robots:
            self._score(rt, cuts[rt.robot_id])
        todo, windows = [], []
        for rt in robots:
            cut = cuts[rt.robot_id]
            if not cut.usable:
                continue
            try:
                windows.append(rt.twin.as_window({"q": cut.q, "qd": cut.qd, "ctrl": cut.ctrl, "sensors": cut.sensors,
                                                  "settings": cut.settings or None}))
                todo.append(rt)
            except WindowError as e:
                rt.last_update = {"accepted": False, "reason": str(e)}
        # Model calibration scores windows predicted by a posterior that has seen data (version ≥ 1): a
        # prior's prediction of one robot says where that robot lies in the prior, not how honest the twin is.
        before = ({rt.robot_id: rt.twin.draws() for rt in todo if rt.twin.posterior.version > 0}
                  if self.settings.validate else {})
        for rt, window in zip(todo, windows):     # kept for the model error (and checkpointed)
            rt.twin.record_window(window)
            rt.unfitted += self.settings.validate
        reports = dict(zip((rt.robot_id for rt in todo), update_many([rt.twin for rt in todo], windows,
                                                                                    self.max_batch, self._pool)))
        for rt in robots:
            cut = cuts[rt.robot_id]
            rt.applied_seq, rt.applied_row, rt.applied_at = cut.end_seq, cut.end_row, time.monotonic()
            rt.windows += cut.usable
            rt.tail = [c for c in rt.tail if c.seq >= cut.end_seq]
            rt.twin.mark_applied(cut.end_seq)
            report = reports.get(rt.robot_id)
            if report is not None:
                rt.rejected += not report.accepted
                self.update_latency.append(report.latency_s)
                self.metrics.observe_update(rt.robot_id, report.latency_s, report.accepted)
                rt.last_update = {k: report.as_dict()[k] for k in ("accepted", "reason", "version", "stages",
                                                                    "ess", "drift", "latency_s")}
        self._unsaved = True
        for rt in todo:    # stored before it is published or checkpointed: no client sees a version the store lacks
            if reports[rt.robot_id].accepted:
                self._store_posterior(rt)
        for rt in todo:
            if reports[rt.robot_id].accepted:
                self._alerts(rt)
            self._publish_posterior(rt)
            cut, rid = cuts[rt.robot_id], rt.robot_id     # the measured window, for live views (Foxglove)
            self.publish("telemetry", rid, lambda seq, rid=rid, c=cut: protocol.telemetry(rid, seq, c.t, c.q, c.qd,
                                                                                          c.ctrl, sensors=c.sensors))
        self._predict(todo, cuts)
        self._checkpoint()
        for rt, window in zip(todo, windows):        # each with the posterior before it
            if rt.robot_id in before:
                self._unvalidated.setdefault(rt.robot_id, deque(maxlen=VALIDATION_QUEUE)).append(
                    (cuts[rt.robot_id], window, before[rt.robot_id]))

    def _store_posterior(self, rt: RobotTwin) -> None:
        post = rt.twin.posterior
        try:
            self.store.put_posterior_version(rt.robot_id, post.version, post.summary(),
                                             particles_blob(rt.twin.particles))
        except StoreError as e:
            self.error = f"{rt.robot_id}: posterior version not stored ({e})"

    def _publish_posterior(self, rt: RobotTwin) -> None:
        post, rid, applied = rt.twin.posterior, rt.robot_id, rt.applied_seq
        summary, stale, reason = post.summary(), post.stale, post.reason
        self.publish("posterior", rid, lambda seq: protocol.posterior(
            rid, seq, post.version, summary, stale=stale, reason=reason, applied_seq=applied))

    # --- predictions and their scores ---------------------------------------------------
    def _predict(self, robots: list[RobotTwin], cuts: dict[str, Cut]) -> None:
        """Publish each robot's prediction over the horizon after its window, all in one call per design:
        under the commands the service knows (the stored chunk's own rows, then the robot's plan, then
        the last held; `service.plan.horizon_commands`), from the window's last measured state."""
        if not robots:
            return
        horizons = {id(rt.twin.model): max(1, int(round(self.settings.horizon_s / rt.twin.model.robot.dt)))
                    for rt in robots}
        commands, keys, starts, settings = [], [], [], []
        for rt in robots:
            cut, dt = cuts[rt.robot_id], rt.twin.model.robot.dt
            commands.append(horizon_commands(rt.tail[0], float(cut.t[-1]), horizons[id(rt.twin.model)], dt))
            keys.append(jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), rt.predictions))
            starts.append((cut.q[-1], cut.qd[-1]))
            settings.append(cut.settings or None)
        bands = predict_many([rt.twin for rt in robots], starts, commands, keys, QUANTILES, settings,
                             draws_per_particle=self.settings.prediction_draws, max_batch=self.max_batch,
                             executor=self._pool)
        for rt, b, ctrl in zip(robots, bands, commands):
            cut, dt = cuts[rt.robot_id], rt.twin.model.robot.dt
            t = cut.t[-1] + dt * np.arange(1, len(ctrl) + 1)
            pid, rid, version = rt.predictions, rt.robot_id, rt.twin.posterior.version
            rt.predictions += 1
            model = rt.twin.model
            rt.pending = Pending(pid, t, channels(model, b.samples_q, b.samples_qd, b.samples_readings))
            arrays = {"t": t, "q_bands": b.q, "qd_bands": b.qd, "ctrl": ctrl,
                      **protocol.sensor_fields(model.sensors, model.sensor_widths, b.readings)}
            self.publish("prediction", rid, lambda seq, rid=rid, version=version, arrays=arrays, pid=pid:
                         protocol.prediction(rid, seq, version, arrays, quantiles=list(QUANTILES), prediction_id=pid))

    def _has_idle_work(self) -> bool:
        return (bool(self._unvalidated) or any(rt.unfitted for rt in self.robots.values())
                or self._due_consolidation() is not None)

    def _due_consolidation(self) -> RobotTwin | None:
        return next((rt for rt in self.robots.values() if (w := self._consolidation_wait(rt)) is not None and w <= 0),
                    None)

    def _consolidation_wait(self, rt: RobotTwin) -> float | None:
        """Seconds until the robot's consolidation falls due (≤ 0: due): its config's
        `consolidate_after_s` after its last applied window; None: none asked for, or nothing applied
        since the last."""
        after = rt.twin.cfg.inference.consolidate_after_s
        if not after or rt.windows <= rt.consolidated:
            return None
        return rt.applied_at + after - time.monotonic()

    def _idle_work(self) -> None:
        """One unit of idle work (`WorkerSettings.validate`), finished before it returns: a window that
        becomes ready meanwhile waits for one unit, and the unit's time counts in the load. Re-predict the
        oldest waiting window of the robot validated longest ago, then, if that was its last waiting
        window (so that a window is always re-predicted with the model error learned before it) and
        REFIT_EVERY windows were recorded since its last refit, refit that robot's model error
        (`Twin.refit_model_error`); with no window waiting, refit the robot with the most windows
        recorded since its last; with none, consolidate a robot whose consolidation is due."""
        if self._unvalidated:
            self._rounds += 1
            rt = min((self.robots[rid] for rid in self._unvalidated), key=lambda rt: rt.validated_round)
            rt.validated_round = self._rounds
            waiting = self._unvalidated[rt.robot_id]
            self._validate([rt], {rt.robot_id: waiting.popleft()})
            if waiting:                                 # its waiting windows are scored without them
                return
            del self._unvalidated[rt.robot_id]
            if rt.unfitted < REFIT_EVERY:
                return
        else:
            rt = max(self.robots.values(), key=lambda rt: rt.unfitted)
            if not rt.unfitted:
                self._consolidate(self._due_consolidation())
                return
        rt.twin.refit_model_error()
        jax.block_until_ready(rt.twin.state.model_error)
        rt.unfitted, self._unsaved = 0, True

    def _consolidate(self, rt: RobotTwin) -> None:
        """Refit the newest stored telemetry of the robot whole (`service.consolidate`): the fit becomes
        its posterior (stored, published, checkpointed) and model error; a refused fit or bad stored
        data leave the posterior as it was. The figures go to health (`consolidation`)."""
        start, rt.consolidated = time.perf_counter(), rt.windows
        spec = rt.twin.cfg.inference
        try:
            recordings = stored_recordings(self.store, rt.robot_id, rt.twin.model, spec.consolidate_s)
            if not recordings:
                raise ValueError("no stored recording holds a segment")
            state, info = consolidate(rt.twin, recordings)
        except (StoreError, ValueError) as e:
            rt.consolidation = {"windows": rt.windows, "error": f"{type(e).__name__}: {e}",
                                "wall_s": time.perf_counter() - start}
            return
        figures = ("recordings", "optimiser_steps", "simulator_evaluations", "temper_autocorrelation_steps")
        done = {"windows": rt.windows, "seconds": sum(float(r.t[-1] - r.t[0]) for r in recordings),
                **{k: info[k] for k in figures}, "refused": info["refused"], "error": "",
                "wall_s": time.perf_counter() - start}
        if state is not None:
            rt.twin.state = state
            rt.unfitted, self._unsaved = 0, True
            done["version"] = rt.twin.posterior.version
            self._store_posterior(rt)
            self._alerts(rt)
            self._publish_posterior(rt)
            self._checkpoint(due=True)
        rt.consolidation = done      # once stored and checkpointed; replaced, never mutated (health reads it)

    def _validate(self, robots: list[RobotTwin], windows: dict[str, tuple[Cut, Window, np.ndarray]]) -> None:
        """Model calibration: each window just applied, predicted again open loop from its first measured
        state under the commands really applied, by the posterior before it (its draws, kept with the
        window: the window is held out; windows the prior predicted are not scored), and scored against
        what was measured (`RobotTwin.model_calibration`). Unlike the forecast score, this measures the twin: no command
        was guessed. The score's bands carry the model error learned before this window. Windows are
        the update's, padded to the full length (padding not scored), so one executable serves. Scored over q
        and qd together (`model_calibration`), and per channel: q, qd and each observed sensor's readings
        (`model_calibration_channels`; a delayed sensor's first rows, which the likelihood leaves out, are not
        scored)."""
        commands, observed, keys, starts, settings, draws = [], [], [], [], [], []
        for rt in robots:
            cut, w, z = windows[rt.robot_id]
            commands.append(np.asarray(w.ctrl[:-1]))
            observed.append(measured_channels(rt.twin.model, w.q, w.qd, w.sensors, w.mask))
            draws.append(z)
            keys.append(jax.random.fold_in(jax.random.PRNGKey(self.settings.seed + 1), cut.end_seq))
            starts.append((np.asarray(w.q[0]), np.asarray(w.qd[0])))
            settings.append(cut.settings or None)
        bands = predict_many([rt.twin for rt in robots], starts, commands, keys, QUANTILES, settings,
                             draws_per_particle=VALIDATION_DRAWS, max_batch=self.max_batch, executor=self._pool,
                             model_error=False, draws=draws)
        for rt, b, seen, key, s in zip(robots, bands, observed, keys, settings):
            model = rt.twin.model
            scored = rt.twin.with_model_error(b, key, model.settings_vector(s))
            predicted = channels(model, scored.samples_q, scored.samples_qd, scored.samples_readings)
            for c, cal in rt.model_calibration_channels.items():
                cal.update(predicted[c], seen[c])
            joint = [np.concatenate([x["q"], x["qd"]], axis=-1) for x in (predicted, seen)]
            rt.model_calibration.update(*joint)     # last: health that counts this window has its channels too

    def _score(self, rt: RobotTwin, cut: Cut) -> None:
        """Score the pending prediction against the window that follows it, if it covers the horizon and the state
        it started from: over q and qd together (`calibration`, stored per prediction) and per channel, q, qd and
        each observed sensor (`calibration_channels`), on the rows model calibration scores (`measured_channels`)."""
        p, rt.pending = rt.pending, None
        if p is None:
            return
        model, h = rt.twin.model, len(p.t)
        dt = model.robot.dt
        i = int(np.searchsorted(cut.t, p.t[0] - 1.5 * dt))          # the start state's row
        seen = cut.t[i:i + h + 1]
        if len(seen) <= h or np.max(np.abs(seen - np.r_[p.t[0] - dt, p.t])) > 0.5 * dt:
            return
        rows = slice(i, i + h + 1)
        readings = np.concatenate([cut.sensors[n] for n in model.sensors] + [np.zeros((len(cut.t), 0))], axis=1)
        observed = measured_channels(model, cut.q[rows], cut.qd[rows], readings[rows])
        for c, cal in rt.calibration_channels.items():
            cal.update(p.samples[c], observed[c])
        s = rt.calibration.update(*(np.concatenate([x["q"], x["qd"]], axis=-1) for x in (p.samples, observed)))
        c = rt.calibration.as_dict()
        self.metrics.set_calibration(rt.robot_id, c["coverage_50"], c["coverage_90"])
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
        self.metrics.set_alerts(rt.robot_id, len(alerts), len(set(alerts) - set(rt.alerts)))
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
