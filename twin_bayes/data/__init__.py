"""Recorded trajectories: a validated container and readers for .npz archives, bam JSON servo logs and ROS 2 bags."""

from __future__ import annotations

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


def trajectory_format(path: str | Path, format: str | None = None) -> str:
    """The format of a recording: `format` if given ("npz", "bam", "rosbag2"), else "rosbag2" for a folder and by
    the extension otherwise (.npz, .json, .mcap/.db3); DataError for an unknown one."""
    if format is None:
        suffix = Path(path).suffix.lower()
        if Path(path).is_dir():
            return "rosbag2"
        if suffix not in EXTENSIONS:
            raise DataError(f"{path}: unknown trajectory format {suffix or '(no extension)'!r}; expected one of "
                            f"{sorted(EXTENSIONS)}, a rosbag2 folder, or format= one of {sorted(READERS)}")
        format = EXTENSIONS[suffix]
    if format not in READERS:
        raise DataError(f"{path}: unknown trajectory format {format!r}; expected one of {sorted(READERS)}")
    return format


def read_trajectory(path: str | Path, format: str | None = None, **bag) -> Trajectory:
    """Read a Trajectory in `trajectory_format(path, format)`. `bag`: `read_rosbag`'s options (joints, imu_topics,
    wrench_topics, joint_sensors: a bag's joint order and its sensor channels), rosbag2 only (an NPZ carries its
    sensor channels)."""
    format = trajectory_format(path, format)
    bag = {k: v for k, v in bag.items() if v}
    if bag and format != "rosbag2":
        raise DataError(f"{path}: {', '.join(bag)} are read from rosbag2 recordings, not {format}")
    return READERS[format](path, **bag)


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
    "trajectory_format",
    "trajectory_windows",
    "write_npz",
]
