"""The service's PUB messages as ROS 2 messages (see docs/ROS2.md for the topics and layouts).

- posterior and alert: std_msgs/String holding one JSON object;
- prediction: trajectory_msgs/JointTrajectory of the median (q50) positions and velocities, and
  std_msgs/Float64MultiArray of every band: data[0:Q] the quantile levels, data[Q:Q+h] the times
  (s after the prediction's start), then from data_offset = Q + h the bands (Q, h, nq + nv),
  q columns first, in the twin's joint order; and per observed sensor a Float64MultiArray of its
  readings' bands (Q, h, dim), laid out alike, row k read one step before its time;
- health: diagnostic_msgs/DiagnosticArray, one status for the twin and one for the bridge.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twin_bayes.service.protocol import SENSOR, Message
from twin_bayes.service.ros2_keys import DIAGNOSTICS, FLOAT_ARRAY, STRING, TRAJECTORY, ros_token, typestore
from twin_bayes.service.ros2_inbound import RobotJoints

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


def _time(ts, t_ns: int):
    return ts.types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)


def _duration(ts, t_ns: int):
    return ts.types["builtin_interfaces/msg/Duration"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)


def _header(ts, t_ns: int, frame_id: str = ""):
    return ts.types["std_msgs/msg/Header"](stamp=_time(ts, t_ns), frame_id=frame_id)


def string_message(distro: str, obj: Mapping[str, Any]) -> bytes:
    """CDR of a std_msgs/String holding `obj` as JSON."""
    ts = typestore(distro)
    return bytes(ts.serialize_cdr(ts.types[STRING](data=json.dumps(obj, allow_nan=False)), STRING))


def posterior_json(msg: Message) -> dict[str, Any]:
    """A posterior message or snapshot reply as {robot_id, version, stale, reason, applied_seq, summary}."""
    body = msg.extra
    return {"robot_id": msg.robot_id, **{k: body.get(k) for k in ("version", "stale", "reason", "applied_seq")},
            "summary": body.get("summary") or {}}


def sensor_output(sensor: str) -> str:
    """The output name of an observed sensor's predicted readings: 'prediction_bands/<sensor as a ROS name>'."""
    return f"prediction_bands/{ros_token(sensor)}"


def sensor_outputs(sensors: Sequence[str]) -> list[str]:
    """`sensor_output` of each sensor; ValueError if two sensors make one ROS name (e.g. 'a-b' and 'a_b')."""
    by_output: dict[str, list[str]] = {}
    for sensor in sensors:
        by_output.setdefault(sensor_output(sensor), []).append(sensor)
    for output, names in by_output.items():
        if len(names) > 1:
            raise ValueError(f"sensors {names} would all publish on <namespace>/{output} (a ROS name has only "
                             "[A-Za-z0-9_]): rename them in the MJCF so that they differ there")
    return list(by_output)


def bands_message(ts, quantiles: list[float], after_s: np.ndarray, bands: np.ndarray, label: str) -> bytes:
    """CDR of a Float64MultiArray of bands (Q, h, w): layout dims quantile, time and `label`; data the quantile
    levels (Q), the step times after the prediction's start (h) s, then the bands from data_offset = Q + h."""
    dim = ts.types["std_msgs/msg/MultiArrayDimension"]
    Q, h, w = bands.shape
    layout = ts.types["std_msgs/msg/MultiArrayLayout"](
        dim=[dim(label="quantile", size=Q, stride=Q * h * w), dim(label="time", size=h, stride=h * w),
             dim(label=label, size=w, stride=w)], data_offset=Q + h)
    data = np.concatenate([quantiles, after_s, np.asarray(bands, np.float64).ravel()])
    return bytes(ts.serialize_cdr(ts.types[FLOAT_ARRAY](layout=layout, data=data), FLOAT_ARRAY))


