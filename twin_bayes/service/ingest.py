"""Telemetry ingest: validate a chunk, store it durably, then ack; dedup, gaps, silence.

`Ingest.handle(frames, user_id)` turns one received message (ROUTER identity
already stripped) into the replies to send back. It never raises on input:
every rejection is counted in `rejected[code]` and answered with an `error`. A chunk whose only
fault is its plan (twin_bayes.service.plan) is stored and acked without the plan, the ack preceded
by a `bad_plan` error.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from twin_bayes.service import protocol
from twin_bayes.service.metrics import ServiceMetrics
from twin_bayes.service.plan import BAD_PLAN, check_plan, stored_arrays
from twin_bayes.service.store import StoreConflictError, StoreWriteError, TelemetryStore

# Service-level error codes (besides protocol.CODES), listed in docs/PROTOCOL.md.
WRONG_SOCKET = "wrong_socket"
UNKNOWN_ROBOT = "unknown_robot"
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
STORE_FAILED = "store_failed"
BAD_RATE = "bad_rate"
# A chunk's body `settings` {name: value} are stored as constant channels "setting:<name>" (n,)
# (the store keeps arrays only); windows read them back from their first row.
SETTING = "setting:"


def settings_of(chunk) -> dict[str, float]:
    """A stored chunk's (`protocol.Message`) known settings {name: value}, read back from its first row."""
    return {k[len(SETTING):]: float(a[0]) for k, a in chunk.arrays.items() if k.startswith(SETTING)}


def settings_groups(chunks, sizes) -> tuple[list[dict[str, float]], np.ndarray]:
    """Each chunk's settings, and per sample (sizes[i] rows of chunk i) the index of the first chunk with
    the same settings: the groups the window cutter keeps apart (`data.windows.cut_windows`)."""
    settings = [settings_of(c) for c in chunks]
    return settings, np.repeat([settings.index(x) for x in settings], sizes)


@dataclass(frozen=True)
class RobotShape:
    """What a robot's chunks must look like: widths, sample interval dt (s), at most `max_n` rows."""

    nq: int
    nv: int
    nu: int
    dt: float
    max_n: int
    settings: tuple[str, ...] = ()  # the twin's setting names; a chunk's body may set them by name or kind
    sensors: tuple[tuple[str, int], ...] = ()   # (name, columns) of each MJCF sensor the twin observes


@dataclass
class RobotLink:
    """Ingest state of one robot: highest stored seq, arrivals (monotonic s)."""

    highest: int = -1
    last_seen: float | None = None
    chunks: int = 0
    samples: int = 0
    duplicates: int = 0
    resends: int = 0


