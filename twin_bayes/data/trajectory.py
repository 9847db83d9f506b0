"""A recorded trajectory: measured joint states and the commands sent, validated on creation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

_MAX_ROWS_SHOWN = 10


class DataError(ValueError):
    """A recording is malformed; the message names the source and the problem."""


def _rows(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:_MAX_ROWS_SHOWN])
    more = f", ... ({idx.size} rows)" if idx.size > _MAX_ROWS_SHOWN else ""
    return f"[{shown}{more}]"


def _array(source: str, name: str, value: object, ndim: int) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: {name} is not numeric ({exc})") from None
    if arr.ndim != ndim:
        raise DataError(f"{source}: {name} must be {ndim}-D, got shape {arr.shape}")
    for label, bad in (("NaN", np.isnan(arr)), ("inf", np.isinf(arr))):
        rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1)) if arr.size else np.array([])
        if rows.size:
            raise DataError(f"{source}: {name} has {label} at rows {_rows(rows)}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Trajectory:
    """T samples of one robot's recorded motion.

    t: (T,) float64 time stamps in seconds, strictly increasing.
    q: (T, nq) measured joint positions (rad or m).
    qd: (T, nv) measured joint velocities (rad/s or m/s).
    ctrl: (T, nu) commands sent at each step; entry k is held during step k.
    settings: known (not estimated) per-recording constants, e.g. servo_kp, servo_vin, mass, length.
    source: where the data came from (a file path), used in error messages.
    meta: non-numeric descriptors, e.g. the excitation trajectory's name.
    sensors: {MJCF sensor name: (T, dim) readings}, row k read at state k under command k
        (docs/SENSORS.md).

    Arrays are stored as read-only float64 copies. Invalid data raises DataError.
    """

    t: np.ndarray
    q: np.ndarray
    qd: np.ndarray
    ctrl: np.ndarray
    settings: dict[str, float] = field(default_factory=dict)
    source: str = "<memory>"
    meta: dict[str, str] = field(default_factory=dict)
    sensors: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = self.source
        t = _array(src, "t", self.t, 1)
        arrays = {name: _array(src, name, getattr(self, name), 2) for name in ("q", "qd", "ctrl")}
        sensors = {str(k): _array(src, f"sensor {k}", v, 2) for k, v in self.sensors.items()}
        for name, arr in (arrays | {f"sensor {k}": v for k, v in sensors.items()}).items():
            if arr.shape[0] != t.shape[0]:
                raise DataError(f"{src}: {name} has {arr.shape[0]} rows but t has {t.shape[0]}")
        if t.shape[0] < 2:
            raise DataError(f"{src}: need at least 2 samples, got {t.shape[0]}")
        back = np.flatnonzero(np.diff(t) <= 0)
        if back.size:
            raise DataError(f"{src}: t not strictly increasing at row {int(back[0]) + 1}")
        settings: dict[str, float] = {}
        for key, value in self.settings.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise DataError(f"{src}: setting {key!r} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise DataError(f"{src}: setting {key!r} is not finite ({value})")
            settings[str(key)] = float(value)
        object.__setattr__(self, "t", t)
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "sensors", sensors)
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in self.meta.items()})

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def dt(self) -> float:
        """Median time step (s), robust to timestamp jitter."""
        return float(np.median(np.diff(self.t)))

    def window(self, start: int, stop: int) -> Trajectory:
        """Rows [start, stop) as a new Trajectory (at least 2 rows; negative indices count from the end)."""
        lo, hi, _ = slice(start, stop).indices(len(self))
        if hi - lo < 2:
            raise DataError(f"{self.source}: window [{start}, {stop}) of {len(self)} rows has fewer than 2 rows")
        return replace(self, t=self.t[lo:hi], q=self.q[lo:hi], qd=self.qd[lo:hi], ctrl=self.ctrl[lo:hi],
                       sensors={k: v[lo:hi] for k, v in self.sensors.items()})

    def split(self, n_windows: int) -> list[Trajectory]:
        """Consecutive non-overlapping windows of len(self) // n_windows rows; trailing rows are dropped."""
        if n_windows < 1:
            raise ValueError(f"n_windows must be >= 1, got {n_windows}")
        length = len(self) // n_windows
        if length < 2:
            raise DataError(f"{self.source}: {len(self)} rows cannot make {n_windows} windows of >= 2 rows")
        return [self.window(k * length, (k + 1) * length) for k in range(n_windows)]

    @classmethod
    def concat(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """Join consecutive pieces of one recording (e.g. windows); t must keep increasing across joins.

        All parts must have the same column counts, settings and meta. The source is kept when all
        parts share it, else the distinct sources are joined with '+'.
        """
        if not parts:
            raise ValueError("concat needs at least one trajectory")
        first = parts[0]
        for part in parts[1:]:
            for name in ("q", "qd", "ctrl"):
                a, b = getattr(first, name), getattr(part, name)
                if a.shape[1] != b.shape[1]:
                    raise DataError(f"{part.source}: {name} has {b.shape[1]} columns, expected {a.shape[1]}")
            if part.settings != first.settings or part.meta != first.meta:
                raise DataError(f"{part.source}: settings/meta differ from {first.source}")
            if {k: v.shape[1] for k, v in part.sensors.items()} != {k: v.shape[1] for k, v in first.sensors.items()}:
                raise DataError(f"{part.source}: sensors differ from {first.source}'s")
        sources = list(dict.fromkeys(p.source for p in parts))
        return cls(
            t=np.concatenate([p.t for p in parts]),
            q=np.concatenate([p.q for p in parts]),
            qd=np.concatenate([p.qd for p in parts]),
            ctrl=np.concatenate([p.ctrl for p in parts]),
            settings=dict(first.settings),
            source="+".join(sources),
            meta=dict(first.meta),
            sensors={k: np.concatenate([p.sensors[k] for p in parts]) for k in first.sensors},
        )