def prediction_messages(msg: Message, robot: RobotJoints, distro: str) -> list[tuple[str, bytes]]:
    """[(output name, CDR)] of a prediction: 'prediction' (JointTrajectory of the median, when the
    quantiles include 0.5), 'prediction_bands' (Float64MultiArray) and, per sensor of `robot.sensors`
    the prediction carries, its readings' bands (`sensor_output`, Float64MultiArray)."""
    ts = typestore(distro)
    quantiles = [float(x) for x in msg.extra.get("quantiles", [])]
    t, q, qd = (np.asarray(msg.arrays[k], np.float64) for k in ("t", "q_bands", "qd_bands"))
    # stamps to the microsecond: float seconds since the epoch carry only ~0.2 us
    start = float(t[0]) - robot.dt  # the state the prediction starts from
    start_ns = int(start) * 10**9 + round((start - int(start)) * 1e6) * 1000
    after_ns = [round((float(x) - start) * 1e6) * 1000 for x in t]
    out = []
    if 0.5 in quantiles:
        i = quantiles.index(0.5)
        point = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"]
        points = [point(positions=q[i, k], velocities=qd[i, k], accelerations=np.zeros(0), effort=np.zeros(0),
                        time_from_start=_duration(ts, after_ns[k])) for k in range(len(t))]
        traj = ts.types[TRAJECTORY](header=_header(ts, start_ns), joint_names=list(robot.joints), points=points)
        out.append(("prediction", bytes(ts.serialize_cdr(traj, TRAJECTORY))))
    after_s = np.asarray(after_ns) * 1e-9
    out.append(("prediction_bands", bands_message(ts, quantiles, after_s, np.concatenate([q, qd], axis=-1), "q_qd")))
    out += [(sensor_output(s), bands_message(ts, quantiles, after_s, msg.arrays[SENSOR + s], "axis"))
            for s in robot.sensors if SENSOR + s in msg.arrays]
    return out


def _value(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.6g}"
    return json.dumps(x) if isinstance(x, (list, dict)) else str(x)


def diagnostics(distro: str, robot_id: str, now_ns: int, health: Mapping[str, Any] | None,
                health_age_s: float | None, bridge: Mapping[str, Any]) -> bytes:
    """CDR of a DiagnosticArray: the twin's status from the latest service health (STALE when there is
    none for 3 s) and the bridge's counters (WARN once a message was rejected or a chunk refused)."""
    ts = typestore(distro)
    status, kv = ts.types["diagnostic_msgs/msg/DiagnosticStatus"], ts.types["diagnostic_msgs/msg/KeyValue"]
    robot = (health or {}).get("robots", {}).get(robot_id)
    if robot is None or health_age_s is None or health_age_s > 3.0:
        level, text, values = STALE, "no health from the twin service", {}
    else:
        cal = robot.get("calibration") or {}
        values = {k: robot.get(k) for k in ("posterior_version", "stale", "reason", "windows", "rejected_windows",
                                            "chunks", "samples", "silent")}
        values.update({k: cal.get(k) for k in ("coverage_50", "coverage_90", "crps", "log_score")})
        values["alerts"] = robot.get("alerts")
        problems = [p for p in health.get("problems", []) if robot_id in p]
        level = WARN if (robot.get("stale") or robot.get("alerts") or problems or health.get("status") != "ok") else OK
        text = "; ".join(problems) or (f"posterior v{robot.get('posterior_version')}"
                                       + (f" (stale: {robot.get('reason')})" if robot.get("stale") else ""))
    twin = status(level=np.uint8(level), name=f"twin_bayes: {robot_id} twin", message=text, hardware_id=robot_id,
                  values=[kv(key=k, value=_value(v)) for k, v in values.items()])
    troubled = bridge.get("rejected_total", 0) or bridge.get("link", {}).get("rejected", 0)
    link = status(level=np.uint8(WARN if troubled else OK), name=f"twin_bayes: {robot_id} ros2 bridge",
                  message=f"{bridge.get('rejected_total', 0)} messages rejected", hardware_id=robot_id,
                  values=[kv(key=k, value=_value(v)) for k, v in bridge.items()])
    array = ts.types[DIAGNOSTICS](header=_header(ts, now_ns), status=[twin, link])
    return bytes(ts.serialize_cdr(array, DIAGNOSTICS))
