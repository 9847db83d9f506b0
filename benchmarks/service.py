"""Twin service under load: robots streaming in real time, 1 to 64 of them, to one `twin-bayes serve`.

For each robot count (--robots, default 1,4,16,64) a fresh `twin-bayes serve` runs as a subprocess
with that many arm2 twins (robot ids arm-00 .., one shared model, 1 s windows of 500 Hz samples, a
fresh SQLite store with synchronous=FULL, checkpoints on); this process plays the robots (one DEALER
each, chunks of 167 samples = 1/3 s, every chunk kept until acked, each robot at its own real-time
rate) and a PUB subscriber. The compiled executables come from the persistent cache, filled first by
`twin-bayes warmup --config arm2 --robots 1,4,16,64` (its wall time is reported: the cold compile;
on CPU the service batches 4 robots per call on two threads, so buckets 1 and 4 compile); each
service then preloads them (`serve --preload`, the default) before its first window; the robots start
streaming once its health reports the preload done (the time from launch to then is `service_ready_s`),
as robots of an installed service would.

Per robot count, once settled (the backlog of the first windows, which start from the prior and
temper, worked off: at most one window per robot for 5 s; at most --settle seconds; the time it
took is reported), over --seconds of steady state: ack latency p50/p99 (send
-> ack, the chunk fsynced in SQLite in between), update-to-publish latency p50/p99 (ack of the chunk
that completes a window -> its posterior received on the PUB socket), the backlog (windows whose data
were acked but whose posterior is not yet published) sampled every second, its slope, and whether
the count was kept in real time: every window's posterior published within one window duration
(99th percentile of update-to-publish below 1 s) and no growing backlog. The server's RSS is sampled.

    .venv/bin/python benchmarks/service.py                                  # about 25 minutes
    .venv/bin/python benchmarks/service.py --robots 1,16 --seconds 60      # short run
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
from twin_bayes.service.client import TwinClient  # noqa: E402
from twin_bayes.service import protocol  # noqa: E402
from twin_bayes.sim.emulator import emulate  # noqa: E402

CHUNK = 167
IN_FLIGHT = 8
WINDOW_S = 1.0


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

    def __init__(self, endpoints: dict, traj, dt: float, robots: int):
        self.ctx = zmq.Context.instance()
        self.traj, self.dt = traj, dt
        self.socks = []
        for _ in range(robots):
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
        self.next_seq = [0] * robots
        self.sent: list[dict[int, float]] = [{} for _ in range(robots)]
        self.acked_at: list[dict[int, float]] = [{} for _ in range(robots)]
        self.acked_samples = [0] * robots
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
            self.acked_samples[r] = max(self.acked_samples[r], (msg.seq + 1) * CHUNK)

    def backlog(self, window: int) -> int:
        """Windows whose samples were acked (windows of `window` samples sharing their boundary) minus
        posteriors received."""
        return sum(max(0, (n - 1) // (window - 1)) for n in self.acked_samples) - self.posteriors


def warmup(counts: list[int]) -> float:
    """`twin-bayes warmup` for the robot counts (batched as the service batches them); wall time (s)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "twin_bayes.cli", "warmup", "--config", "arm2", "--robots",
                    ",".join(map(str, counts))], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def measure(robots: int, seconds: float, settle: float, traj, dt: float, window: int) -> dict:
    """One service with `robots` twins, all streaming in real time: the figures of the module docstring."""
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        cmd = [sys.executable, "-m", "twin_bayes.cli", "serve", "--store", f"{tmp}/store.db",
               "--checkpoints", f"{tmp}/ckpt", "--ingest", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
               "--query", "tcp://127.0.0.1:*"]
        for r in range(robots):
            cmd += ["--config", f"arm-{r:02d}=arm2"]
        started = time.monotonic()
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        endpoints = json.loads(next(line for line in server.stdout if line.startswith("{")))
        with TwinClient(endpoints["query"], timeout_s=30) as client:
            while client.health().get("preload", {}).get("running", True):
                time.sleep(0.5)
        ready_s = time.monotonic() - started
        try:
            fleet = Fleet(endpoints, traj, dt, robots)
            settling, quiet = time.monotonic(), 0     # the first windows (from the prior) temper, for long
            while time.monotonic() - settling < settle and quiet < 5:
                fleet.run(1.0, robots, True, [], [])
                quiet = quiet + 1 if fleet.backlog(window) <= robots else 0
            settled_s = time.monotonic() - settling
            acks, pubs, backlog, rss = [], [], [], []
            start, posteriors0 = time.monotonic(), fleet.posteriors
            while (left := start + seconds - time.monotonic()) > 0:
                fleet.run(min(1.0, left), robots, True, acks, pubs)
                backlog.append([time.monotonic() - start, fleet.backlog(window)])
                rss.append(rss_mb(server.pid))
        finally:
            server.terminate()
            server.wait(timeout=600)
    b = np.asarray(backlog, dtype=np.float64)
    slope = float(np.polyfit(b[:, 0], b[:, 1], 1)[0]) if len(b) > 2 else float("nan")
    p99 = float(np.percentile(pubs, 99)) if pubs else float("inf")
    return {"robots": robots, "seconds": seconds, "settle_s": settled_s, "settled": quiet >= 5,
            "service_ready_s": ready_s,
            "ack_latency": pct(acks), "update_to_publish": pct(pubs),
            "posteriors": fleet.posteriors - posteriors0, "windows_per_s": (fleet.posteriors - posteriors0) / seconds,
            "backlog_windows": {"mean": float(b[:, 1].mean()), "max": float(b[:, 1].max()),
                                "end": float(b[-1, 1]), "slope_per_s": slope},
            "kept_in_real_time": bool(p99 <= WINDOW_S and slope < 0.05 * robots / WINDOW_S),
            "server_rss_mb": {"mean": float(np.mean(rss)), "max": float(np.max(rss))}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--robots", default="1,4,16,64", help="robot counts, one service each")
    p.add_argument("--seconds", type=float, default=300.0, help="steady-state measurement per robot count (s)")
    p.add_argument("--settle", type=float, default=300.0,
                   help="longest streaming before measuring (s): until the backlog has been at most one window "
                        "per robot for 5 s")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "service.json"))
    args = p.parse_args(argv)
    counts = sorted({int(x) for x in args.robots.split(",")})
    load_start = os.getloadavg()[0]  # other processes on the CPUs make every figure pessimistic
    cfg = load_config("arm2")
    robot = cfg.load_robot()
    window = int(round(cfg.inference.window_s / robot.dt)) + 1
    traj = emulate(robot, {}, args.settle + args.seconds + 30.0, seed=5)   # never wraps around while measured
    warmup_s = warmup(counts)
    print(f"warmup (compiling every batch size into the persistent cache): {warmup_s:.0f} s", flush=True)
    results = []
    for n in counts:      # the JSON is rewritten after each count: a stopped run leaves what it measured
        results.append(measure(n, args.seconds, args.settle, traj, robot.dt, window))
        print(json.dumps(results[-1]), flush=True)
        kept = [r["robots"] for r in results if r["kept_in_real_time"]]
        out = {
            "benchmark": "service", "command": command(), "machine": machine(),
            "setup": {"config": "arm2 (1 s windows, 500 Hz, 32 particles)", "chunk_samples": CHUNK,
                      "in_flight": IN_FLIGHT, "store": "SQLite WAL, synchronous=FULL",
                      "checkpoints": "every 10 s (serve default) and on stop",
                      "real_time": "p99 update-to-publish <= one window (1 s) and no growing backlog"},
            "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
            "warmup_compile_s": warmup_s,
            "robot_counts": results,
            "complete": len(results) == len(counts),
            "largest_kept_in_real_time": max(kept) if kept else 0,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "robot_counts"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
