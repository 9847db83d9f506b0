"""Trajectory container, .npz and bam JSON readers, and the shared-data locator."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from twin_bayes.data import (
    DataError,
    Trajectory,
    bam_logs,
    bam_xl330_dir,
    consecutive_windows,
    log_kp,
    read_bam,
    read_npz,
    read_trajectory,
    write_npz,
)
from twin_bayes.sim.actuators import SERVO_TORQUE_OFF


def make_traj(T: int = 20, source: str = "mem") -> Trajectory:
    rng = np.random.default_rng(0)
    return Trajectory(
        t=np.arange(T) * 0.005,
        q=rng.normal(size=(T, 2)),
        qd=rng.normal(size=(T, 2)),
        ctrl=rng.normal(size=(T, 1)),
        settings={"servo_kp": 400, "servo_vin": 7.4},
        source=source,
        meta={"trajectory": "sin_sin"},
    )


def bam_log(kp: float = 100, n: int = 10, **top: object) -> dict:
    entries = [
        {"timestamp": 0.005 * k, "position": 0.01 * k, "speed": 2.0, "goal_position": 0.1, "load": 0.0}
        for k in range(n)
    ]
    return {"mass": 0.49, "length": 0.1, "kp": kp, "vin": 7.4, "motor": "xl330",
            "trajectory": "sin_sin", "dt": 0.005, "entries": entries, **top}


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def raises_naming(path: Path, problem: str):
    return pytest.raises(DataError, match=re.escape(path.name) + ".*" + problem)


# --- Trajectory --------------------------------------------------------------------------------


def test_trajectory_stores_readonly_float64():
    traj = Trajectory(t=[0, 1, 2], q=[[1], [2], [3]], qd=[[0], [0], [0]], ctrl=[[0], [1], [2]])
    assert traj.q.dtype == np.float64 and traj.q.shape == (3, 1)
    assert len(traj) == 3 and traj.dt == 1.0
    with pytest.raises(ValueError):
        traj.q[0, 0] = 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"q": np.ones((20, 1)) * np.where(np.arange(20) % 7 == 5, np.nan, 1)[:, None]},
         r"q has NaN at rows \[5, 12, 19\]"),
        ({"qd": np.full((20, 2), np.inf)}, r"qd has inf at rows \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(20 rows\)\]"),
        ({"t": np.r_[np.arange(5), 4, np.arange(6, 20)] * 0.005}, "t not strictly increasing at row 5"),
        ({"ctrl": np.zeros((19, 1))}, "ctrl has 19 rows but t has 20"),
        ({"q": np.zeros(20)}, r"q must be 2-D, got shape \(20,\)"),
        ({"t": np.zeros((20, 1))}, "t must be 1-D"),
        ({"q": np.array([["a"]] * 20)}, "q is not numeric"),
        ({"settings": {"kp": "high"}}, "setting 'kp' must be a number"),
        ({"settings": {"kp": float("nan")}}, "setting 'kp' is not finite"),
    ],
)
def test_trajectory_validation(change, message):
    base = make_traj(source="rig.npz")
    fields = dict(t=base.t, q=base.q, qd=base.qd, ctrl=base.ctrl, settings=base.settings, source=base.source)
    with pytest.raises(DataError, match="rig.npz: " + message):
        Trajectory(**{**fields, **change})


def test_trajectory_needs_two_samples():
    with pytest.raises(DataError, match="at least 2 samples"):
        Trajectory(t=[0.0], q=[[0.0]], qd=[[0.0]], ctrl=[[0.0]])


def test_window_split_concat():
    traj = make_traj(T=23)
    win = traj.window(3, 8)
    np.testing.assert_array_equal(win.t, traj.t[3:8])
    assert win.settings == traj.settings and win.meta == traj.meta
    np.testing.assert_array_equal(traj.window(-4, 23).q, traj.q[-4:])
    with pytest.raises(DataError, match="fewer than 2 rows"):
        traj.window(5, 6)

    parts = traj.split(4)
    assert [len(p) for p in parts] == [5, 5, 5, 5]
    np.testing.assert_array_equal(parts[1].t, traj.t[5:10])
    with pytest.raises(DataError, match="cannot make 12 windows"):
        traj.split(12)

    joined = Trajectory.concat(parts)
    np.testing.assert_array_equal(joined.qd, traj.qd[:20])
    assert joined.source == traj.source
    with pytest.raises(DataError, match="t not strictly increasing at row 5"):
        Trajectory.concat([parts[0], parts[0]])
    other = Trajectory(t=parts[1].t, q=parts[1].q, qd=parts[1].qd, ctrl=parts[1].ctrl, settings={"servo_kp": 100})
    with pytest.raises(DataError, match="settings/meta differ"):
        Trajectory.concat([parts[0], other])


# --- NPZ ---------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    traj = make_traj()
    path = tmp_path / "run.npz"
    write_npz(path, traj)
    back = read_npz(path)
    for name in ("t", "q", "qd", "ctrl"):
        np.testing.assert_array_equal(getattr(back, name), getattr(traj, name))
    assert back.settings == {"servo_kp": 400.0, "servo_vin": 7.4}
    assert back.meta == {"trajectory": "sin_sin"}
    assert back.source == str(path)
    assert read_trajectory(path).settings == back.settings


def test_npz_carries_sensor_readings_through_windows_and_joins(tmp_path):
    rng = np.random.default_rng(1)
    readings = {"torso_gyro": rng.normal(size=(20, 3)), "right_knee_torque": rng.normal(size=(20, 1))}
    traj = Trajectory(t=np.arange(20) * 0.005, q=np.zeros((20, 1)), qd=np.zeros((20, 1)), ctrl=np.zeros((20, 1)),
                      sensors=readings)
    path = tmp_path / "imu.npz"
    write_npz(path, traj)
    back = read_npz(path)
    assert set(back.sensors) == set(readings)
    for name, value in readings.items():
        np.testing.assert_array_equal(back.sensors[name], value)
    parts = back.split(2)
    np.testing.assert_array_equal(parts[1].sensors["torso_gyro"], readings["torso_gyro"][10:])
    np.testing.assert_array_equal(Trajectory.concat(parts).sensors["right_knee_torque"], readings["right_knee_torque"])


def good_npz() -> dict[str, np.ndarray]:
    traj = make_traj()
    return {"t": traj.t, "q": traj.q, "qd": traj.qd, "ctrl": traj.ctrl, "settings_servo_kp": np.float64(400)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"q": None}, "missing key 'q'"),
        ({"t": None}, "missing key 't'"),
        ({"ctrl": np.zeros(20)}, r"key 'ctrl' must be 2-D, got shape \(20,\)"),
        ({"t": np.zeros((20, 1))}, "key 't' must be 1-D"),
        ({"q": np.array([[{}]] * 20, dtype=object)}, "key 'q' cannot be loaded without pickle"),
        ({"qd": np.array([["x", "y"]] * 20)}, "key 'qd' must be numeric"),
        ({"settings_servo_kp": np.array([1.0, 2.0])}, "key 'settings_servo_kp' must be a 0-d number"),
        ({"meta_name": np.float64(3)}, "key 'meta_name' must be a 0-d string"),
        ({"extra": np.zeros(3)}, "unexpected key 'extra'"),
        ({"q": np.full((20, 2), np.nan)}, r"q has NaN at rows"),
        ({"sensor_gyro": np.zeros(20)}, r"key 'sensor_gyro' must be a 2-D number array \(T, dim\)"),
        ({"sensor_gyro": np.zeros((19, 3))}, r"sensor gyro has 19 rows but t has 20"),
        ({"sensor_gyro": np.full((20, 3), np.inf)}, r"sensor gyro has inf at rows"),
    ],
)
def test_npz_malformed(tmp_path, change, message):
    arrays = {k: v for k, v in {**good_npz(), **change}.items() if v is not None}
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with raises_naming(path, message):
        read_npz(path)


def test_npz_not_an_archive(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with raises_naming(garbage, "not a readable .npz archive"):
        read_npz(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with raises_naming(single, "single array"):
        read_npz(single)


# --- bam JSON ----------------------------------------------------------------------------------


def test_bam_synthetic(tmp_path):
    path = write_json(tmp_path / "log.json", bam_log(kp=200, n=12, temp_limit=70))
    traj = read_bam(path)
    assert traj.q.shape == traj.qd.shape == traj.ctrl.shape == (12, 1)
    np.testing.assert_allclose(traj.q[:, 0], 0.01 * np.arange(12))
    assert traj.settings == {"mass": 0.49, "length": 0.1, "servo_kp": 200.0, "servo_vin": 7.4, "dt": 0.005,
                             "temp_limit": 70.0}
    assert traj.meta == {"motor": "xl330", "trajectory": "sin_sin"}
    assert read_trajectory(path, format="bam").settings == traj.settings


def test_bam_keeps_jittered_timestamps(tmp_path):
    log = bam_log(n=50)
    jitter = np.random.default_rng(1).uniform(-4e-4, 4e-4, size=50)
    for entry, j in zip(log["entries"], jitter):
        entry["timestamp"] += j
    traj = read_bam(write_json(tmp_path / "jitter.json", log))
    np.testing.assert_allclose(traj.t, 0.005 * np.arange(50) + jitter)
    assert traj.settings["dt"] == 0.005


def _entries(**fields):
    def edit(log):
        log["entries"][3].update(fields)
        return log
    return edit


def _drop_entry_key(key):
    def edit(log):
        del log["entries"][3][key]
        return log
    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda log: [log], "top level must be a JSON object"),
        (lambda log: {k: v for k, v in log.items() if k != "kp"}, "missing key 'kp'"),
        (lambda log: {k: v for k, v in log.items() if k != "entries"}, "missing key 'entries'"),
        (lambda log: {**log, "entries": []}, "'entries' must be a non-empty list"),
        (lambda log: {**log, "entries": {"a": 1}}, "'entries' must be a non-empty list"),
        (lambda log: {**log, "entries": [1, 2]}, "entry 0 is not an object"),
        (lambda log: {**log, "vin": "7.4V"}, "'vin' must be a number"),
        (_drop_entry_key("speed"), "entry 3 missing key 'speed'"),
        (_entries(position="0.1"), "entry 3 'position' is not a number"),
        (_entries(position=None), "entry 3 'position' is not a number"),
        (_entries(timestamp=0.0), "t not strictly increasing at row 3"),
        (_entries(speed=float("nan")), r"qd has NaN at rows \[3\]"),
        (lambda log: {**log, "dt": 0.01}, "declared dt=0.01 s disagrees"),
        (lambda log: {**log, "mass": float("inf")}, "setting 'mass' is not finite"),
    ],
)
def test_bam_malformed(tmp_path, edit, message):
    path = write_json(tmp_path / "broken.json", edit(bam_log()))
    with raises_naming(path, message):
        read_bam(path)


def test_bam_bad_json(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text(json.dumps(bam_log())[:-40])
    with raises_naming(path, "malformed JSON"):
        read_bam(path)


def test_read_trajectory_unknown_format(tmp_path):
    with raises_naming(tmp_path / "run.csv", r"unknown trajectory format '.csv'"):
        read_trajectory(tmp_path / "run.csv")
    with raises_naming(tmp_path / "run.npz", "unknown trajectory format 'hdf5'"):
        read_trajectory(tmp_path / "run.npz", format="hdf5")


# --- shared data locator -----------------------------------------------------------------------


def test_env_override_and_kp_filter(tmp_path, monkeypatch):
    folder = tmp_path / "bam_xl330"
    folder.mkdir()
    write_json(folder / "b.json", bam_log(kp=400))
    write_json(folder / "a.json", bam_log(kp=100))
    tail_kp = bam_log(kp=None)
    del tail_kp["kp"]
    (folder / "c.json").write_text(json.dumps(tail_kp)[:-1] + ', "kp": 400}')  # kp after the entries
    (folder / "README.md").write_text("not a log")
    monkeypatch.setenv("TWIN_BAYES_DATA", str(tmp_path))
    assert bam_xl330_dir() == folder
    assert [p.name for p in bam_logs()] == ["a.json", "b.json", "c.json"]
    assert [p.name for p in bam_logs(kp=400)] == ["b.json", "c.json"]
    assert log_kp(folder / "c.json") == 400.0
    monkeypatch.setenv("TWIN_BAYES_DATA", str(tmp_path / "nowhere"))
    assert bam_xl330_dir() is None and bam_logs() == []


# --- the real XL330 logs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_logs() -> list[Path]:
    folder = bam_xl330_dir()
    if folder is None:
        pytest.skip("shared/data/bam_xl330 not found (set TWIN_BAYES_DATA to its parent folder)")
    return bam_logs()


def test_real_logs_plausible(real_logs):
    assert len(real_logs) == 12
    for path in real_logs:
        traj = read_trajectory(path)
        s = traj.settings
        assert s["servo_kp"] in {100.0, 200.0, 400.0}
        assert s["servo_vin"] == pytest.approx(7.4, abs=0.3)
        assert s["dt"] == 0.005 and traj.dt == pytest.approx(0.005, rel=1e-6)
        assert s["mass"] == 0.49 and s["length"] == 0.1
        assert traj.meta["motor"] == "xl330"
        assert traj.meta["trajectory"] in {"sin_sin", "lift_and_drop", "up_and_down", "sin_time_square"}
        assert 1000 <= len(traj) <= 1500 and traj.q.shape == (len(traj), 1)
        goals = traj.ctrl[traj.ctrl != SERVO_TORQUE_OFF]    # torque_enable = false -> SERVO_TORQUE_OFF
        assert np.abs(traj.q).max() < np.pi and np.abs(goals).max() < np.pi
        assert (len(goals) < len(traj)) == (traj.meta["trajectory"] == "lift_and_drop")
        assert np.abs(traj.qd).max() < 20.0


def test_real_logs_per_kp(real_logs):
    counts = Counter(log_kp(p) for p in real_logs)
    assert counts == {100.0: 4, 200.0: 4, 400.0: 4}
    for kp in (100, 200, 400):
        assert {read_bam(p).meta["trajectory"] for p in bam_logs(kp=kp)} == {
            "sin_sin", "lift_and_drop", "up_and_down", "sin_time_square"}


def test_bam_torque_off_becomes_servo_torque_off_command(tmp_path):
    log = bam_log()
    for k, entry in enumerate(log["entries"]):
        entry["torque_enable"] = k < 6
    traj = read_bam(write_json(tmp_path / "drop.json", log))
    assert traj.ctrl[:6, 0].tolist() == [0.1] * 6 and (traj.ctrl[6:, 0] == SERVO_TORQUE_OFF).all()
    log["entries"][3]["torque_enable"] = 1
    path = write_json(tmp_path / "bad.json", log)
    with raises_naming(path, "entry 3 'torque_enable' is not a boolean"):
        read_bam(path)


def test_consecutive_windows_share_their_boundary_sample_and_drop_a_part_window():
    q, qd, ctrl = np.arange(12.0)[:, None], -np.arange(12.0)[:, None], 10 + np.arange(12.0)[:, None]
    windows = consecutive_windows(q, qd, ctrl, 4)          # rows 0-3, 3-6, 6-9; rows 9-11 make no whole window
    assert [w["q"][:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert all(np.array_equal(w["qd"], -w["q"]) and np.array_equal(w["ctrl"], 10 + w["q"]) for w in windows)
    assert consecutive_windows(q[:3], qd[:3], ctrl[:3], 4) == []
