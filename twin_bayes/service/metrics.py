"""The service's Prometheus metrics: one `ServiceMetrics` owning a `CollectorRegistry`.

Ingest, the I/O thread and the inference thread record into it (`observe_*`, `set_*`; any thread:
prometheus_client's metrics are thread-safe), `serve --metrics-port` exposes it on `/metrics`
(`start_http`), and the `metrics` query reads the same registry (`query_body`), so both report the
same values. Exposed names (counters get prometheus_client's `_total` suffix):

    twin_bayes_ingest_messages_total                      messages on the ingest socket
    twin_bayes_ingest_bytes_total                         their bytes (all frames, rejected ones too)
    twin_bayes_ingest_chunks_total{robot_id}              chunks stored (new, not duplicates)
    twin_bayes_ingest_samples_total{robot_id}             samples in them
    twin_bayes_ingest_resend_requests_total{robot_id}     resend requests sent (gaps)
    twin_bayes_acks_total{status}                         acks sent: stored | duplicate
    twin_bayes_rejections_total{socket, code}             error replies: socket ingest | query
    twin_bayes_queries_total{op}                          queries answered or queued
    twin_bayes_published_total{kind}                      PUB messages: posterior, prediction, alert, health
    twin_bayes_publish_lag_seconds{kind}                  hand-over to the I/O thread -> sent on PUB
    twin_bayes_updates_total{robot_id, accepted}          windows through Twin.update
    twin_bayes_update_latency_seconds{robot_id}           Twin.update wall time per window
    twin_bayes_calibration_coverage{robot_id, band}       running coverage of the 50 / 90 % bands
    twin_bayes_alerts_total{robot_id}                     maintenance alerts raised
    twin_bayes_alerts_active{robot_id}                    maintenance alerts active now
    twin_bayes_internal_errors_total                      handler failures the service survived
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "twin_bayes_"
UPDATE_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
LAG_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RECENT = 256  # update latencies kept for the metrics query's median and maximum


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name, doc, labels=()):
            return Counter(PREFIX + name, doc, labels, registry=self.registry)
        self.ingest_messages = counter("ingest_messages", "Messages received on the ingest socket")
        self.ingest_bytes = counter("ingest_bytes", "Bytes of the messages received on the ingest socket")
        self.chunks = counter("ingest_chunks", "Telemetry chunks stored (new, not duplicates)", ["robot_id"])
        self.samples = counter("ingest_samples", "Telemetry samples stored", ["robot_id"])
        self.resends = counter("ingest_resend_requests", "Resend requests sent for gaps", ["robot_id"])
        self.acks = counter("acks", "Acks sent, by status (stored, duplicate)", ["status"])
        self.rejections = counter("rejections", "Messages answered with an error, by socket and code",
                                  ["socket", "code"])
        self.queries = counter("queries", "Queries received, by op", ["op"])
        self.published = counter("published", "Messages published on PUB, by kind", ["kind"])
        self.updates = counter("updates", "Windows given to Twin.update, by robot and outcome",
                               ["robot_id", "accepted"])
        self.alerts = counter("alerts", "Maintenance alerts raised", ["robot_id"])
        self.internal_errors = counter("internal_errors", "Handler failures the service survived")
        self.publish_lag = Histogram(PREFIX + "publish_lag_seconds", "Seconds from a message's hand-over to "
                                     "the I/O thread to its send on PUB", ["kind"], buckets=LAG_BUCKETS,
                                     registry=self.registry)
        self.update_latency = Histogram(PREFIX + "update_latency_seconds", "Twin.update wall time per window",
                                        ["robot_id"], buckets=UPDATE_BUCKETS, registry=self.registry)
        self.coverage = Gauge(PREFIX + "calibration_coverage", "Running coverage of the published "
                              "prediction bands (NaN before any score)", ["robot_id", "band"], registry=self.registry)
        self.alerts_active = Gauge(PREFIX + "alerts_active", "Maintenance alerts active now", ["robot_id"],
                                   registry=self.registry)
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._lock = threading.Lock()
        self._http = None

    # --- recording ----------------------------------------------------------------------
    def observe_message(self, nbytes: int) -> None:
        """One message on the ingest socket, `nbytes` over all its frames."""
        self.ingest_messages.inc()
        self.ingest_bytes.inc(nbytes)

    def observe_chunk(self, robot_id: str, samples: int) -> None:
        """A new chunk stored and acked."""
        self.chunks.labels(robot_id).inc()
        self.samples.labels(robot_id).inc(samples)
        self.acks.labels("stored").inc()

    def observe_duplicate(self) -> None:
        self.acks.labels("duplicate").inc()

    def observe_resend_request(self, robot_id: str) -> None:
        self.resends.labels(robot_id).inc()

    def observe_rejection(self, socket: str, code: str) -> None:
        self.rejections.labels(socket, code).inc()

    def observe_query(self, op: str) -> None:
        self.queries.labels(op).inc()

    def observe_publish(self, kind: str, lag_s: float) -> None:
        self.published.labels(kind).inc()
        self.publish_lag.labels(kind).observe(lag_s)

    def observe_update(self, robot_id: str, latency_s: float, accepted: bool) -> None:
        """One window through Twin.update: its wall time (s) and whether the gate accepted it."""
        self.updates.labels(robot_id, str(bool(accepted)).lower()).inc()
        self.update_latency.labels(robot_id).observe(latency_s)
        with self._lock:
            self._recent.append(latency_s)

    def set_calibration(self, robot_id: str, coverage_50: float, coverage_90: float) -> None:
        """Running coverage (fraction in [0, 1], NaN before any score) of the 50 and 90 % bands."""
        self.coverage.labels(robot_id, "50").set(coverage_50)
        self.coverage.labels(robot_id, "90").set(coverage_90)

    def set_alerts(self, robot_id: str, active: int, raised: int = 0) -> None:
        """`active` maintenance alerts now, `raised` of them new since the last call."""
        self.alerts_active.labels(robot_id).set(active)
        self.alerts.labels(robot_id).inc(raised)

    def observe_internal_error(self) -> None:
        self.internal_errors.inc()

    # --- reading --------------------------------------------------------------------------
    @staticmethod
    def _samples(metric, **match: str):
        """A counter's `_total` samples whose labels match `match`."""
        return [s for family in metric.collect() for s in family.samples
                if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items())]

    def _by(self, metric, label: str, **match: str) -> dict[str, int]:
        """{value of `label`: count} of a labelled counter (other labels summed)."""
        out: dict[str, int] = {}
        for s in self._samples(metric, **match):
            out[s.labels[label]] = out.get(s.labels[label], 0) + int(s.value)
        return out

    def _sum(self, metric, **match: str) -> int:
        return sum(int(s.value) for s in self._samples(metric, **match))

    def query_body(self) -> dict[str, Any]:
        """The `metrics` query's counters (docs/PROTOCOL.md), read from the registry."""
        rejected = self._by(self.rejections, "code", socket="ingest")
        query_rejected = {f"query_rejected:{k}": v
                          for k, v in self._by(self.rejections, "code", socket="query").items()}
        with self._lock:
            recent = np.asarray(self._recent)
        updates = sum(int(s.value) for f in self.update_latency.collect() for s in f.samples
                      if s.name.endswith("_count"))
        return {
            "ingest_messages": self._sum(self.ingest_messages), "ingest_bytes": self._sum(self.ingest_bytes),
            "internal_errors": self._sum(self.internal_errors), **query_rejected,
            "rejected": rejected, "rejected_total": sum(rejected.values()),
            "chunks_stored": self._sum(self.chunks), "samples_stored": self._sum(self.samples),
            "duplicates": self._sum(self.acks, status="duplicate"), "resend_requests": self._sum(self.resends),
            "queries": self._by(self.queries, "op"), "published": self._by(self.published, "kind"),
            "updates": self._by(self.updates, "accepted"),
            "update_latency_s": {"n": updates, "p50": float(np.median(recent)) if len(recent) else None,
                                 "max": float(recent.max()) if len(recent) else None},
        }

    # --- HTTP -----------------------------------------------------------------------------
    def start_http(self, port: int, host: str = "127.0.0.1") -> str:
        """Serve `/metrics` on host:port (0: a free port) in a daemon thread; returns its URL."""
        self._http, _ = start_http_server(port, host, registry=self.registry)
        return f"http://{host}:{self._http.server_port}/metrics"

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
