"""`TwinService`: the long-running twin service (`twin-bayes serve`).

Threads and sockets:

    I/O thread      owns every socket: ingest ROUTER, query ROUTER, PUB, and an inproc
                    PULL that other threads use to wake it. Stores and acks chunks
                    (`service.ingest`), answers health/metrics/snapshot queries, sends
                    what the other threads queued in the outbox, publishes health.
    inference       `service.worker.Worker`: windows -> Twin.update -> checkpoint -> outbox.
    predict         `service.queries.Predictor`: predict queries -> outbox.
    metrics         with `metrics_port`: prometheus_client's HTTP server of `/metrics`.

Every count goes into one `service.metrics.ServiceMetrics` (`TwinService.metrics_registry`), read by
both the `metrics` query and `/metrics`.

ZeroMQ sockets are not thread-safe, so only the I/O thread touches them; the
others hand work over through `Outbox` (a queue plus a wake-up message on a
per-thread inproc PUSH socket). PUB sequence numbers are assigned by the I/O
thread as it sends, so they increase strictly across all topics.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from twin_bayes.config import TwinConfig
from twin_bayes.inference import Twin
from twin_bayes.models import TwinModel
from twin_bayes.service import auth, protocol
from twin_bayes.service.ingest import Ingest, RobotShape
from twin_bayes.service.metrics import ServiceMetrics
from twin_bayes.service.queries import Predictor, QueryError, answer_now, jsonable
from twin_bayes.service.store import TelemetryStore
from twin_bayes.service.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)

WAKE = "inproc://twin-service-wake"
DRAIN = 256  # messages handled per socket per loop turn, so no socket starves the others


@dataclass(frozen=True)
class ServiceSettings:
    """Addresses accept `tcp://127.0.0.1:*` (an ephemeral port; see `TwinService.endpoints`).

    silent_after_s: a robot heard from but silent this long is reported in health;
    health_every_s: period of the health topic; sndhwm: PUB queue per subscriber
    (messages beyond it are dropped for that subscriber, never waited for); sndbuf:
    the PUB kernel send buffer in bytes (None: the OS default);
    max_store_bytes: cap on the SQLite file (writes past it fail like a full disk);
    metrics_port: serve Prometheus `/metrics` on metrics_host:metrics_port (0: a free port; None: off);
    posteriors: robot_id -> a directory of `twin-bayes fit` the robot starts from (its model error too;
    a checkpoint of the store, when there is one, is newer and wins).
    """

    configs: Mapping[str, TwinConfig]
    store: Path
    ingest: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    query: str = "tcp://127.0.0.1:5557"
    curve_keys: Path | None = None
    silent_after_s: float = 10.0
    health_every_s: float = 1.0
    sndhwm: int = 1000
    sndbuf: int | None = None
    max_store_bytes: int | None = None
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    posteriors: Mapping[str, Path] = field(default_factory=dict)


class Outbox:
    """Work for the I/O thread from any thread: `put(item)` queues it and wakes the I/O loop."""

    def __init__(self, ctx: zmq.Context):
        self.ctx = ctx
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self._local = threading.local()

    def put(self, item: tuple) -> None:
        self.items.put((time.monotonic(), item))
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = self.ctx.socket(zmq.PUSH)
            sock.linger = 0
            sock.connect(WAKE)
        try:
            sock.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # the I/O thread already has wake-ups pending


class TwinService:
    """Ingest, inference, publishing and queries for one or more robots (`configs`: robot_id -> config).

    Robots with identical configs share one `TwinModel` (its kernels compile once); `models`
    (robot_id -> model) passes in already compiled ones. `start()` returns once the sockets
    are bound; `stop()` ends all threads.
    """

    def __init__(self, settings: ServiceSettings, models: Mapping[str, TwinModel] | None = None):
        self.settings = settings
        models = dict(models or {})
        configs = settings.configs
        shared = {configs[rid].model_dump_json(): m for rid, m in models.items() if rid in configs}
        for rid, cfg in configs.items():
            key = cfg.model_dump_json()
            if key not in shared:
                shared[key] = TwinModel(cfg)
            models.setdefault(rid, shared[key])
        self.twins = {rid: Twin(cfg, models[rid]) for rid, cfg in configs.items()}
        for rid, directory in settings.posteriors.items():
            from twin_bayes.inference.store import load_posterior
            load_posterior(self.twins[rid], directory)     # ValueError names the file and the problem
        self.store = TelemetryStore(settings.store, settings.max_store_bytes)
        self.ctx = zmq.Context()
        self.outbox = Outbox(self.ctx)
        self.metrics_registry = ServiceMetrics()
        self.worker = Worker(self.store, self.twins, self._from_worker, settings.worker, self.metrics_registry)
        self.predictor = Predictor(self.worker.robots, lambda env, frames: self.outbox.put(("reply", env, frames)))
        shapes = {rid: RobotShape(t.model.robot.nq, t.model.robot.nv, t.model.robot.nu, t.model.robot.dt,
                                  t.model.window_samples, t.model.setting_names,
                                  tuple(zip(t.model.sensors, t.model.sensor_widths)))
                  for rid, t in self.twins.items()}
        self.keys = auth.load(settings.curve_keys, auth.SERVER) if settings.curve_keys else None
        owners = auth.owners(settings.curve_keys) if settings.curve_keys else None
        self.ingest = Ingest(self.store, shapes, self.worker.notify, owners, metrics=self.metrics_registry)
        self.endpoints: dict[str, str] = {}
        self.pub_seq = -1
        self.started = time.time()
        self._auth = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._next_health = 0.0
        self._failure: BaseException | None = None
        self._io = threading.Thread(target=self._io_main, name="twin-io", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> TwinService:
        if self.settings.curve_keys is not None:
            self._auth = auth.start_authenticator(self.ctx, self.settings.curve_keys)
        try:
            self.worker.start()     # resumes from the checkpoints: refuses those of another store
        except Exception:
            if self._auth is not None:
                self._auth.stop()
            self.ctx.destroy(linger=0)
            self.store.close()
            raise
        self.predictor.start()
        self._io.start()
        if not self._ready.wait(timeout_s) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"service did not start: {self._failure}")
        if self.settings.metrics_port is not None:
            try:
                self.endpoints["metrics"] = self.metrics_registry.start_http(self.settings.metrics_port,
                                                                             self.settings.metrics_host)
            except OSError as e:
                self.stop()
                raise RuntimeError(f"service did not start: metrics on port {self.settings.metrics_port}: {e}") from e
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._io.is_alive():
            self._io.join()
        self.worker.stop()
        self.predictor.stop()
        self.metrics_registry.stop_http()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=0)
        self.store.close()

    def __enter__(self) -> TwinService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- I/O thread ---------------------------------------------------------------------
    def _socket(self, kind: int, name: str) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        # libzmq drops (and disconnects) larger frames itself; smaller bad ones get an error reply
        s.setsockopt(zmq.MAXMSGSIZE, protocol.DEFAULT_LIMITS.max_message_bytes)
        if kind == zmq.PUB:
            s.sndhwm = self.settings.sndhwm
            if self.settings.sndbuf is not None:
                s.setsockopt(zmq.SNDBUF, self.settings.sndbuf)
        if kind == zmq.ROUTER:
            s.router_mandatory = False
        if self.keys is not None:
            self.keys.apply_server(s)
        s.bind(getattr(self.settings, name))
        self.endpoints[name] = s.last_endpoint.decode()
        return s

    def _io_main(self) -> None:
        try:
            ingest = self._socket(zmq.ROUTER, "ingest")
            query = self._socket(zmq.ROUTER, "query")
            pub = self._socket(zmq.PUB, "pub")
            wake = self.ctx.socket(zmq.PULL)
            wake.linger = 0
            wake.bind(WAKE)
        except (zmq.ZMQError, OSError) as e:
            self._failure = e
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        for s in (ingest, query, wake):
            poller.register(s, zmq.POLLIN)
        self._next_health = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._turn(poller, ingest, query, pub, wake)
            except Exception:  # the loop must outlive any bug
                log.exception("I/O loop turn failed")
                self.metrics_registry.observe_internal_error()

    def _turn(self, poller: zmq.Poller, ingest: zmq.Socket, query: zmq.Socket, pub: zmq.Socket,
              wake: zmq.Socket) -> None:
        wait_ms = min(100.0, max(0.0, self._next_health - time.monotonic()) * 1000)
        ready = dict(poller.poll(timeout=wait_ms))
        if ingest in ready:
            self._drain(ingest, self._on_ingest)
        if query in ready:
            self._drain(query, self._on_query)
        if wake in ready:
            self._drain(wake, lambda s, frames: None)
        self._flush_outbox(pub, query)
        if time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + self.settings.health_every_s
            self._publish(pub, "health", protocol.FLEET,
                          lambda seq: protocol.reply(protocol.FLEET, seq, "health", **self.health()))

    def _drain(self, sock: zmq.Socket, handle: Callable[[zmq.Socket, list], None]) -> None:
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(sock, frames)
            except Exception:  # the loop must outlive any bug in one handler
                log.exception("handler failed")
                self.metrics_registry.observe_internal_error()

    @staticmethod
    def _split(frames: list, req: bool = False) -> tuple[list, list]:
        """ROUTER envelope (identity; with `req`, also a REQ socket's empty delimiter) and the message."""
        cut = 2 if req and len(frames) > 1 and len(frames[1].bytes) == 0 else 1
        return frames[:cut], frames[cut:]

    def _user_id(self, frame: zmq.Frame) -> str | None:
        if self.keys is None:
            return None
        try:
            return frame.get("User-Id")
        except zmq.ZMQError:
            return None

    def _on_ingest(self, sock: zmq.Socket, frames: list) -> None:
        envelope, body = self._split(frames)
        self.metrics_registry.observe_message(sum(len(f) for f in body))
        user = self._user_id(body[0]) if body else None
        for reply in self.ingest.handle(body, user):
            sock.send_multipart([*envelope, *reply])

    def _on_query(self, sock: zmq.Socket, frames: list) -> None:
        envelope, body = self._split(frames, req=True)
        try:
            msg = protocol.decode(body)
        except protocol.ProtocolError as e:
            self.metrics_registry.observe_rejection("query", e.code)
            sock.send_multipart([*envelope, *protocol.error(protocol.FLEET, 0, e.code, e.detail)])
            return
        try:
            if msg.type != "query":
                raise QueryError("wrong_socket", f"the query socket takes queries, not {msg.type}")
            self.metrics_registry.observe_query(str(msg.extra["op"]))
            reply = answer_now(msg, self.worker.robots, self.health, self.metrics, self.pub_seq)
            if reply is None:
                self.predictor.submit([f.bytes for f in envelope], msg)
                return
        except QueryError as e:
            self.metrics_registry.observe_rejection("query", e.code)
            reply = protocol.error(msg.robot_id, msg.seq, e.code, e.detail)
        sock.send_multipart([*envelope, *reply])

    def _flush_outbox(self, pub: zmq.Socket, query: zmq.Socket) -> None:
        while True:
            try:
                handed_over, item = self.outbox.items.get_nowait()
            except queue.Empty:
                return
            if item[0] == "pub":
                self._publish(pub, *item[1:], handed_over=handed_over)
            else:
                query.send_multipart([*item[1], *item[2]])

    def _publish(self, pub: zmq.Socket, kind: str, robot_id: str, build: Callable[[int], list[bytes]],
                 handed_over: float | None = None) -> None:
        """Send on PUB; handed_over: monotonic s at which another thread queued it (None: this thread, now)."""
        self.pub_seq += 1
        frames = build(self.pub_seq)
        pub.send_multipart([protocol.topic(kind, robot_id), *frames])  # PUB drops at HWM, never blocks
        self.metrics_registry.observe_publish(kind, 0.0 if handed_over is None else time.monotonic() - handed_over)

    def _from_worker(self, kind: str, robot_id: str, build: Callable[[int], list[bytes]]) -> None:
        """The worker's publish hook (inference thread): queue the message for PUB."""
        self.outbox.put(("pub", kind, robot_id, build))

    # --- health and metrics -------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """status 'ok' or 'degraded' with the problems; per robot ingest, posterior, calibration, alerts."""
        links = self.ingest.status(self.settings.silent_after_s)
        robots = {rid: {**links[rid], **rt.status()} for rid, rt in self.worker.robots.items()}
        problems = []
        if self.ingest.store_error:
            problems.append(f"store: {self.ingest.store_error}")
        problems += [f"{rid}: silent for {r['seconds_since_chunk']:.1f} s" for rid, r in robots.items() if r["silent"]]
        for key in ("resume_error", "error"):     # a failed resume stays reported; a failed save until one works
            if self.worker.checkpoint_status.get(key):
                problems.append(f"checkpoint: {self.worker.checkpoint_status[key]}")
        if self.worker.error:
            problems.append(f"inference: {self.worker.error}")
        if self.worker.preload_status.get("error"):
            problems.append(f"preload: {self.worker.preload_status['error']}")
        return jsonable({"status": "degraded" if problems else "ok", "problems": problems,
                         "uptime_s": time.time() - self.started, "pub_seq": self.pub_seq,
                         "robots": robots, "checkpoint": self.worker.checkpoint_status,
                         "preload": self.worker.preload_status,
                         "alerts": [a for r in robots.values() for a in r["alerts"]]})

    def metrics(self) -> dict[str, Any]:
        """Counters from `metrics_registry` (messages, rejections by code, stored chunks/samples, queries,
        publications, updates and their latency), plus pub_seq and the windows applied."""
        return jsonable({**self.metrics_registry.query_body(), "pub_seq": self.pub_seq,
                         "windows": sum(rt.windows for rt in self.worker.robots.values())})
