"""Recorded trajectories: a validated container and readers for .npz archives, bam JSON servo logs and ROS 2 bags."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from twin_bayes.data.bam import read_bam
from twin_bayes.data.npz import read_npz, write_npz
from twin_bayes.data.rosbag import parse_sensor_topics, read_rosbag
from twin_bayes.data.shared import bam_logs, bam_xl330_dir, log_kp
from twin_bayes.data.trajectory import DataError, Trajectory
from twin_bayes.data.windows import Bounds, consecutive_windows, cut_windows, trajectory_windows

#: Format name -> reader; file extensions map to formats through EXTENSIONS.
READERS = {"npz": read_npz, "bam": read_bam, "rosbag2": read_rosbag}
EXTENSIONS = {".npz": "npz", ".json": "bam", ".mcap": "rosbag2", ".db3": "rosbag2"}


def read_trajectory(path: str | Path, format: str | None = None,
                    imu_topics: Mapping[str, Mapping[str, str]] | None = None,
                    wrench_topics: Mapping[str, Mapping[str, str]] | None = None) -> Trajectory:
    """Read a Trajectory; format is "npz", "bam" or "rosbag2", else inferred from the extension
    (.npz, .json, .mcap/.db3; a rosbag2 folder needs format="rosbag2"). imu_topics, wrench_topics: a bag's
    Imu and WrenchStamped topics as sensor channels (`read_rosbag`); rosbag2 only (an NPZ carries its sensor
    channels)."""
    if format is None:
        suffix = Path(path).suffix.lower()
        if suffix not in EXTENSIONS:
            raise DataError(f"{path}: unknown trajectory format {suffix or '(no extension)'!r}; expected one of "
                            f"{sorted(EXTENSIONS)} or format= one of {sorted(READERS)}")
        format = EXTENSIONS[suffix]
    if format not in READERS:
        raise DataError(f"{path}: unknown trajectory format {format!r}; expected one of {sorted(READERS)}")
    if imu_topics or wrench_topics:
        if format != "rosbag2":
            raise DataError(f"{path}: Imu and WrenchStamped topics are read from rosbag2 recordings, not {format}")
        return read_rosbag(path, imu_topics=imu_topics, wrench_topics=wrench_topics)
    return READERS[format](path)


__all__ = [
    "Bounds",
    "DataError",
    "Trajectory",
    "bam_logs",
    "consecutive_windows",
    "cut_windows",
    "bam_xl330_dir",
    "log_kp",
    "read_bam",
    "read_npz",
    "parse_sensor_topics",
    "read_rosbag",
    "read_trajectory",
    "trajectory_windows",
    "write_npz",
]
