"""Atomic checkpoints: round trip, rotation, corruption fallback, kill -9 mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twin_bayes.service.checkpoint import (
    CheckpointError,
    checkpoints,
    load_latest,
    read,
    save,
)

_ROOT = Path(__file__).resolve().parents[2]


def _state(i: int) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {
        "particles": np.full((16, 3), float(i)),
        "log_weights": np.array([-np.inf, 0.0, -1.5]),
        "key": np.array([i, 7], dtype=np.uint32),
        "accepted": np.array([True, False]),
        "be": np.arange(4, dtype=">i8"),
        "version": np.asarray(i),             # 0-d, as a TwinState's scalars
        "stale": np.asarray(False),
    }
    return arrays, {"posterior_version": i, "last_seq": {"arm-1": 10 * i}, "stale": False}


def test_round_trip_and_rotation(tmp_path: Path) -> None:
    for i in range(5):
        path = save(tmp_path, *_state(i), keep=3)
        assert path.name == f"ckpt-{i:06d}.tb"
    assert [s for s, _ in checkpoints(tmp_path)] == [2, 3, 4]
    ck = load_latest(tmp_path)
    assert (ck.step, ck.skipped, ck.meta) == (4, [], _state(4)[1])
    for name, a in _state(4)[0].items():
        np.testing.assert_array_equal(ck.arrays[name], a)
        assert ck.arrays[name].shape == a.shape, name
        assert ck.arrays[name].dtype == a.dtype.newbyteorder("<") and ck.arrays[name].flags.writeable
    _, meta = read(checkpoints(tmp_path)[0][1])
    assert meta["posterior_version"] == 2
    with pytest.raises(TypeError):
        save(tmp_path, {"names": np.array(["a"])}, {})


def test_no_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        load_latest(tmp_path / "missing")
    save(tmp_path, *_state(0))
    checkpoints(tmp_path)[0][1].write_bytes(b"TBCK")
    with pytest.raises(CheckpointError, match="truncated"):
        load_latest(tmp_path)


def test_truncated_or_flipped_newest_falls_back(tmp_path: Path) -> None:
    save(tmp_path, *_state(1))
    newest = save(tmp_path, *_state(2))
    good = newest.read_bytes()
    rng = np.random.default_rng(7)
    cuts = {0, 1, 4, 47, 48, 49, len(good) - 1, *rng.integers(0, len(good), 40).tolist()}
    damaged = [good[:c] for c in sorted(cuts)]
    for pos in range(len(good)):  # every single byte, header and payload
        b = bytearray(good)
        b[pos] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(b))
    for data in damaged:
        newest.write_bytes(data)
        ck = load_latest(tmp_path)
        assert ck.step == 0 and ck.meta["posterior_version"] == 1
        assert [p for p, _ in ck.skipped] == [newest] and ck.skipped[0][1]
    newest.write_bytes(good)
    assert load_latest(tmp_path).step == 1


def test_stale_temp_files_are_ignored_and_cleaned(tmp_path: Path) -> None:
    save(tmp_path, *_state(0))
    (tmp_path / ".ckpt-dead.tmp").write_bytes(b"TBCK half written")
    assert load_latest(tmp_path).step == 0
    save(tmp_path, *_state(1))
    assert not list(tmp_path.glob(".ckpt-*.tmp"))


_WRITER = """
import sys, time
import numpy as np
from twin_bayes.service.checkpoint import save
start = time.monotonic()
for i in range(int(sys.argv[2]), 100_000):
    if time.monotonic() - start > 20:
        break
    save(sys.argv[1], {"x": np.full(40_000, float(i)), "i": np.array([i])},
         {"i": i, "last_seq": {"arm-1": i}}, keep=3)
"""


def test_kill_9_while_writing_leaves_loadable_latest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    last_i = -1
    for _ in range(4):
        first = checkpoints(tmp_path)[-1][0] if checkpoints(tmp_path) else -1
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(last_i + 1)],
                                env=env)
        try:
            deadline = time.monotonic() + 60
            while not checkpoints(tmp_path) or checkpoints(tmp_path)[-1][0] < first + 3:
                assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0, 0.05)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        ck = load_latest(tmp_path)
        assert ck.skipped == []
        i = ck.meta["i"]
        assert i > last_i and ck.meta["last_seq"] == {"arm-1": i}
        np.testing.assert_array_equal(ck.arrays["x"], np.full(40_000, float(i)))
        assert ck.arrays["i"].tolist() == [i]
        last_i = i
    assert len(checkpoints(tmp_path)) <= 4  # keep=3, plus at most one from an interrupted prune
