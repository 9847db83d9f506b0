"""Twin service under load: ingest throughput, ack latency, update-to-publish latency, memory.

`twin-bayes serve` runs as a subprocess with 16 arm2 twins (robot ids arm-00 ..
arm-15, one shared compiled model, 1 s windows of 500 Hz samples, a fresh
SQLite store with synchronous=FULL); this process plays the robots (one DEALER
each, chunks of 167 samples = 1/3 window, every chunk kept until acked) and a
PUB subscriber. Phases, after a warm-up that sends two windows of one robot
and waits for their posteriors (the SMC kernels compile; timed apart):

* realtime_1 (25% of --seconds): one robot at its own rate (3 chunks/s, 501 samples/s);
* realtime_16 (45%): 16 robots at their own rate;
* saturate_1 (15%): one robot sending as fast as acks come back (8 chunks in flight);
* saturate_16 (15%): 16 robots, 8 in flight each.

Per phase: chunks/s and samples/s acked, ack latency p50/p99 (send -> ack,
the chunk fsynced in SQLite in between), update-to-publish latency p50/p99
(ack of the chunk that completes a window -> its posterior received on the
PUB socket), and the number of posteriors published. The server's RSS is
sampled every second from the warm-up on (after_warmup, end, max over the
measured phases, timeline).

    .venv/bin/python benchmarks/service.py                 # 10 minutes
    .venv/bin/python benchmarks/service.py --seconds 60    # short run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from common import REPO, command, machine

from twin_bayes.config import load_config  # noqa: E402
from twin_bayes.service import protocol  # noqa: E402
from twin_bayes.sim.emulator import emulate  # noqa: E402

CHUNK = 167
IN_FLIGHT = 8
ROBOTS = 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(x: list[float]) -> dict:
    a = np.asarray(x)
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "p50_ms": 1e3 * float(np.median(a)), "p99_ms": 1e3 * float(np.percentile(a, 99)),
            "max_ms": 1e3 * float(a.max())}


class Fleet:
    """The robots and a subscriber, all in this thread."""

    def __init__(self, endpoints: dict, traj, dt: float):
        self.ctx = zmq.Context.instance()
        self.traj, self.dt = traj, dt
        self.socks = []
        for _ in range(ROBOTS):
            s = self.ctx.socket(zmq.DEALER)
            s.linger = 0
            s.connect(endpoints["ingest"])
            self.socks.append(s)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"posterior/")
        self.sub.connect(endpoints["pub"])
        self.poller = zmq.Poller()
        for s in (*self.socks, self.sub):
            self.poller.register(s, zmq.POLLIN)
        self.next_seq = [0] * ROBOTS
        self.sent: list[dict[int, float]] = [{} for _ in range(ROBOTS)]
        self.acked_at: list[dict[int, float]] = [{} for _ in range(ROBOTS)]
        self.posteriors = 0
        self.samples = 0

    def chunk(self, r: int, seq: int) -> list[bytes]:
        n, total = CHUNK, len(self.traj.t)
        rows = (seq * n + np.arange(n)) % total
        t = (seq * n + np.arange(n)) * self.dt
        return protocol.telemetry(f"arm-{r:02d}", seq, t, self.traj.q[rows], self.traj.qd[rows], self.traj.ctrl[rows])

    def run(self, seconds: float, robots: int, realtime: bool, acks: list, pubs: list,
            max_chunks: int | None = None) -> int:
        """Stream for `seconds` (each robot at most `max_chunks` chunks in all); append ack and
        update-to-publish latencies (s); returns chunks acked."""
        start = time.monotonic()
        base = list(self.next_seq)
        acked0 = sum(len(a) for a in self.acked_at)
        while (now := time.monotonic()) < start + seconds:
            for r in range(robots):
                while len(self.sent[r]) < IN_FLIGHT and self.next_seq[r] < (max_chunks or 2**62) and (
                        not realtime or (self.next_seq[r] - base[r]) * CHUNK * self.dt <= now - start):
                    seq = self.next_seq[r]
                    self.socks[r].send_multipart(self.chunk(r, seq))
                    self.sent[r][seq] = time.monotonic()
                    self.next_seq[r] += 1
            for sock, _ in self.poller.poll(timeout=5):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._receive(sock, frames, acks, pubs)
        return sum(len(a) for a in self.acked_at) - acked0

    def _receive(self, sock, frames, acks: list, pubs: list) -> None:
        now = time.monotonic()
        if sock is self.sub:
            msg = protocol.decode(frames[1:])
            r = int(msg.robot_id.split("-")[1])
            self.posteriors += 1
            t = self.acked_at[r].get(msg.extra["applied_seq"])
            if t is not None:
                pubs.append(now - t)
            return
        msg = protocol.decode(frames)
        r = int(msg.robot_id.split("-")[1])
        if msg.type == "ack" and msg.seq in self.sent[r]:
            acks.append(now - self.sent[r].pop(msg.seq))
            self.acked_at[r][msg.seq] = now
            self.samples += CHUNK


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="measured run length (after warm-up)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "service.json"))
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]  # other processes on the CPUs make every figure pessimistic
    cfg = load_config("arm2")
    robot = cfg.load_robot()
    traj = emulate(robot, {}, 30.0, seed=5)
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        cmd = [sys.executable, "-m", "twin_bayes.cli", "serve", "--store", f"{tmp}/store.db",
               "--checkpoints", f"{tmp}/ckpt", "--ingest", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
               "--query", "tcp://127.0.0.1:*"]
        for r in range(ROBOTS):
            cmd += ["--config", f"arm-{r:02d}=arm2"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        endpoints = json.loads(next(line for line in server.stdout if line.startswith("{")))
        rss = []
        try:
            fleet = Fleet(endpoints, traj, robot.dt)
            t0 = time.monotonic()
            while fleet.posteriors < 2:      # two windows: compile the SMC kernels, leave no backlog
                fleet.run(1.0, 1, False, [], [], max_chunks=6)
                rss.append([time.monotonic() - t0, rss_mb(server.pid)])
            warmup_s = time.monotonic() - t0
            measured = len(rss)
            phases = {"realtime_1": (0.25, 1, True), "realtime_16": (0.45, ROBOTS, True),
                      "saturate_1": (0.15, 1, False), "saturate_16": (0.15, ROBOTS, False)}
            results = {}
            for name, (share, robots, realtime) in phases.items():
                seconds = share * args.seconds
                acks, pubs, acked, posteriors0 = [], [], 0, fleet.posteriors
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:   # 1 s slices, sampling RSS between
                    acked += fleet.run(min(1.0, left), robots, realtime, acks, pubs)
                    rss.append([time.monotonic() - t0, rss_mb(server.pid)])
                results[name] = {"seconds": seconds, "robots": robots, "realtime": realtime,
                                 "chunks_per_s": acked / seconds, "samples_per_s": acked * CHUNK / seconds,
                                 "ack_latency": pct(acks), "update_to_publish": pct(pubs),
                                 "posteriors": fleet.posteriors - posteriors0}
                print(name, json.dumps(results[name]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=600)
    r = np.asarray(rss)
    out = {
        "benchmark": "service", "command": command(),
        "note": (f"short run of {args.seconds:.0f} s (the default is 600 s)" if args.seconds < 600
                 else "full 10-minute run"),
        "machine": machine(),
        "setup": {"robots": ROBOTS, "config": "arm2 (1 s windows, 500 Hz, 32 particles)", "chunk_samples": CHUNK,
                  "in_flight": IN_FLIGHT, "store": "SQLite WAL, synchronous=FULL"},
        "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "warmup_first_posterior_s": warmup_s,
        "phases": results,
        "server_rss_mb": {"after_warmup": float(r[measured, 1]), "end": float(r[-1, 1]),
                          "max_measured": float(r[measured:, 1].max()), "timeline_t0": "warm-up start",
                          "timeline": [[round(a, 1), round(b, 1)] for a, b in r[:: max(1, len(r) // 60)]]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "server_rss_mb"}, indent=2))
    m = out["server_rss_mb"]
    print(f"server RSS after warm-up {m['after_warmup']:.0f} MB, end {m['end']:.0f} MB, max {m['max_measured']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
