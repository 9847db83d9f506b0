"""Robot-side benchmark: emulator speed against real time, and the telemetry link's throughput and ack latency.

* emulator: `service.emulate.EmulatedRobot.chunk` (native MuJoCo stepped chunk by chunk, sensor
  noise, excitation) in samples/s and as a real-time factor (samples/s x dt; > 1 keeps up);
* link: `service.robot_link.RobotLink` to a ROUTER on loopback that acks every chunk at once:
  streamed chunks/s and samples/s (up to 64 unacked), and the ack round trip of one chunk at a
  time (p50, p99).

    .venv/bin/python benchmarks/robots.py                  # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/robots.py --quick          # smoke run

Figures are medians over --repeats timed runs after one untimed warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from twin_bayes import _jax  # noqa: F401  (float64)
from common import command, machine
from twin_bayes.service import protocol
from twin_bayes.service.emulate import EmulatedRobot
from twin_bayes.service.robot_link import RobotLink
from twin_bayes.sim import load_robot


def emulator(name: str, seconds: float, repeats: int) -> dict:
    robot = load_robot(name)
    chunk = round(0.1 / robot.dt)
    rates = []
    for r in range(repeats + 1):
        emu = EmulatedRobot(robot, robot.nominal(), seed=r)
        start = time.perf_counter()
        while emu.step_index < round(seconds / robot.dt):
            emu.chunk(chunk)
        rates.append(emu.step_index / (time.perf_counter() - start))
    median = float(np.median(rates[1:]))
    return {"chunk_samples": chunk, "samples_per_s": median, "real_time_factor": median * robot.dt}


def _ack_all(sock: zmq.Socket, stop: threading.Event) -> None:
    while not stop.is_set():
        if sock.poll(20):
            ident, *frames = sock.recv_multipart()
            msg = protocol.decode(frames)
            sock.send_multipart([ident, *protocol.ack(msg.robot_id, msg.seq)])


def link(chunks: int, samples: int, repeats: int) -> dict:
    router = zmq.Context.instance().socket(zmq.ROUTER)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    stop = threading.Event()
    thread = threading.Thread(target=_ack_all, args=(router, stop), daemon=True)
    thread.start()
    t = np.arange(samples) * 0.002
    data = {"t": t, "q": np.zeros((samples, 2)), "qd": np.zeros((samples, 2)), "ctrl": np.zeros((samples, 2))}
    rates, rtts = [], []
    try:
        for r in range(repeats + 1):
            with RobotLink(endpoint, f"bench-{r}") as lk:
                start = time.perf_counter()
                for _ in range(chunks):
                    lk.send(**data)
                    lk.poll()
                assert lk.flush(60)
                rates.append(chunks / (time.perf_counter() - start))
                one = []
                for _ in range(chunks // 4):
                    start = time.perf_counter()
                    lk.send(**data)
                    assert lk.flush(10)
                    one.append(time.perf_counter() - start)
                rtts.append(one)
    finally:
        stop.set()
        thread.join()
        router.close(linger=0)
    lat = np.concatenate(rtts[1:])
    rate = float(np.median(rates[1:]))
    return {"samples_per_chunk": samples, "chunks_per_s": rate, "samples_per_s": rate * samples,
            "ack_rtt_ms_p50": float(np.percentile(lat, 50) * 1e3),
            "ack_rtt_ms_p99": float(np.percentile(lat, 99) * 1e3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", nargs="+", default=["arm2", "servo_pendulum"])
    p.add_argument("--seconds", type=float, default=2.0, help="robot time emulated per run")
    p.add_argument("--chunks", type=int, default=400, help="chunks streamed per link run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/robots.json")
    a = p.parse_args()
    if a.quick:
        a.seconds, a.chunks, a.repeats = 0.2, 40, 1
    load_before = os.getloadavg()[0]
    out = {
        "command": command(),
        "machine": machine(libzmq=zmq.zmq_version()),
        "emulator": {name: emulator(name, a.seconds, a.repeats) for name in a.robots},
        "link": {str(n): link(a.chunks, n, a.repeats) for n in (10, 50)},
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    for name, e in out["emulator"].items():
        print(f"emulator {name}: {e['samples_per_s']:.0f} samples/s = {e['real_time_factor']:.1f}x real time")
    for n, x in out["link"].items():
        print(f"link, {n} samples/chunk: {x['chunks_per_s']:.0f} chunks/s, ack round trip "
              f"p50 {x['ack_rtt_ms_p50']:.2f} ms, p99 {x['ack_rtt_ms_p99']:.2f} ms")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
