"""Locate the shared, read-only data sets that live beside (not inside) the repository."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from twin_bayes.data.trajectory import DataError

#: Environment variable naming the data root (the folder that holds ``bam_xl330/``, ``franka_panda/``).
DATA_ENV = "TWIN_BAYES_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_HEAD_BYTES = 4096
_KP = re.compile(rb'"kp"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def shared_data_dir(name: str) -> Path | None:
    """The shared data set folder `name` (e.g. "bam_xl330", "franka_panda"), or None where it is absent.

    ``$TWIN_BAYES_DATA/<name>`` when the variable is set (no fallback); otherwise the first
    ``shared/data/<name>`` found walking up from the repository root (``<repo>/../shared/...``).
    """
    root = os.environ.get(DATA_ENV)
    if root:
        folder = Path(root) / name
        return folder if folder.is_dir() else None
    for base in (_REPO_ROOT, *_REPO_ROOT.parents):
        folder = base / "shared" / "data" / name
        if folder.is_dir():
            return folder
    return None


def bam_xl330_dir() -> Path | None:
    """The XL330 servo-pendulum log folder, or None where it is absent (`shared_data_dir`)."""
    return shared_data_dir("bam_xl330")


@functools.lru_cache(maxsize=None)
def _kp(path: Path, mtime_ns: int, size: int) -> float:
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    match = _KP.search(head)
    if match and b'"entries"' not in head[: match.start()]:
        return float(match.group(1))
    try:
        with open(path, encoding="utf-8") as f:
            return float(json.load(f)["kp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read kp ({exc!r})") from None


def log_kp(path: Path) -> float:
    """The servo kp of a bam log, read from the file head when it is there; cached per file version."""
    stat = path.stat()
    return _kp(path.resolve(), stat.st_mtime_ns, stat.st_size)


def bam_logs(kp: float | None = None) -> list[Path]:
    """Sorted XL330 log paths, only those recorded with servo kp == kp when given; [] where absent."""
    folder = bam_xl330_dir()
    if folder is None:
        return []
    paths = sorted(folder.glob("*.json"))
    return paths if kp is None else [p for p in paths if log_kp(p) == float(kp)]
