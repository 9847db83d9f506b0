"""JSON servo logs of the Rhoban "bam" (Better Actuator Models) project, e.g. the Dynamixel XL330 rig.

A log is one JSON object: ``kp`` (firmware P gain), ``vin`` (supply, V), ``mass`` (kg), ``length`` (m),
``dt`` (nominal control period, s), optional descriptors such as ``motor`` and ``trajectory``, and
``entries``: a list of samples, each with ``timestamp`` (s), ``position`` (rad), ``speed`` (rad/s) and
``goal_position`` (rad, the command sent), optional ``torque_enable`` (false: the servo's motor is
disconnected; the command becomes ``SERVO_TORQUE_OFF``). Other entry fields (load, input_volts, temp,
...) are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twin_bayes.data.trajectory import DataError, Trajectory

# A servo goal at or above this (rad) means "torque off": the driver disconnects the motor, which
# then gives no torque at all (no back-EMF braking either); friction still acts. Recordings mark
# such steps this way (the bam logs' torque_enable = false); the servo models of
# twin_bayes.sim.actuators give no motor torque for it.
SERVO_TORQUE_OFF = 1.0e3

#: Top-level key -> settings name.
SETTINGS_KEYS = {"kp": "servo_kp", "vin": "servo_vin", "mass": "mass", "length": "length", "dt": "dt"}
ENTRY_KEYS = ("timestamp", "position", "speed", "goal_position")
#: Largest accepted relative gap between the median timestamp step and the declared dt.
DT_TOLERANCE = 0.1


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_bam(path: str | Path) -> Trajectory:
    """Read a bam JSON log as a Trajectory with q, qd, ctrl of shape (T, 1).

    settings: servo_kp, servo_vin, mass, length, dt (the period the model steps at; timestamps,
    which may jitter, are kept as recorded) plus any other numeric top-level value; non-numeric
    top-level values (motor, trajectory, ...) go to meta as strings.
    """
    source = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            log = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: malformed JSON ({exc})") from None
    if not isinstance(log, dict):
        raise DataError(f"{source}: top level must be a JSON object, got {type(log).__name__}")
    for key in (*SETTINGS_KEYS, "entries"):
        if key not in log:
            raise DataError(f"{source}: missing key {key!r}")
    entries = log["entries"]
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: 'entries' must be a non-empty list")

    columns = np.empty((len(entries), len(ENTRY_KEYS)), dtype=np.float64)
    torque_on = np.ones(len(entries), dtype=bool)
    for row, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: entry {row} is not an object")
        for col, key in enumerate(ENTRY_KEYS):
            if key not in entry:
                raise DataError(f"{source}: entry {row} missing key {key!r}")
            if not _number(entry[key]):
                raise DataError(f"{source}: entry {row} {key!r} is not a number: {entry[key]!r}")
            columns[row, col] = entry[key]
        enabled = entry.get("torque_enable", True)
        if not isinstance(enabled, bool):
            raise DataError(f"{source}: entry {row} 'torque_enable' is not a boolean: {enabled!r}")
        torque_on[row] = enabled

    settings: dict[str, float] = {}
    meta: dict[str, str] = {}
    for key, value in log.items():
        if key == "entries":
            continue
        if key in SETTINGS_KEYS and not _number(value):
            raise DataError(f"{source}: {key!r} must be a number, got {value!r}")
        if _number(value):
            settings[SETTINGS_KEYS.get(key, key)] = float(value)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)

    traj = Trajectory(
        t=columns[:, 0],
        q=columns[:, 1:2],
        qd=columns[:, 2:3],
        ctrl=np.where(torque_on, columns[:, 3], SERVO_TORQUE_OFF)[:, None],
        settings=settings,
        source=source,
        meta=meta,
    )
    dt = settings["dt"]
    if dt <= 0 or abs(traj.dt - dt) > DT_TOLERANCE * dt:
        raise DataError(f"{source}: declared dt={dt} s disagrees with the median timestamp step {traj.dt:.6g} s")
    return traj
