"""Consolidation's recordings (`service.consolidate.stored_recordings`) read back from a real SQLite
store: the runs of the stored samples, split where time jumps or known settings change, the newest
seconds of them. The service's consolidation itself, on a real XL330 log: tests/experiments/test_xl330.py."""
from __future__ import annotations

import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.models import TwinModel
from twin_bayes.service.consolidate import stored_recordings
from twin_bayes.service.ingest import SETTING
from twin_bayes.service.store import TelemetryStore

N = 50   # samples per chunk


def _chunk(t0: float, dt: float, seq: int, kp: float | None = None) -> dict[str, np.ndarray]:
    t = t0 + dt * np.arange(N)
    rows = seq * N + np.arange(N, dtype=float)             # each sample's number, to find it again
    arrays = {"t": t, "q": np.stack([rows, -rows], 1), "qd": np.stack([rows, rows], 1),
              "ctrl": np.stack([rows, 2 * rows], 1)}
    if kp is not None:
        arrays[SETTING + "kp"] = np.full(N, kp)
    return arrays


@pytest.fixture
def stored(tmp_path):
    """Chunks 0-3 one recording, 4-5 after a time jump, 6-9 the same clock with another known setting."""
    model = TwinModel(load_config("arm2"))
    dt = model.robot.dt
    with TelemetryStore(tmp_path / "twin.db") as store:
        for seq in range(10):
            t0 = seq * N * dt + (5.0 if seq >= 4 else 0.0)
            store.put_chunk("arm", seq, _chunk(t0, dt, seq, kp=200.0 if seq >= 6 else 100.0))
        yield store, model


def test_recordings_are_the_runs_of_the_stored_samples(stored):
    store, model = stored
    recs = stored_recordings(store, "arm", model, seconds=100.0)
    assert [len(r.t) for r in recs] == [4 * N, 2 * N, 4 * N]
    assert [r.settings for r in recs] == [{"kp": 100.0}, {"kp": 100.0}, {"kp": 200.0}]
    np.testing.assert_array_equal(np.concatenate([r.q[:, 0] for r in recs]), np.arange(10 * N))
    np.testing.assert_array_equal(recs[2].ctrl[:, 1], 2 * np.arange(6 * N, 10 * N))


def test_only_the_newest_seconds_are_read_and_runs_shorter_than_a_segment_are_left_out(stored):
    store, model = stored
    dt = model.robot.dt
    recs = stored_recordings(store, "arm", model, seconds=(2 * N + 30) * dt)
    assert [len(r.t) for r in recs] == [2 * N + 31] and recs[0].q[-1, 0] == 10 * N - 1
    # the newest 4N + 11 samples: the kp = 200 run and the last 11 of the run before, shorter than a
    # segment (25 steps)
    assert [len(r.t) for r in stored_recordings(store, "arm", model, seconds=(4 * N + 10) * dt)] == [4 * N]
    assert stored_recordings(store, "nobody", model, seconds=10.0) == []


def test_a_sensor_twins_recordings_carry_its_readings_and_a_chunk_without_them_is_named(tmp_path):
    """A twin observing a gyro consolidates its stored `sensor:gyro` readings with the samples they came
    with; stored telemetry without them is a ValueError naming the field (the worker reports it in
    health and goes on)."""
    from pathlib import Path

    from twin_bayes.config import parse_config
    robot = Path(__file__).resolve().parents[1] / "sim" / "arm2_sensors.xml"
    model = TwinModel(parse_config({"name": "arm2_gyro", "robot": {"name": str(robot)},
                                    "parameters": {"bias_y:gyro": {"dist": "normal", "loc": 0.0, "scale": 0.05}},
                                    "observation": {"sensors": ["gyro"],
                                                    "noise_scale": {"q": 0.01, "qd": 0.1, "gyro": 0.01}}}))
    dt = model.robot.dt
    gyro = lambda seq: np.outer(seq * N + np.arange(N), [1.0, 2.0, 3.0])  # noqa: E731
    with TelemetryStore(tmp_path / "twin.db") as store:
        for seq in range(3):
            store.put_chunk("imu", seq, {**_chunk(seq * N * dt, dt, seq), "sensor:gyro": gyro(seq)})
        rec, = stored_recordings(store, "imu", model, seconds=100.0)
        np.testing.assert_array_equal(rec.sensors["gyro"], np.concatenate([gyro(s) for s in range(3)]))
        np.testing.assert_array_equal(rec.q[:, 0], np.arange(3 * N))
        store.put_chunk("imu", 3, _chunk(3 * N * dt, dt, 3))
        with pytest.raises(ValueError, match="sensor:gyro"):
            stored_recordings(store, "imu", model, seconds=100.0)
