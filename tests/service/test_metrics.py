"""Prometheus /metrics of a real service (loopback sockets, SQLite, the session's arm2 twin), scraped over
HTTP while it runs: its counters match what was sent, the service's health and its `metrics` query."""
from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from twin_bayes.service import protocol
from twin_bayes.service.client import ServiceError, Subscriber, TwinClient
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.worker import WorkerSettings
from twin_bayes.sim.emulator import emulate

RID = "arm-1"
CHUNK = 50
N_CHUNKS = 12   # chunks 0-4 and 5-9 make the two windows of 0.5 s; 10-11 wait for more data
WINDOWS = 2


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def chunks(service_model):
    traj = emulate(service_model.robot, {}, (N_CHUNKS * CHUNK - 1) * service_model.robot.dt, seed=3)
    return [protocol.telemetry(RID, k, *(getattr(traj, f)[k * CHUNK:(k + 1) * CHUNK] for f in ("t", "q", "qd", "ctrl")))
            for k in range(N_CHUNKS)]


def test_metrics_over_http_match_the_service_counts(service_model, chunks, tmp_path):
    settings = ServiceSettings({RID: service_model.cfg}, tmp_path / "svc.db", "tcp://127.0.0.1:*",
                               "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", metrics_port=0,
                               worker=WorkerSettings(checkpoints=tmp_path / "ckpt"))
    svc = TwinService(settings, {RID: service_model}).start()
    sub = Subscriber(svc.endpoints["pub"], ["prediction/"])   # the last message of each applied window
    robot = zmq.Context.instance().socket(zmq.DEALER)
    robot.linger = 0
    robot.connect(svc.endpoints["ingest"])
    try:
        url = svc.endpoints["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        truncated = [chunks[0][0][:7], *chunks[0][1:]]
        sent = [*chunks, chunks[0], chunks[3], truncated, [b"x"], protocol.telemetry("arm-9", 0, *(
            protocol.decode(chunks[0]).arrays[k] for k in ("t", "q", "qd", "ctrl")))]
        for frames in sent:
            robot.send_multipart(frames)
        replies = []
        while len(replies) < len(sent) and robot.poll(10_000):
            replies.append(protocol.decode(robot.recv_multipart()))
        codes = sorted(m.extra.get("code", m.extra.get("status", "")) for m in replies)
        assert codes == sorted(["stored"] * N_CHUNKS + ["duplicate"] * 2 + ["bad_header"] * 2 + ["unknown_robot"])
        with TwinClient(svc.endpoints["query"], timeout_s=30) as client:
            deadline, predictions = time.monotonic() + 1800, 0   # bounds a hang only: compiles take minutes
            while predictions < WINDOWS and time.monotonic() < deadline:
                predictions += len(sub.recv(1.0))
            with pytest.raises(ServiceError, match="unknown op"):
                client.request("launch")
            health = client.health()
            m = scrape(url)
            query = client.metrics()
    finally:
        robot.close()
        sub.close()
        svc.stop()

    def value(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    robot_health = health["robots"][RID]
    assert robot_health["windows"] == WINDOWS
    # ingest: exactly what was sent, and what health and the metrics query count
    assert value("twin_bayes_ingest_messages_total") == len(sent) == query["ingest_messages"]
    assert value("twin_bayes_ingest_bytes_total") == sum(len(f) for frames in sent for f in frames) \
        == query["ingest_bytes"]
    assert value("twin_bayes_ingest_chunks_total", robot_id=RID) == N_CHUNKS == robot_health["chunks"] \
        == query["chunks_stored"]
    assert value("twin_bayes_ingest_samples_total", robot_id=RID) == N_CHUNKS * CHUNK == robot_health["samples"] \
        == query["samples_stored"]
    assert value("twin_bayes_acks_total", status="stored") == N_CHUNKS
    assert value("twin_bayes_acks_total", status="duplicate") == 2 == robot_health["duplicates"] == query["duplicates"]
    rejected = {"bad_header": 2, "unknown_robot": 1}
    assert query["rejected"] == rejected
    for code, n in rejected.items():
        assert value("twin_bayes_rejections_total", socket="ingest", code=code) == n
    assert value("twin_bayes_rejections_total", socket="query", code="bad_query") == 1 \
        == query["query_rejected:bad_query"]
    # inference: one update per window, the calibration health reports, the posteriors published
    updates = sum(value("twin_bayes_updates_total", robot_id=RID, accepted=a) for a in ("true", "false"))
    assert updates == WINDOWS == query["update_latency_s"]["n"]
    assert value("twin_bayes_updates_total", robot_id=RID, accepted="true") == query["updates"].get("true", 0)
    assert value("twin_bayes_update_latency_seconds_count", robot_id=RID) == WINDOWS
    latency_sum = value("twin_bayes_update_latency_seconds_sum", robot_id=RID)
    assert query["update_latency_s"]["max"] <= latency_sum <= WINDOWS * query["update_latency_s"]["max"]
    calibration = robot_health["calibration"]
    assert calibration["n_batches"] == 1
    for band in ("50", "90"):
        assert np.isclose(value("twin_bayes_calibration_coverage", robot_id=RID, band=band),
                          calibration[f"coverage_{band}"])
    assert value("twin_bayes_alerts_active", robot_id=RID) == len(robot_health["alerts"])
    for kind in ("posterior", "prediction"):
        assert value("twin_bayes_published_total", kind=kind) == WINDOWS == query["published"][kind]
        assert value("twin_bayes_publish_lag_seconds_count", kind=kind) == WINDOWS
    assert value("twin_bayes_published_total", kind="health") >= 1
    assert value("twin_bayes_queries_total", op="health") == 1 == query["queries"]["health"]
    assert value("twin_bayes_queries_total", op="launch") == 1 and query["queries"]["metrics"] == 1   # itself
