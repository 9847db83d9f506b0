"""Robot side of telemetry ingest: a DEALER that numbers chunks and resends until they are acked.

Every chunk stays in memory until the service acks it (it is durable there). Unacked chunks are
resent when their ack is overdue (exponential backoff) or when the service asks with a `resend`.
An `error` about a chunk drops it as rejected (counted, with the service's reason in `stats.errors`),
since resending an invalid or forbidden chunk cannot help; only `store_failed` (the service could not
make it durable, e.g. a full disk) leaves it queued for resend. A `bad_plan` error comes before the ack of a
chunk whose telemetry was stored without its plan; it is counted in `stats.plans_rejected`.
Memory is bounded: `send` blocks, pumping replies, while `max_unacked` chunks are outstanding.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import zmq

from twin_bayes.service import protocol
from twin_bayes.service.auth import CurveKeys

#: Error codes after which the service wants the chunk again.
RETRYABLE = frozenset({"store_failed"})
#: Error codes about a chunk's plan alone (its telemetry was stored and acked).
PLAN_ONLY = frozenset({"bad_plan"})


class LinkTimeout(TimeoutError):
    """The service did not ack in time; the unacked chunks are still held by the link."""


@dataclass
class _Pending:
    frames: list[bytes]
    due: float  # monotonic time of the next resend, s
    backoff: float  # current resend interval, s


@dataclass
class LinkStats:
    """Counters of one link; `errors` lists (seq, code, detail) of every error reply."""

    sent: int = 0
    resent: int = 0
    acked: int = 0
    duplicates: int = 0
    rejected: int = 0
    plans_rejected: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)


class RobotLink:
    """Numbered telemetry chunks to a service ROUTER at `endpoint`, kept until acked.

    first_seq: number of the first chunk (a restarted robot continues its numbering).
    resend_after_s: time to wait for an ack before resending; doubles per resend up to max_backoff_s.
    max_unacked: chunks held at most; `send` blocks (handling replies) while that many are pending.
    """

    def __init__(self, endpoint: str, robot_id: str, *, first_seq: int = 0, resend_after_s: float = 1.0,
                 max_backoff_s: float = 8.0, max_unacked: int = 64, curve: CurveKeys | None = None,
                 context: zmq.Context | None = None) -> None:
        self.robot_id = robot_id
        self.next_seq = first_seq
        self.resend_after_s = resend_after_s
        self.max_backoff_s = max_backoff_s
        self.max_unacked = max_unacked
        self.pending: dict[int, _Pending] = {}
        self.stats = LinkStats()
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, max_unacked)
        self.socket.setsockopt(zmq.RCVHWM, 4 * max_unacked)
        if curve is not None:
            curve.apply_client(self.socket)
        self.socket.connect(endpoint)

    def __enter__(self) -> RobotLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)

    @property
    def unacked(self) -> list[int]:
        """Chunk numbers sent and not yet acked, ascending."""
        return sorted(self.pending)

    def send(self, t, q, qd, ctrl, settings: Mapping[str, float] | None = None,
             timeout_s: float | None = None, plan: np.ndarray | None = None, plan_t0: float | None = None,
             sensors: Mapping[str, np.ndarray] | None = None, **channels: np.ndarray) -> int:
        """Queue and send the next chunk: t (n,) s, q (n, nq), qd (n, nv), ctrl (n, nu), extras (n, ...).

        `plan` (H, nu): the commands planned from time `plan_t0` (s) on, one per sample interval;
        `sensors` {name: (n, dim)}: MJCF sensor readings (protocol.telemetry). Returns its chunk number.
        Blocks while `max_unacked` chunks are pending; raises LinkTimeout after `timeout_s` (None: wait
        forever) and ProtocolError for invalid arrays.
        """
        frames = protocol.telemetry(self.robot_id, self.next_seq, t, q, qd, ctrl, settings, plan, plan_t0,
                                    sensors, **channels)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self.pending) >= self.max_unacked:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise LinkTimeout(f"{len(self.pending)} chunks unacked for {timeout_s} s")
            self.poll(min(0.1, left) if left is not None else 0.1)
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.pending[seq] = _Pending(frames, 0.0, self.resend_after_s)
        self.stats.sent += 1
        self._transmit(seq, first=True)
        return seq

    def _transmit(self, seq: int, first: bool = False) -> None:
        p = self.pending[seq]
        try:
            self.socket.send_multipart(p.frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # queue to the service full: retry at the next due time
            pass
        if not first:
            self.stats.resent += 1
            p.backoff = min(2 * p.backoff, self.max_backoff_s)
        p.due = time.monotonic() + p.backoff

    def poll(self, timeout_s: float = 0.0) -> int:
        """Handle replies arriving within `timeout_s` and resend overdue chunks; returns replies handled."""
        handled = 0
        deadline = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000)) if handled == 0 else 0
            if not self.socket.poll(wait_ms, zmq.POLLIN):
                break
            self._handle(self.socket.recv_multipart(copy=False))
            handled += 1
        now = time.monotonic()
        for seq in [s for s, p in self.pending.items() if p.due <= now]:
            self._transmit(seq)
        return handled

    def _handle(self, frames) -> None:
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as e:
            self.stats.errors.append((-1, "bad_reply", str(e)))
            return
        if msg.type == "ack":
            if self.pending.pop(msg.seq, None) is not None:
                self.stats.acked += 1
                self.stats.duplicates += msg.extra["status"] == "duplicate"
        elif msg.type == "resend":
            for seq in msg.extra["seqs"]:
                if seq in self.pending:
                    self._transmit(seq)
        elif msg.type == "error":
            code, detail = msg.extra["code"], msg.extra["detail"]
            self.stats.errors.append((msg.seq, code, detail))
            if code in PLAN_ONLY:
                self.stats.plans_rejected += 1
            elif (msg.robot_id == self.robot_id and code not in RETRYABLE
                    and self.pending.pop(msg.seq, None) is not None):
                self.stats.rejected += 1

    def wait_until(self, deadline: float) -> None:
        """Handle replies and resends until the monotonic time `deadline` (s)."""
        while (left := deadline - time.monotonic()) > 0:
            self.poll(min(left, 0.05))

    def drain(self, timeout_s: float) -> None:
        """Wait for every pending ack; LinkTimeout naming the chunks still unacked after `timeout_s`."""
        if not self.flush(timeout_s):
            raise LinkTimeout(f"chunks {self.unacked} not acked within {timeout_s} s")

    def flush(self, timeout_s: float) -> bool:
        """Wait until every chunk is acked (or rejected); False if some are still pending at the timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        return not self.pending