@dataclass
class Ingest:
    store: TelemetryStore
    shapes: Mapping[str, RobotShape]
    notify: Callable[[str], None]            # called with robot_id after a new chunk is durable
    owners: Mapping[str, str] | None = None  # CURVE User-Id -> the robot_id it may write; None: no auth
    rejected: Counter = field(default_factory=Counter)
    links: dict[str, RobotLink] = field(default_factory=dict)
    store_error: str = ""                    # last write failure; "" once a write succeeds again
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)   # the same counts, for Prometheus

    def __post_init__(self) -> None:
        for rid in self.shapes:
            self.links[rid] = RobotLink(highest=self.store.last_seq(rid))

    def _reject(self, robot_id: str, seq: int, code: str, detail: str) -> list[list[bytes]]:
        self.rejected[code] += 1
        self.metrics.observe_rejection("ingest", code)
        return [protocol.error(robot_id, seq, code, detail[:2000])]

    def handle(self, frames: Sequence, user_id: str | None = None) -> list[list[bytes]]:
        """Replies to one ingest message: [ack] or [ack, resend] or [error]; a bad plan puts its error first."""
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as e:
            return self._reject(protocol.FLEET, 0, e.code, e.detail)
        rid, seq = msg.robot_id, msg.seq
        if msg.type != "telemetry":
            return self._reject(rid, seq, WRONG_SOCKET, f"the ingest socket takes telemetry, not {msg.type}")
        if rid not in self.shapes:
            return self._reject(rid, seq, UNKNOWN_ROBOT,
                                f"no twin for robot_id {rid!r}; this service serves {sorted(self.shapes)}")
        if self.owners is not None and self.owners.get(user_id or "") != rid:
            return self._reject(rid, seq, FORBIDDEN, f"this key may not write robot_id {rid!r}")
        problem = self._check_shape(msg, self.shapes[rid])
        if problem:
            return self._reject(rid, seq, *problem)
        shape = self.shapes[rid]
        plan, plan_problem = check_plan(msg, shape.nu, shape.dt, shape.max_n)
        arrays = {k: v for k, v in msg.arrays.items() if k not in protocol.PLAN_FIELDS}
        if plan is not None:
            arrays.update(stored_arrays(plan))
        known = {*self.shapes[rid].settings, *(n.split(":")[0] for n in self.shapes[rid].settings)}
        for name, value in msg.extra.get("settings", {}).items():
            if name in known:  # others (e.g. a log's arm length) mean nothing to this twin
                arrays[SETTING + name] = np.full(msg.n, float(value))
        try:
            new = self.store.put_chunk(rid, seq, arrays)
        except StoreConflictError as e:
            return self._reject(rid, seq, CONFLICT, str(e))
        except protocol.ProtocolError as e:  # settings channels pushed it past a cap
            return self._reject(rid, seq, e.code, e.detail)
        except StoreWriteError as e:
            self.store_error = str(e)
            return self._reject(rid, seq, STORE_FAILED, f"not stored, resend later: {e}")
        self.store_error = ""
        plan_error = self._reject(rid, seq, BAD_PLAN, f"plan dropped, telemetry stored: {plan_problem}") \
            if plan_problem else []
        link = self.links[rid]
        link.last_seen = time.monotonic()
        if not new:
            link.duplicates += 1
            self.metrics.observe_duplicate()
            return [*plan_error, protocol.ack(rid, seq, duplicate=True)]
        link.chunks += 1
        link.samples += msg.n
        self.metrics.observe_chunk(rid, msg.n)
        self.notify(rid)
        replies = [*plan_error, protocol.ack(rid, seq)]
        if seq > link.highest + 1:
            missing = self.store.missing_seqs(rid, seq - 1)
            if missing:
                link.resends += 1
                self.metrics.observe_resend_request(rid)
                replies.append(protocol.resend(rid, missing))
        link.highest = max(link.highest, seq)
        return replies

    @staticmethod
    def _check_shape(msg: protocol.Message, s: RobotShape) -> tuple[str, str] | None:
        a, n = msg.arrays, msg.n
        for name, width in (("q", s.nq), ("qd", s.nv), ("ctrl", s.nu)):
            if a[name].shape[1] != width:
                return "shape_mismatch", f"{name} has {a[name].shape[1]} columns, this robot has {width}"
        for name, width in s.sensors:
            field = protocol.SENSOR + name
            if field not in a:
                return "bad_field", f"telemetry lacks {field} ({width} columns): this robot's twin observes it"
            if a[field].ndim != 2 or a[field].shape[1] != width or a[field].dtype.kind != "f":
                return "shape_mismatch", f"{field} is {a[field].dtype} {a[field].shape}, expected float (n, {width})"
        if n > s.max_n:
            return "too_large", f"{n} samples > {s.max_n} (one twin window): send smaller chunks"
        if n > 1:
            dev = float(np.max(np.abs(np.diff(a["t"]) - s.dt)))
            if dev > 0.01 * s.dt:
                return BAD_RATE, f"samples must be dt = {s.dt} s apart (off by up to {dev:.3g} s)"
        return None

    def status(self, silent_after_s: float) -> dict[str, dict]:
        """Per robot: stored chunks/samples, highest seq, seconds since its last chunk (None: never
        heard from since start), silent = heard from, but not for `silent_after_s`."""
        now = time.monotonic()
        out = {}
        for rid, link in self.links.items():
            age = None if link.last_seen is None else now - link.last_seen
            out[rid] = {"highest_seq": link.highest, "chunks": link.chunks, "samples": link.samples,
                        "duplicates": link.duplicates, "resend_requests": link.resends,
                        "seconds_since_chunk": age,
                        "silent": age is not None and age > silent_after_s}
        return out
