"""Durable telemetry store: SQLite in WAL mode with synchronous=FULL.

Durability: a chunk is acked to the robot only after `put_chunk` returns, and
the robot then forgets it. In WAL mode `synchronous=NORMAL` survives a process
crash but not a power cut (the WAL is fsynced only at checkpoints), so an acked
chunk could vanish; `FULL` fsyncs the WAL at every commit, which makes the ack
a promise. WAL also lets other processes (replay, reports) read while the
service writes.

Threads: one connection shared behind a lock, so every method may be called
from any thread; calls are serialized (SQLite serializes writers anyway).

Payloads are the protocol's telemetry frames packed as a msgpack list of bytes
(never pickle) and are validated again by `protocol.decode` when read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np

from twin_bayes.service import protocol

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS robots (
    robot_id TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL DEFAULT 0  -- retention floor: chunks below were deleted on purpose
);
CREATE TABLE IF NOT EXISTS chunks (
    robot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    t0 REAL NOT NULL,
    t1 REAL NOT NULL,
    received_at REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (robot_id, seq)
);
CREATE INDEX IF NOT EXISTS chunks_received ON chunks (received_at);
CREATE TABLE IF NOT EXISTS posteriors (
    robot_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    summary TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (robot_id, version)
);
CREATE TABLE IF NOT EXISTS identity (
    store_id TEXT NOT NULL  -- one row: checkpoints name the store they belong to
);
INSERT INTO identity (store_id) SELECT lower(hex(randomblob(16))) WHERE NOT EXISTS (SELECT 1 FROM identity);
CREATE TABLE IF NOT EXISTS scores (
    robot_id TEXT NOT NULL,
    pred_seq INTEGER NOT NULL,
    horizon REAL NOT NULL,
    coverage50 REAL NOT NULL,
    coverage90 REAL NOT NULL,
    crps REAL NOT NULL,
    log_score REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (robot_id, pred_seq, horizon)
);
"""


class StoreError(RuntimeError):
    """The store cannot be used (bad schema version, corrupt payload)."""


class StoreWriteError(StoreError):
    """A write failed (e.g. SQLITE_FULL: disk or size cap full); nothing was written."""


class StoreConflictError(StoreError):
    """A chunk was resent under an existing (robot_id, seq) with different contents."""


class PosteriorVersion(NamedTuple):
    robot_id: str
    version: int
    created_at: float  # Unix time, s
    summary: dict[str, Any]
    blob: bytes


class Score(NamedTuple):
    robot_id: str
    pred_seq: int
    horizon: float  # s
    coverage50: float
    coverage90: float
    crps: float
    log_score: float | None
    created_at: float  # Unix time, s


