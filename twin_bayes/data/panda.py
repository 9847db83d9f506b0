"""The Franka Emika Panda identification log: located beside the repository, resampled to the twin's step.

The log (``../shared/data/franka_panda/exciting_traj_first14s.npz``, the project's NPZ layout) is
stamped as logged: about 1 kHz, steps from 0.7 ms to 8.8 ms (dropped and late samples). The twin
steps at a fixed 1 ms, the rate of the robot's torque loop, so the log is resampled onto that
grid: positions by cubic Hermite interpolation with the logged velocities as slopes (exact for
cubic motion; the velocities are the robot's own estimate), velocities and measured torques
linearly. docs/PANDA.md gives the measured interpolation errors and why this and not integration
at the logged times.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from twin_bayes.data.npz import read_npz
from twin_bayes.data.shared import shared_data_dir
from twin_bayes.data.trajectory import DataError, Trajectory

LOG_NAME = "exciting_traj_first14s.npz"


def panda_dir() -> Path | None:
    """The shared ``franka_panda`` folder, or None where it is absent (`data.shared.shared_data_dir`)."""
    return shared_data_dir("franka_panda")


def panda_log() -> Path | None:
    """The excitation log's path, or None where the data folder or the file is absent."""
    folder = panda_dir()
    return folder / LOG_NAME if folder is not None and (folder / LOG_NAME).is_file() else None


def hermite(t: np.ndarray, q: np.ndarray, qd: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation of q (T, n) with slopes qd (T, n) at times t (T,) onto grid (G,)."""
    k = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 2)
    h = t[k + 1] - t[k]
    s = ((grid - t[k]) / h)[:, None]
    h = h[:, None]
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * q[k] + h10 * h * qd[k] + h01 * q[k + 1] + h11 * h * qd[k + 1]


def linear(t: np.ndarray, x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of x (T, n) at times t (T,) onto grid (G,)."""
    return np.stack([np.interp(grid, t, x[:, j]) for j in range(x.shape[1])], axis=1)


def resample(traj: Trajectory, dt: float) -> Trajectory:
    """The trajectory on the uniform grid t0, t0 + dt, ... ≤ t_end (q Hermite, qd and ctrl linear).

    `meta["resampled_dt_s"]` records the step; `meta["max_gap_s"]` the longest logged step.
    """
    if dt <= 0:
        raise DataError(f"{traj.source}: resampling step must be positive, got {dt}")
    grid = traj.t[0] + dt * np.arange(int(np.floor((traj.t[-1] - traj.t[0]) / dt + 1e-9)) + 1)
    meta = {**traj.meta, "resampled_dt_s": repr(dt), "max_gap_s": repr(float(np.max(np.diff(traj.t))))}
    return replace(traj, t=grid, q=hermite(traj.t, traj.q, traj.qd, grid), qd=linear(traj.t, traj.qd, grid),
                   ctrl=linear(traj.t, traj.ctrl, grid), meta=meta)


def between(traj: Trajectory, start_s: float, stop_s: float) -> Trajectory:
    """Rows with start_s ≤ t − t0 ≤ stop_s (s from the recording's first sample)."""
    rel = traj.t - traj.t[0]
    rows = (rel >= start_s - 1e-9) & (rel <= stop_s + 1e-9)
    if rows.sum() < 2:
        raise DataError(f"{traj.source}: fewer than 2 samples between {start_s} s and {stop_s} s")
    return replace(traj, t=traj.t[rows], q=traj.q[rows], qd=traj.qd[rows], ctrl=traj.ctrl[rows])


def read_panda(path: str | Path, dt: float = 1e-3) -> Trajectory:
    """The Panda log at `path` (project NPZ layout, 7 joints) resampled to the step dt (s)."""
    traj = read_npz(path)
    if traj.q.shape[1] != 7 or traj.ctrl.shape[1] != 7:
        raise DataError(f"{path}: a Panda log has 7 joints and 7 torques, got q {traj.q.shape}, "
                        f"ctrl {traj.ctrl.shape}")
    return resample(traj, dt)
