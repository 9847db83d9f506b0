"""Trajectories as NumPy .npz archives (never pickled).

Keys:
    t          (T,) float, seconds, strictly increasing
    q          (T, nq) float, measured joint positions (rad or m)
    qd         (T, nv) float, measured joint velocities (rad/s or m/s)
    ctrl       (T, nu) float, command sent at each step (held during that step)
    settings_<name>  optional 0-d number: a known per-recording setting, e.g. settings_servo_kp
    sensor_<name>    optional (T, dim) float: readings of the MJCF sensor <name> (docs/SENSORS.md)
    meta_<name>      optional 0-d string: a descriptor, e.g. meta_trajectory
Any other key is an error.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from twin_bayes.data.trajectory import DataError, Trajectory

_ARRAYS = {"t": 1, "q": 2, "qd": 2, "ctrl": 2}
_SETTINGS = "settings_"
_META = "meta_"
_SENSOR = "sensor_"


def _load(source: str, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:  # object arrays are refused with allow_pickle=False
        raise DataError(f"{source}: key {key!r} cannot be loaded without pickle ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: key {key!r} is corrupt ({exc})") from None


def _numeric(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)


def read_npz(path: str | Path) -> Trajectory:
    """Read a Trajectory from an .npz file with the keys documented in this module."""
    source = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{source}: holds a single array, not an .npz archive of named arrays")
    with archive:
        keys = set(archive.files)
        arrays: dict[str, np.ndarray] = {}
        for key, ndim in _ARRAYS.items():
            if key not in keys:
                raise DataError(f"{source}: missing key {key!r}")
            arr = _load(source, archive, key)
            if arr.ndim != ndim:
                raise DataError(f"{source}: key {key!r} must be {ndim}-D, got shape {arr.shape}")
            if not _numeric(arr):
                raise DataError(f"{source}: key {key!r} must be numeric, got dtype {arr.dtype}")
            arrays[key] = arr
        settings: dict[str, float] = {}
        meta: dict[str, str] = {}
        sensors: dict[str, np.ndarray] = {}
        for key in sorted(keys - _ARRAYS.keys()):
            arr = _load(source, archive, key)
            if key.startswith(_SETTINGS) and len(key) > len(_SETTINGS):
                if arr.ndim != 0 or not _numeric(arr):
                    raise DataError(f"{source}: key {key!r} must be a 0-d number, got {arr.dtype} {arr.shape}")
                settings[key[len(_SETTINGS):]] = float(arr)
            elif key.startswith(_SENSOR) and len(key) > len(_SENSOR):
                if arr.ndim != 2 or not _numeric(arr):
                    raise DataError(f"{source}: key {key!r} must be a 2-D number array (T, dim), "
                                    f"got {arr.dtype} {arr.shape}")
                sensors[key[len(_SENSOR):]] = arr
            elif key.startswith(_META) and len(key) > len(_META):
                if arr.ndim != 0 or arr.dtype.kind != "U":
                    raise DataError(f"{source}: key {key!r} must be a 0-d string, got {arr.dtype} {arr.shape}")
                meta[key[len(_META):]] = str(arr)
            else:
                raise DataError(
                    f"{source}: unexpected key {key!r} "
                    "(allowed: t, q, qd, ctrl, settings_<name>, sensor_<name>, meta_<name>)"
                )
    return Trajectory(**arrays, settings=settings, source=source, meta=meta, sensors=sensors)


def write_npz(path: str | Path, traj: Trajectory) -> None:
    """Write traj to path (compressed .npz, exactly the given name) in the format read_npz reads."""
    payload: dict[str, np.ndarray] = {"t": traj.t, "q": traj.q, "qd": traj.qd, "ctrl": traj.ctrl}
    payload.update({_SETTINGS + k: np.float64(v) for k, v in traj.settings.items()})
    payload.update({_META + k: np.str_(v) for k, v in traj.meta.items()})
    payload.update({_SENSOR + k: v for k, v in traj.sensors.items()})
    with open(path, "wb") as f:
        np.savez_compressed(f, **payload)
