"""Client side of the twin service: `TwinClient` for queries, `Subscriber` for the PUB stream.

    client = TwinClient("tcp://127.0.0.1:5557", timeout_s=5, retries=3)
    client.health()                       # dict, see docs/PROTOCOL.md
    snap = client.snapshot("arm2")        # Message: body version/summary/..., arrays values, weights
    bands = client.predict("arm2", q0, qd0, commands)   # Message: arrays t, q, qd (Q, h, n), sensor:<name>

    for event in Subscriber("tcp://127.0.0.1:5556", ["posterior/", "health/"], client):
        event.topic, event.message, event.resync

A request that gets no reply within `timeout_s` is sent again on a fresh socket
(a lost reply leaves a DEALER in no bad state, but a reconnect also recovers from a
restarted service), up to `retries` more times; then `TwinTimeout`. An `error`
reply raises `ServiceError(code, detail)`.
"""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import zmq

from twin_bayes.service import protocol
from twin_bayes.service.auth import CurveKeys


class TwinTimeout(TimeoutError):
    """No reply from the service after all retries."""


class ServiceError(RuntimeError):
    """The service answered with an `error` message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class TwinClient:
    def __init__(self, query_addr: str, timeout_s: float = 5.0, retries: int = 2,
                 curve: CurveKeys | None = None, context: zmq.Context | None = None):
        self.addr, self.timeout_s, self.retries, self.curve = query_addr, timeout_s, retries, curve
        self.ctx = context or zmq.Context.instance()
        self._ids = itertools.count(int.from_bytes(os.urandom(4), "little"))
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self.ctx.socket(zmq.DEALER)
            s.linger = 0
            s.sndtimeo = int(self.timeout_s * 1000)  # no peer to queue for (down, or key refused)
            if self.curve is not None:
                self.curve.apply_client(s)
            s.connect(self.addr)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> TwinClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, robot_id: str = protocol.FLEET,
                arrays: Mapping[str, np.ndarray] | None = None, **params: Any) -> protocol.Message:
        """Send query `op` and return the decoded reply (retrying on timeouts)."""
        request_id = next(self._ids) % 2**63
        frames = protocol.query(robot_id, request_id, op, arrays, **params)
        for _ in range(self.retries + 1):
            sock = self._socket()
            deadline = time.monotonic() + self.timeout_s
            try:
                sock.send_multipart(frames)
            except zmq.Again:
                deadline = 0.0
            while (left := deadline - time.monotonic()) > 0:
                if not sock.poll(int(left * 1000) + 1):
                    break
                msg = protocol.decode(sock.recv_multipart())
                if msg.seq != request_id:
                    continue  # a late reply to an earlier attempt
                if msg.type == "error":
                    raise ServiceError(msg.extra["code"], msg.extra["detail"])
                return msg
            self.close()
        raise TwinTimeout(f"no reply to {op!r} from {self.addr} after {self.retries + 1} tries "
                          f"of {self.timeout_s} s")

    def health(self) -> dict[str, Any]:
        return dict(self.request("health").extra)

    def metrics(self) -> dict[str, Any]:
        return dict(self.request("metrics").extra)

    def snapshot(self, robot_id: str) -> protocol.Message:
        """Posterior snapshot: body version, names, summary, stale, applied_seq, pub_seq, alerts;
        arrays values (N, D), weights (N,)."""
        return self.request("posterior", robot_id)

    def predict(self, robot_id: str, q0, qd0, commands=None, quantiles=(0.05, 0.5, 0.95),
                horizon_s: float | None = None, ctrl_hold=None, settings=None) -> protocol.Message:
        """Bands from state (q0 (nq,), qd0 (nv,)) under commands (h, nu), or under `ctrl_hold`
        (nu,) held for `horizon_s`; `settings` {name: value} of the recording (e.g. servo_kp), default
        the config's. Reply arrays: t (h,) s, q (Q, h, nq), qd (Q, h, nv), and `sensor:<name>` (Q, h, dim) per
        sensor the twin observes (row k read at t[k] − dt, docs/PROTOCOL.md)."""
        arrays = {"q0": np.asarray(q0, np.float64), "qd0": np.asarray(qd0, np.float64)}
        params: dict[str, Any] = {"quantiles": [float(x) for x in quantiles]}
        if settings is not None:
            params["settings"] = {str(k): float(v) for k, v in settings.items()}
        if commands is not None:
            arrays["ctrl"] = np.asarray(commands, np.float64)
        else:
            params["horizon_s"] = float(horizon_s) if horizon_s is not None else None
            if ctrl_hold is not None:
                params["ctrl_hold"] = [float(x) for x in ctrl_hold]
        return self.request("predict", robot_id, arrays, **params)


class Event(NamedTuple):
    """A PUB message (topic like 'posterior/arm2/'), or with resync=True a snapshot reply
    fetched after a gap (topic 'snapshot/<robot_id>/')."""

    topic: str
    message: protocol.Message
    resync: bool = False


class Subscriber:
    """Iterate the PUB stream; detects gaps in the sequence numbers and resyncs from snapshots.

    topics: prefixes such as 'posterior/', 'prediction/arm2/', 'health/', 'alert/' ('' = all).
    On the first message and after every gap, if `client` is given, yields one snapshot
    Event per robot seen so far (in any message or health report; resync=True). `dropped` counts messages
    missed. Sequence numbers count all topics, so gaps are only detectable when subscribed to everything
    (topics=('',)); a filtered subscriber resyncs on its first message only.
    """

    def __init__(self, pub_addr: str, topics: Iterable[str] = ("",), client: TwinClient | None = None,
                 curve: CurveKeys | None = None, rcvhwm: int = 1000, rcvbuf: int | None = None,
                 context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = rcvhwm
        if rcvbuf is not None:
            self.sock.setsockopt(zmq.RCVBUF, rcvbuf)  # kernel buffer, bytes
        if curve is not None:
            curve.apply_client(self.sock)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(pub_addr)
        self.client = client
        self.last_seq: int | None = None
        self.dropped = 0
        self.resyncs = 0
        self.robots: set[str] = set()
        self._filtered = tuple(topics) != ("",)

    def close(self) -> None:
        self.sock.close(linger=0)

    def recv(self, timeout_s: float | None = None) -> list[Event]:
        """Next message as [Event], preceded by snapshot Events on a resync; [] on timeout."""
        if not self.sock.poll(None if timeout_s is None else int(timeout_s * 1000)):
            return []
        frames = self.sock.recv_multipart()
        msg = protocol.decode(frames[1:])
        topic = frames[0].decode("ascii", "replace")
        if msg.robot_id != protocol.FLEET:
            self.robots.add(msg.robot_id)
        elif msg.type == "reply" and msg.extra["op"] == "health":
            self.robots.update(msg.extra.get("robots", {}))
        first = self.last_seq is None
        missed = 0 if first or self._filtered else msg.seq - self.last_seq - 1
        self.dropped += missed
        self.last_seq = msg.seq
        out = []
        if self.client is not None and (first or missed):
            self.resyncs += 1
            out = [Event(f"snapshot/{r}/", self.client.snapshot(r), True) for r in sorted(self.robots)]
        return [*out, Event(topic, msg)]

    def __iter__(self) -> Iterator[Event]:
        while True:
            yield from self.recv()
