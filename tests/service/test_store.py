"""Telemetry store on a real SQLite file: dedup, gaps, WAL, SQLITE_FULL, retention."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from twin_bayes.service.protocol import ProtocolError
from twin_bayes.service.store import (
    StoreConflictError,
    StoreError,
    StoreWriteError,
    TelemetryStore,
)


def _arrays(seq: int, n: int = 10, width: int = 2) -> dict[str, np.ndarray]:
    t = seq * n * 0.01 + 0.01 * np.arange(n)
    return {"t": t, "q": np.tile(np.sin(t)[:, None], width), "qd": np.cos(t)[:, None],
            "ctrl": np.full((n, 1), float(seq)), "contact": np.ones(n, np.uint8)}


@pytest.fixture
def store(tmp_path: Path):
    with TelemetryStore(tmp_path / "twin.db") as s:
        yield s


def test_round_trip_and_dedup(store: TelemetryStore) -> None:
    assert store.put_chunk("arm-1", 0, _arrays(0)) is True
    assert store.put_chunk("arm-1", 0, _arrays(0)) is False
    assert store.put_chunk("arm-1", 1, _arrays(1)) is True
    assert store.info()["chunks"] == 2
    chunks = store.get_chunks("arm-1")
    assert [c.seq for c in chunks] == [0, 1]
    for c in chunks:
        for k, v in _arrays(c.seq).items():
            np.testing.assert_array_equal(c.arrays[k], v)
        assert c.arrays["contact"].dtype == np.uint8
    assert [c.seq for c in store.get_chunks("arm-1", after_seq=0)] == [1]
    assert [c.seq for c in store.get_chunks("arm-1", limit=1)] == [0]
    assert store.get_chunks("nobody") == []


def test_conflicting_resend_and_invalid_arrays_store_nothing(store: TelemetryStore) -> None:
    store.put_chunk("arm-1", 0, _arrays(0))
    with pytest.raises(StoreConflictError):
        store.put_chunk("arm-1", 0, _arrays(5))
    bad = _arrays(1)
    bad["q"][3, 0] = np.nan
    with pytest.raises(ProtocolError, match="non_finite"):
        store.put_chunk("arm-1", 1, bad)
    assert [c.seq for c in store.get_chunks("arm-1")] == [0]
    np.testing.assert_array_equal(store.get_chunks("arm-1")[0].arrays["ctrl"], 0.0)


def test_gaps_last_seq_and_robots(store: TelemetryStore) -> None:
    assert store.last_seq("arm-1") == -1 and store.robots() == []
    assert store.missing_seqs("arm-1", 2) == [0, 1, 2]
    for seq in (0, 1, 3, 4, 7):
        store.put_chunk("arm-1", seq, _arrays(seq))
    store.put_chunk("leg-2", 2, _arrays(2))
    assert store.last_seq("arm-1") == 7 and store.last_seq("leg-2") == 2
    assert store.robots() == ["arm-1", "leg-2"]
    assert store.missing_seqs("arm-1", 9) == [2, 5, 6, 8, 9]
    assert store.missing_seqs("arm-1", 7) == [2, 5, 6]
    assert store.missing_seqs("arm-1", 9, limit=2) == [2, 5]
    assert store.missing_seqs("leg-2", 2) == [0, 1]
    assert len(store.missing_seqs("arm-1", 2**62)) == 1024  # bounded for absurd requests


def test_wal_durability_settings_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "twin.db"
    with TelemetryStore(path) as s:
        info = s.info()
        assert (info["journal_mode"], info["synchronous"]) == ("wal", "FULL")
        s.put_chunk("arm-1", 0, _arrays(0))
        reader = sqlite3.connect(path)  # WAL: another connection reads while the store is open
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert reader.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1
        reader.close()
    with TelemetryStore(path) as s:
        assert s.last_seq("arm-1") == 0 and s.robots() == ["arm-1"]


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twin.db"
    TelemetryStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=99")
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        TelemetryStore(path)


def _big(seq: int) -> dict[str, np.ndarray]:
    return _arrays(seq, n=400, width=8)  # about 35 kB per chunk


def test_sqlite_full_is_a_store_write_error_and_recoverable(store: TelemetryStore) -> None:
    store.put_chunk("arm-1", 0, _arrays(0))
    store.set_max_bytes(store.info()["bytes"] + 4 * 4096)
    stored = 1
    with pytest.raises(StoreWriteError, match="SQLITE_FULL"):
        for seq in range(1, 50):
            store.put_chunk("arm-1", seq, _big(seq))
            stored += 1
    before = (store.last_seq("arm-1"), store.robots(), store.info()["chunks"])
    assert before == (stored - 1, ["arm-1"], stored)
    with pytest.raises(StoreWriteError):
        store.put_chunk("new-robot", 0, _big(0))  # its robots row must roll back too
    with pytest.raises(StoreWriteError):
        store.put_posterior_version("arm-1", 1, {"m": 1.0}, b"x" * 100_000)
    assert (store.last_seq("arm-1"), store.robots(), store.info()["chunks"]) == before
    assert store.latest_posterior_version("arm-1") is None
    raw = sqlite3.connect(store.path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    store.set_max_bytes(None)
    assert store.put_chunk("arm-1", stored, _big(stored)) is True
    assert store.put_chunk("new-robot", 0, _big(0)) is True
    assert store.robots() == ["arm-1", "new-robot"]
    assert [c.seq for c in store.get_chunks("arm-1")] == list(range(stored + 1))


def test_retention_moves_floor(store: TelemetryStore) -> None:
    for seq in range(10):
        store.put_chunk("arm-1", seq, _arrays(seq), received_at=1000.0 + seq)
    assert store.apply_retention(max_chunks=4) == 6
    assert [c.seq for c in store.get_chunks("arm-1")] == [6, 7, 8, 9]
    assert store.missing_seqs("arm-1", 10) == [10]
    assert store.put_chunk("arm-1", 2, _arrays(2)) is False  # resend of a consumed chunk
    assert store.apply_retention(max_age_s=1.5, now=1009.0) == 2  # received at 1006, 1007
    assert [c.seq for c in store.get_chunks("arm-1")] == [8, 9]
    assert store.apply_retention(max_age_s=0.0, now=2000.0) == 2
    assert store.get_chunks("arm-1") == [] and store.last_seq("arm-1") == 9
    assert store.missing_seqs("arm-1", 9) == []


def test_posterior_versions_and_scores(store: TelemetryStore) -> None:
    assert store.latest_posterior_version("arm-1") is None
    for v in range(4):
        store.put_posterior_version("arm-1", v, {"mass": {"mean": 1.0 + v}}, bytes([v]) * 8,
                                    created_at=100.0 + v)
    store.put_posterior_version("arm-1", 3, {"mass": {"mean": 9.0}}, b"redo")
    latest = store.latest_posterior_version("arm-1")
    assert (latest.version, latest.summary, latest.blob) == (3, {"mass": {"mean": 9.0}}, b"redo")
    with pytest.raises(ValueError):
        store.put_posterior_version("arm-1", 4, {"rhat": float("nan")}, b"")
    store.apply_retention(keep_versions=1)
    assert store.latest_posterior_version("arm-1").version == 3
    store.put_score("arm-1", 5, 0.5, 0.48, 0.91, 0.012, log_score=-1.3, created_at=1.0)
    store.put_score("arm-1", 2, 1.0, 0.52, 0.88, 0.020)
    store.put_score("arm-1", 2, 0.5, 0.50, 0.90, 0.010)
    scores = store.scores("arm-1")
    assert [(s.pred_seq, s.horizon) for s in scores] == [(2, 0.5), (2, 1.0), (5, 0.5)]
    assert scores[2].log_score == -1.3 and scores[0].log_score is None
    assert store.scores("leg-2") == []


def test_concurrent_writers_from_threads(store: TelemetryStore) -> None:
    errors: list[BaseException] = []

    def writer(robot: str) -> None:
        try:
            for seq in range(25):
                assert store.put_chunk(robot, seq, _arrays(seq, n=4))
        except BaseException as e:  # surfaced below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"r{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.robots() == ["r0", "r1", "r2", "r3"]
    assert all(store.missing_seqs(r, 24) == [] for r in store.robots())
