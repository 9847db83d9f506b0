"""Replay recorded logs (npz, bam JSON, rosbag2) to the service as telemetry chunks, in real time or faster.

Files are streamed one after another under one robot id. Each file is one recording: its chunks
carry its settings (e.g. servo_kp, servo_vin of a bam log) in the telemetry body, chunks never span
two files, and its times are shifted to start `gap_s` after the previous file's last sample, so
the stream's t keeps increasing and a jump in t marks where a new recording starts.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from twin_bayes.data import Trajectory
from twin_bayes.service.robot_link import RobotLink


def chunks(traj: Trajectory, chunk_samples: int, t_offset: float = 0.0) -> Iterator[dict]:
    """Consecutive chunks of at most `chunk_samples` rows: t (n,) s shifted by t_offset, q, qd, ctrl,
    and the recording's sensor readings {name: (n, dim)}."""
    for a in range(0, len(traj), chunk_samples):
        b = min(a + chunk_samples, len(traj))
        yield {"t": traj.t[a:b] + t_offset, "q": traj.q[a:b], "qd": traj.qd[a:b], "ctrl": traj.ctrl[a:b],
               "sensors": {k: v[a:b] for k, v in traj.sensors.items()}}


def replay(trajectories: Sequence[Trajectory], link: RobotLink, chunk_samples: int, speed: float = 1.0,
           gap_s: float = 1.0, ack_timeout_s: float = 30.0) -> int:
    """Send every recording in chunks; returns the number of chunks sent.

    speed: recorded seconds per wall-clock second (1 real time, 10 ten times faster, 0 as fast as
    acks allow). A chunk leaves once the wall clock has reached its last sample. Waits up to
    `ack_timeout_s` for the final acks (LinkTimeout if they do not come).
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    start, sent, t_next = time.monotonic(), 0, 0.0
    for traj in trajectories:
        offset = t_next - float(traj.t[0])
        for arrays in chunks(traj, chunk_samples, offset):
            if speed > 0:
                link.wait_until(start + float(arrays["t"][-1]) / speed)
            link.send(**arrays, settings=traj.settings, timeout_s=ack_timeout_s)
            link.poll()
            sent += 1
        t_next = float(traj.t[-1]) + offset + gap_s
    link.drain(ack_timeout_s)
    return sent
