"""The one window cutter: telemetry samples -> twin windows, for `fit`, `fit --engine stream`, the service,
replay and the experiments alike.

Samples fall into runs: evenly spaced (|Δt − dt| ≤ dt/2) with one group (a recording, or one set of
known settings). Within a run, windows hold `n_max` samples and each starts on the previous one's
last sample, so every transition between samples enters exactly one window. A run's remainder,
shorter than `n_max`, becomes a last window when the run is closed (another run follows, or the
data are `final`); it is usable when it holds at least `min_n` samples (one segment). The remainder
of the last run, when the data are not final, waits for more samples: it is where the next call
starts. The cut depends only on the samples, never on how they arrived in chunks, so a log
streamed through the service and the same log cut offline give the same windows.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Bounds(NamedTuple):
    """Window rows [start, stop) of the samples given; usable: at least min_n rows."""

    start: int
    stop: int
    usable: bool


def run_starts(t: np.ndarray, dt: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Row indices where a run begins (0 first): a time jump or a change of group."""
    t = np.asarray(t, np.float64)
    breaks = np.abs(np.diff(t) - dt) > 0.5 * dt
    if groups is not None:
        breaks |= np.asarray(groups)[1:] != np.asarray(groups)[:-1]
    return np.concatenate([[0], np.flatnonzero(breaks) + 1]).astype(np.int64)


def cut_windows(t: np.ndarray, n_max: int, min_n: int, dt: float, groups: np.ndarray | None = None,
                final: bool = True) -> tuple[list[Bounds], int]:
    """Windows of the samples at times t (n,) s, and the row where the next cut starts.

    groups (n,): samples of different groups never share a window (e.g. recording index or
    settings). final: the data end here (the last run's remainder is a window too). The returned
    row is len(t) when everything was cut, else the first row of what waits for more data.
    """
    n = len(t)
    if n_max < 2:
        raise ValueError(f"windows need at least 2 samples, got n_max = {n_max}")
    starts = [int(i) for i in run_starts(t, dt, groups)] if n else []
    out: list[Bounds] = []
    for k, a in enumerate(starts):
        b = starts[k + 1] if k + 1 < len(starts) else n
        closed = final or k + 1 < len(starts)
        s = a
        while s + n_max <= b:
            out.append(Bounds(s, s + n_max, True))
            s += n_max - 1
        if not closed:
            return out, s
        if b - s >= 2:   # a remainder with at least one new transition
            out.append(Bounds(s, b, b - s >= min_n))
    return out, n


def trajectory_windows(trajectories, n_max: int, min_n: int, dt: float, final: bool = True) -> list[dict]:
    """Usable windows of recordings (`Trajectory`s, each its own group) as dicts of q (n, nq), qd (n, nv),
    ctrl (n, nu), t (n,), settings and sensors {name: (n, dim)}; `final` as in `cut_windows`."""
    if not trajectories:
        return []
    t = np.concatenate([tr.t for tr in trajectories])
    groups = np.concatenate([np.full(len(tr), i) for i, tr in enumerate(trajectories)])
    first = np.cumsum([0] + [len(tr) for tr in trajectories])
    bounds, _ = cut_windows(t, n_max, min_n, dt, groups, final)
    out = []
    for b in bounds:
        if not b.usable:
            continue
        i = int(groups[b.start])
        tr, lo, hi = trajectories[i], b.start - first[i], b.stop - first[i]
        out.append({"t": tr.t[lo:hi], "q": tr.q[lo:hi], "qd": tr.qd[lo:hi], "ctrl": tr.ctrl[lo:hi],
                    "settings": dict(tr.settings), "sensors": {k: v[lo:hi] for k, v in tr.sensors.items()}})
    return out


def consecutive_windows(q, qd, ctrl, n_max: int) -> list[dict[str, np.ndarray]]:
    """Whole windows of n_max evenly spaced samples (one run; the remainder waits, as in a stream)."""
    bounds, _ = cut_windows(np.arange(len(q), dtype=np.float64), n_max, n_max, 1.0, final=False)
    return [{"q": np.asarray(q[b.start:b.stop]), "qd": np.asarray(qd[b.start:b.stop]),
             "ctrl": np.asarray(ctrl[b.start:b.stop])} for b in bounds]