class TelemetryStore:
    """Telemetry chunks, posterior versions and prediction scores in one SQLite file.

    `max_bytes` caps the database size (SQLite max_page_count); writes past it
    raise StoreWriteError exactly as a full disk does. `store_id` is the file's random identity,
    made when the file is created: a checkpoint carries it, and is refused by any other store.
    """

    def __init__(self, path: str | Path, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None,
                                     check_same_thread=False, timeout=30.0)
        try:
            mode = self._one("PRAGMA journal_mode=WAL")
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            version = self._one("PRAGMA user_version")
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")
            self._conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
            self.set_max_bytes(max_bytes)
            self.store_id: str = self._one("SELECT store_id FROM identity")
        except sqlite3.Error as e:
            self._conn.close()
            raise StoreWriteError(f"{self.path}: cannot open ({e})") from e
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database file at `max_bytes` (None: SQLite's default, effectively no cap)."""
        with self._lock:
            page = self._one("PRAGMA page_size")
            pages = 0xFFFFFFFE if max_bytes is None else max(1, max_bytes // page)
            self._conn.execute(f"PRAGMA max_page_count={int(pages)}")

    def info(self) -> dict[str, Any]:
        """Settings and size for health reports."""
        with self._lock:
            return {
                "path": str(self.path),
                "journal_mode": self._one("PRAGMA journal_mode"),
                "synchronous": ("OFF", "NORMAL", "FULL", "EXTRA")[self._one("PRAGMA synchronous")],
                "bytes": self._one("PRAGMA page_count") * self._one("PRAGMA page_size"),
                "chunks": self._one("SELECT count(*) FROM chunks"),
            }

    def _one(self, sql: str, *args: Any) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; any SQLite failure rolls back and raises StoreWriteError."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                name = getattr(e, "sqlite_errorname", type(e).__name__)
                raise StoreWriteError(f"{self.path}: write failed ({name}: {e})") from e
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def put_chunk(self, robot_id: str, seq: int, arrays: Mapping[str, np.ndarray],
                  received_at: float | None = None) -> bool:
        """Store telemetry chunk `seq` (t (n,) s, q, qd, ctrl (n, k), extras); durable on return.

        Returns True if new, False for a duplicate of a stored chunk or one
        below the retention floor (already consumed and deleted). Raises
        ProtocolError for invalid arrays, StoreConflictError if a different
        chunk is already stored under this seq, StoreWriteError if the write failed.
        """
        frames = protocol.encode("telemetry", robot_id, seq, arrays)
        payload = msgpack.packb(frames, use_bin_type=True)
        t = np.asarray(arrays["t"], dtype=np.float64)
        now = time.time() if received_at is None else received_at
        with self._write() as c:
            if seq < self._floor(robot_id):
                return False
            c.execute("INSERT OR IGNORE INTO robots (robot_id) VALUES (?)", (robot_id,))
            cur = c.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (robot_id, seq, len(t), float(t[0]), float(t[-1]), now, payload),
            )
            if cur.rowcount == 1:
                return True
            same = self._one("SELECT payload = ? FROM chunks WHERE robot_id = ? AND seq = ?",
                             payload, robot_id, seq)
        if not same:
            raise StoreConflictError(f"{robot_id}: chunk {seq} resent with different contents")
        return False

    def get_chunks(self, robot_id: str, after_seq: int = -1,
                   limit: int | None = None) -> list[protocol.Message]:
        """Chunks with seq > after_seq in seq order, as decoded telemetry messages."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, payload FROM chunks WHERE robot_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (robot_id, after_seq, -1 if limit is None else limit),
            ).fetchall()
        out = []
        for seq, payload in rows:
            try:
                msg = protocol.decode(msgpack.unpackb(payload, raw=False))
            except (protocol.ProtocolError, ValueError) as e:
                raise StoreError(f"{robot_id}: chunk {seq} is corrupt ({e})") from e
            if (msg.robot_id, msg.seq) != (robot_id, seq):
                raise StoreError(f"{robot_id}: chunk {seq} holds {msg.robot_id}/{msg.seq}")
            out.append(msg)
        return out

    def _floor(self, robot_id: str) -> int:
        return self._one("SELECT first_seq FROM robots WHERE robot_id = ?", robot_id) or 0

    def last_seq(self, robot_id: str) -> int:
        """Highest chunk number received (or deleted by retention); -1 if none."""
        with self._lock:
            top = self._one("SELECT max(seq) FROM chunks WHERE robot_id = ?", robot_id)
            return max(-1 if top is None else top, self._floor(robot_id) - 1)

    def missing_seqs(self, robot_id: str, upto: int, limit: int = protocol.MAX_RESEND) -> list[int]:
        """Up to `limit` chunk numbers in [retention floor, upto] that were never stored."""
        with self._lock:
            floor = self._floor(robot_id)
            gaps = self._conn.execute(
                """SELECT prev + 1, seq - 1 FROM (
                       SELECT seq, LAG(seq, 1, :floor - 1) OVER (ORDER BY seq) AS prev
                       FROM chunks WHERE robot_id = :r AND seq >= :floor AND seq <= :upto)
                   WHERE seq > prev + 1""",
                {"r": robot_id, "floor": floor, "upto": upto},
            ).fetchall()
            top = self._one("SELECT max(seq) FROM chunks WHERE robot_id = ? AND seq BETWEEN ? AND ?",
                            robot_id, floor, upto)
        gaps.append((floor if top is None else top + 1, upto))
        out: list[int] = []
        for lo, hi in gaps:
            out.extend(range(lo, min(hi, lo + limit - len(out) - 1) + 1))
            if len(out) >= limit:
                break
        return out

    def robots(self) -> list[str]:
        """Robot ids that ever stored a chunk, sorted."""
        with self._lock:
            return [r for (r,) in self._conn.execute("SELECT robot_id FROM robots ORDER BY robot_id")]

    def put_posterior_version(self, robot_id: str, version: int, summary: Mapping[str, Any],
                              blob: bytes, created_at: float | None = None) -> None:
        """Store posterior `version` (JSON summary, opaque blob); rewriting a version replaces it."""
        text = json.dumps(summary, allow_nan=False, sort_keys=True)
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO posteriors VALUES (?, ?, ?, ?, ?)",
                      (robot_id, version, time.time() if created_at is None else created_at,
                       text, bytes(blob)))

    def latest_posterior_version(self, robot_id: str) -> PosteriorVersion | None:
        """The highest stored posterior version of `robot_id`, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM posteriors WHERE robot_id = ? ORDER BY version DESC LIMIT 1",
                (robot_id,)).fetchone()
        if row is None:
            return None
        return PosteriorVersion(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def put_score(self, robot_id: str, pred_seq: int, horizon: float, coverage50: float,
                  coverage90: float, crps: float, log_score: float | None = None,
                  created_at: float | None = None) -> None:
        """Store the calibration score of prediction `pred_seq` at `horizon` s (replaces a rescore)."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (robot_id, pred_seq, horizon, coverage50, coverage90, crps, log_score,
                       time.time() if created_at is None else created_at))

    def scores(self, robot_id: str) -> list[Score]:
        """All scores of `robot_id` ordered by (pred_seq, horizon)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM scores WHERE robot_id = ? ORDER BY pred_seq, horizon",
                (robot_id,)).fetchall()
        return [Score(*r) for r in rows]

    def apply_retention(self, max_age_s: float | None = None, max_chunks: int | None = None,
                        keep_versions: int | None = None, now: float | None = None) -> int:
        """Delete old data; returns the number of chunks deleted.

        Per robot, the retention floor rises past every chunk received more than
        `max_age_s` ago and past all but the newest `max_chunks` chunk numbers;
        every chunk below the floor is deleted and never reported missing again.
        The caller must not raise the floor past chunks not yet applied.
        `keep_versions` keeps that many newest posterior versions per robot.
        """
        now = time.time() if now is None else now
        with self._write() as c:
            if max_age_s is not None:
                c.execute(
                    """UPDATE robots SET first_seq = max(first_seq, 1 + (
                           SELECT max(seq) FROM chunks
                           WHERE chunks.robot_id = robots.robot_id AND received_at < ?))
                       WHERE EXISTS (SELECT 1 FROM chunks
                           WHERE chunks.robot_id = robots.robot_id AND received_at < ?)""",
                    (now - max_age_s, now - max_age_s))
            if max_chunks is not None:
                c.execute(
                    """UPDATE robots SET first_seq = max(first_seq, 1 + (
                           SELECT max(seq) FROM chunks WHERE chunks.robot_id = robots.robot_id) - ?)
                       WHERE EXISTS (SELECT 1 FROM chunks WHERE chunks.robot_id = robots.robot_id)""",
                    (max_chunks,))
            deleted = c.execute(
                """DELETE FROM chunks WHERE seq < (
                       SELECT first_seq FROM robots WHERE robots.robot_id = chunks.robot_id)"""
            ).rowcount
            if keep_versions is not None:
                c.execute(
                    """DELETE FROM posteriors WHERE version <= (
                           SELECT version FROM posteriors p WHERE p.robot_id = posteriors.robot_id
                           ORDER BY version DESC LIMIT 1 OFFSET ?)""",
                    (keep_versions,))
        return deleted
