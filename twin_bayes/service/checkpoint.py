"""Atomic, checksummed checkpoints of the posterior state.

File `ckpt-NNNNNN.tb` = 48-byte header + payload:

    magic b"TBCK" | format u16 | flags u16 (0) | payload length u64 | SHA-256 of payload (32 B)

all little-endian. The payload is msgpack {"meta": JSON-like map, "arrays":
{name: {"dtype", "shape", "data"}}} with raw little-endian C-order data
(never pickle). `meta` carries e.g. {"last_seq": {robot_id: chunk}, "posterior_version": N}.

A save writes a temp file in the same directory, fsyncs it, renames it over
the final name and fsyncs the directory, under an flock on `.lock` so that
concurrent savers serialize. A crash at any point leaves either the old set of
checkpoints or the new one; `load_latest` also survives a newest file damaged
later (truncated, flipped bytes) by falling back to the previous valid one.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np

MAGIC = b"TBCK"
FORMAT = 1
KEEP = 3
_HEADER = struct.Struct("<4sHHQ32s")
_NAME = re.compile(r"ckpt-(\d{6,})\.tb\Z")
_KINDS = frozenset("biufc")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No valid checkpoint could be read."""


class Checkpoint(NamedTuple):
    path: Path
    step: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    skipped: list[tuple[Path, str]]  # newer checkpoints that were invalid, with the reason


def checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / m.group(0)) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _pack(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    packed = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in _KINDS:
            raise TypeError(f"{name}: dtype {a.dtype} is not numeric")
        shape = list(a.shape)                  # before ascontiguousarray, which makes a 0-d array 1-d
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        packed[name] = {"dtype": a.dtype.str, "shape": shape, "data": a.tobytes()}
    payload = msgpack.packb({"meta": dict(meta), "arrays": packed}, use_bin_type=True)
    return _HEADER.pack(MAGIC, FORMAT, 0, len(payload), hashlib.sha256(payload).digest()) + payload


def _unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Verify and decode one checkpoint file's bytes; ValueError says what is wrong."""
    if len(data) < _HEADER.size:
        raise ValueError(f"truncated: {len(data)} bytes, header needs {_HEADER.size}")
    magic, fmt, flags, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    if fmt != FORMAT or flags != 0:
        raise ValueError(f"unsupported format {fmt} flags {flags}")
    if len(data) != _HEADER.size + length:
        raise ValueError(f"length: {len(data) - _HEADER.size} payload bytes, header says {length}")
    payload = data[_HEADER.size:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch")
    try:
        doc = msgpack.unpackb(payload, raw=False)
        arrays = {}
        for name, spec in doc["arrays"].items():
            dt = np.dtype(spec["dtype"])
            if dt.kind not in _KINDS:
                raise ValueError(f"{name}: dtype {dt} is not numeric")
            arrays[name] = np.frombuffer(spec["data"], dtype=dt).reshape(spec["shape"]).copy()
        return arrays, doc["meta"]
    except Exception as e:  # a checksummed payload we cannot parse: written by a buggy writer
        raise ValueError(f"bad payload ({type(e).__name__}: {e})") from None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
         keep: int = KEEP) -> Path:
    """Atomically write the next checkpoint and delete all but the newest `keep`.

    `arrays`: numeric numpy arrays of any shape; `meta`: msgpack-able JSON-like map.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    blob = _pack(arrays, meta)
    with open(d / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in d.glob(".ckpt-*.tmp"):  # left by a writer killed mid-save
            stale.unlink(missing_ok=True)
        existing = checkpoints(d)
        step = existing[-1][0] + 1 if existing else 0
        final = d / f"ckpt-{step:06d}.tb"
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(d)
        for _, old in [*existing, (step, final)][:-keep]:
            old.unlink(missing_ok=True)
    return final


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of one checkpoint file; CheckpointError if it is invalid."""
    try:
        return _unpack(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_latest(directory: str | Path) -> Checkpoint:
    """The newest valid checkpoint; newer invalid ones are logged and listed in `skipped`.

    Raises CheckpointError if there is none.
    """
    skipped: list[tuple[Path, str]] = []
    for step, path in reversed(checkpoints(directory)):
        try:
            arrays, meta = _unpack(path.read_bytes())
        except (OSError, ValueError) as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            skipped.append((path, str(e)))
            continue
        return Checkpoint(path, step, arrays, meta, skipped)
    reasons = "; ".join(f"{p.name}: {r}" for p, r in skipped) or "no checkpoint files"
    raise CheckpointError(f"no valid checkpoint in {directory} ({reasons})")
