"""ROS 2 bags (rosbag2, MCAP or SQLite storage) as Trajectories, through the `rosbags` library.

A bag holds two topics:
- the measured joints, `sensor_msgs/msg/JointState` (default `/joint_states`): `name`, `position`
  (rad or m) and `velocity` (rad/s or m/s) per joint; messages may list joints in any order.
- the commands, default `/twin/commands`: either `std_msgs/msg/Float64MultiArray` whose `data`
  holds one command per actuator, or a `sensor_msgs/msg/JointState` whose `effort` (torque
  commands), else `position` (goal positions), is taken in the joint order of the measurements.
Time is the bag's receive timestamp of each message (one clock for both topics), in seconds from
the first measurement. Each measurement gets the latest command received at or before it (held,
as on the robot); measurements before the first command are dropped.

Sensor topics (optional) become sensor channels (docs/SENSORS.md), each of a kind of TOPIC_KINDS:
IMU topics (`sensor_msgs/msg/Imu`, `imu_topics`): `angular_velocity` (3, rad/s) for a `gyro`,
`linear_acceleration` (3, m/s²) for an `accelerometer`, `orientation` (4, MuJoCo order w, x, y, z;
ROS fields x, y, z, w) for a `framequat`; wrench topics (`geometry_msgs/msg/WrenchStamped`,
`wrench_topics`): `force` (3, N) for a `force` sensor, `torque` (3, N·m) for a `torque` sensor; pose topics
(`geometry_msgs/msg/PoseStamped`, `pose_topics`, motion capture): `position` (3, m) for a `framepos`,
`orientation` (4, w, x, y, z) for a `framequat`.
Each is interpolated linearly onto the measurement times (same receive clock). The JointStates also feed
encoders and joint torque sensors (`joint_sensors`, JointSensor): a joint's position, velocity or effort.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from twin_bayes.data.trajectory import DataError, Trajectory

JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/twin/commands"
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT_ARRAY = "std_msgs/msg/Float64MultiArray"
IMU = "sensor_msgs/msg/Imu"
WRENCH = "geometry_msgs/msg/WrenchStamped"
POSE = "geometry_msgs/msg/PoseStamped"
#: Imu message field -> columns of the sensor channel it fills.
IMU_FIELDS = {"angular_velocity": 3, "linear_acceleration": 3, "orientation": 4}
#: WrenchStamped field (of its `wrench`) -> columns of the sensor channel it fills.
WRENCH_FIELDS = {"force": 3, "torque": 3}
#: PoseStamped field (of its `pose`) -> columns of the sensor channel it fills.
POSE_FIELDS = {"position": 3, "orientation": 4}
STORAGES = ("mcap", "sqlite3")
#: MJCF sensor type -> the sensor_msgs/JointState field (of the sensor's joint) that feeds it: an encoder's
#: position, velocity; the actuator force at a joint, one actuator's force (1-D all, on a hinge or slide joint).
JOINT_STATE_SENSOR_TYPES = {"jointpos": "position", "jointvel": "velocity", "jointactuatorfrc": "effort",
                            "actuatorfrc": "effort"}


class JointSensor(NamedTuple):
    """An MJCF sensor a JointState feeds: its reading is the message's `field` ('position', 'velocity', 'effort') of
    `joint` (by name) over `divisor` (an actuatorfrc's gear: the actuator's force is the joint's torque over it; 1 for
    the others). The ROS 2 bridge and `twin-bayes fit` find them in a twin config
    (`service.ros2_inbound.robot_joints`)."""

    sensor: str
    field: str
    joint: str
    divisor: float = 1.0


def _array(v) -> np.ndarray:
    """A geometry_msgs Vector3 or Point as (3,) x, y, z; a Quaternion as (4,) w, x, y, z (MuJoCo's order)."""
    return np.array([v.w, v.x, v.y, v.z] if hasattr(v, "w") else [v.x, v.y, v.z], np.float64)


def _imu_value(msg, field: str) -> np.ndarray | None:
    """An Imu field as (3,) x, y, z or (4,) w, x, y, z; None where the message marks it not provided
    (covariance[0] = -1)."""
    return None if getattr(msg, f"{field}_covariance")[0] == -1 else _array(getattr(msg, field))


def _imu_msg(ts, header, values: Mapping[str, np.ndarray]):
    """An Imu message from {field: (3,) x, y, z or (4,) w, x, y, z}; fields not given are marked not provided."""
    Vector3, Quaternion = ts.types["geometry_msgs/msg/Vector3"], ts.types["geometry_msgs/msg/Quaternion"]
    v = {field: [float(a) for a in values.get(field, np.zeros(n))] for field, n in IMU_FIELDS.items()}
    cov = {f"{field}_covariance": np.r_[0.0 if field in values else -1.0, np.zeros(8)] for field in IMU_FIELDS}
    w, x, y, z = v["orientation"]
    return ts.types[IMU](header=header, orientation=Quaternion(x=x, y=y, z=z, w=w),
                         angular_velocity=Vector3(*v["angular_velocity"]),
                         linear_acceleration=Vector3(*v["linear_acceleration"]), **cov)


def _wrench_value(msg, field: str) -> np.ndarray:
    """A WrenchStamped field, wrench.force (N) or wrench.torque (N·m), as (3,) x, y, z."""
    return _array(getattr(msg.wrench, field))


def _wrench_msg(ts, header, values: Mapping[str, np.ndarray]):
    """A WrenchStamped from {field: (3,) x, y, z}; fields not given are zero (the message cannot mark them absent)."""
    Vector3 = ts.types["geometry_msgs/msg/Vector3"]
    parts = {field: Vector3(*(float(a) for a in values.get(field, np.zeros(3)))) for field in WRENCH_FIELDS}
    return ts.types[WRENCH](header=header, wrench=ts.types["geometry_msgs/msg/Wrench"](**parts))


def _pose_value(msg, field: str) -> np.ndarray:
    """A PoseStamped field, pose.position (m) as (3,) x, y, z or pose.orientation as (4,) w, x, y, z."""
    return _array(getattr(msg.pose, field))


def _pose_msg(ts, header, values: Mapping[str, np.ndarray]):
    """A PoseStamped from {field: (3,) x, y, z or (4,) w, x, y, z}; a position not given is zero, an orientation
    not given the identity (the message cannot mark them absent)."""
    x, y, z = (float(a) for a in values.get("position", np.zeros(3)))
    qw, qx, qy, qz = (float(a) for a in values.get("orientation", (1.0, 0.0, 0.0, 0.0)))
    pose = ts.types["geometry_msgs/msg/Pose"](position=ts.types["geometry_msgs/msg/Point"](x=x, y=y, z=z),
                                              orientation=ts.types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz,
                                                                                                   w=qw))
    return ts.types[POSE](header=header, pose=pose)


class TopicKind(NamedTuple):
    """A kind of sensor topic whose fields are sensor channels, in bags and live (the ROS 2 bridge): what its messages
    are called (`name`), their `msgtype`, the `fields` {field: columns; 4 columns are a unit quaternion w, x, y, z},
    the MJCF sensor type each field feeds (`sensor_types`), the fields a topic given without a mapping feeds (`bare`,
    each to the twin's one observed sensor of its type), `value(msg, field)` a message's field as (columns,) (None:
    marked not provided) and `message(typestore, header, {field: (columns,)})` the message of one row."""

    name: str
    msgtype: str
    fields: Mapping[str, int]
    sensor_types: Mapping[str, str]
    bare: tuple[str, ...]
    value: Callable[[Any, str], np.ndarray | None]
    message: Callable[[Any, Any, Mapping[str, np.ndarray]], Any]


#: Kind of sensor topic, as named by read_rosbag's and write_rosbag's `<kind>_topics` and the command line's
#: `--<kind>` -> its messages. A force or torque sensor reads in its site's frame, a pose (motion capture) in the frame
#: of the framepos or framequat sensor's reference (the world where it names none); the message's frame_id is not read.
TOPIC_KINDS = {
    "imu": TopicKind("IMU", IMU, IMU_FIELDS,
                     {"angular_velocity": "gyro", "linear_acceleration": "accelerometer", "orientation": "framequat"},
                     ("angular_velocity", "linear_acceleration"), _imu_value, _imu_msg),
    "wrench": TopicKind("WrenchStamped", WRENCH, WRENCH_FIELDS, {"force": "force", "torque": "torque"},
                        ("force", "torque"), _wrench_value, _wrench_msg),
    "pose": TopicKind("PoseStamped", POSE, POSE_FIELDS, {"position": "framepos", "orientation": "framequat"},
                      ("position", "orientation"), _pose_value, _pose_msg)}


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def parse_sensor_topics(specs: Sequence[str], known: Collection[str] = tuple(IMU_FIELDS),
                     option: str = "--imu") -> dict[str, dict[str, str]]:
    """The command line's `--imu TOPIC=FIELD:SENSOR[,FIELD:SENSOR...]` specs as `read_rosbag`'s
    imu_topics, e.g. "/imu=angular_velocity:torso_gyro,linear_acceleration:torso_accel"; `known` (the
    fields) and `option` parse another option of that form (`--wrench`: WRENCH_FIELDS, wrench_topics). ValueError
    names a malformed spec, an unknown field, or a topic or field given twice (`read_rosbag` checks the rest
    against the bag)."""
    topics: dict[str, dict[str, str]] = {}
    for spec in specs:
        topic, sep, fields = spec.partition("=")
        pairs = [f.partition(":") for f in fields.split(",")] if sep else []
        if not topic or not pairs or any(not field or not colon or not name for field, colon, name in pairs):
            raise ValueError(f"{option} {spec!r}: expected TOPIC=FIELD:SENSOR[,FIELD:SENSOR...] with FIELD one of "
                             f"{list(known)}")
        if topic in topics:
            raise ValueError(f"{option}: topic {topic} given twice")
        mapping = {}
        for field, _, name in pairs:
            if field not in known:
                raise ValueError(f"{option} {spec!r}: unknown field {field!r}; expected one of {sorted(known)}")
            if field in mapping:
                raise ValueError(f"{option} {spec!r}: field {field} given twice")
            mapping[field] = name
        topics[topic] = mapping
    return topics


def read_rosbag(path: str | Path, joint_topic: str = JOINT_TOPIC, command_topic: str = COMMAND_TOPIC,
                joints: Sequence[str] | None = None, settings: Mapping[str, float] | None = None,
                imu_topics: Mapping[str, Mapping[str, str]] | None = None,
                wrench_topics: Mapping[str, Mapping[str, str]] | None = None,
                pose_topics: Mapping[str, Mapping[str, str]] | None = None,
                joint_sensors: Sequence[JointSensor] = ()) -> Trajectory:
    """Read a rosbag2 folder (or single .mcap/.db3 file) as q, qd (T, joints), ctrl (T, nu), sensors.

    joints: joint names in the order wanted (default: the order of the first JointState).
    joint_sensors: sensors each JointState feeds (encoders, joint torque sensors), read at each measurement as
        (1,) channels: its position, velocity or effort of the sensor's joint over the divisor.
    settings: known constants of the recording (e.g. servo_kp), attached to the Trajectory.
    imu_topics: {Imu topic: {field: MJCF sensor name}}, fields from IMU_FIELDS, e.g.
        {"/imu": {"angular_velocity": "torso_gyro", "linear_acceleration": "torso_accel"}}.
        Each channel is interpolated linearly between the two messages around each measurement
        (holding the latest message would lag by up to one IMU period h; the linear error is at
        most h²/8·max|y''|, and zero where the stamps coincide). Orientation: normalised linear
        interpolation of the messages' quaternions made sign-continuous (q and -q are one
        rotation; the first message keeps its sign). Measurements before the first or after the
        last message of any sensor topic are dropped (no extrapolation).
    wrench_topics: {WrenchStamped topic: {field: MJCF sensor name}}, fields from WRENCH_FIELDS (force (3,) N,
        torque (3,) N·m), e.g. {"/wrist/ft": {"force": "wrist_force", "torque": "wrist_torque"}}; interpolated
        as the IMU's angular_velocity.
    pose_topics: {PoseStamped topic: {field: MJCF sensor name}}, fields from POSE_FIELDS (position (3,) m for a
        framepos, orientation (4,) w, x, y, z for a framequat: motion capture), interpolated as the IMU's fields.
        A sensor name is mapped once over all topics.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import ReaderError

    src = str(path)
    states: list[tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []   # stamp, q, qd, joint sensors
    commands: list[tuple[int, np.ndarray]] = []
    order: list[str] | None = list(joints) if joints is not None else None
    sensor_topics = _sensor_topics(src, {"imu": imu_topics, "wrench": wrench_topics, "pose": pose_topics})
    from_topics = {name for _, fields in sensor_topics.values() for name in fields.values()}
    twice = sorted({e.sensor for e in joint_sensors} & from_topics)
    if twice:
        raise DataError(f"{src}: sensors {twice} are fed by the JointState and by a sensor topic")
    readings: dict[str, list[tuple[int, dict[str, np.ndarray]]]] = {topic: [] for topic in sensor_topics}
    wanted = [(joint_topic, (JOINT_STATE,)), (command_topic, (JOINT_STATE, FLOAT_ARRAY))]
    wanted += [(topic, (kind.msgtype,)) for topic, (kind, _) in sensor_topics.items()]
    try:
        with AnyReader([Path(path)], default_typestore=_typestore()) as reader:
            conns = {c.topic: c for c in reader.connections}
            for topic, types in wanted:
                if topic not in conns:
                    raise DataError(f"{src}: no topic {topic!r}; topics: {sorted(conns)}")
                if conns[topic].msgtype not in types:
                    raise DataError(f"{src}: {topic} is {conns[topic].msgtype}, expected one of {list(types)}")
            for conn, stamp, raw in reader.messages(connections=[conns[topic] for topic, _ in wanted]):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == joint_topic:
                    order = order or list(msg.name)
                    states.append((stamp, *_joint_arrays(src, msg, order), _joint_sensor_row(src, msg, joint_sensors)))
                elif conn.topic == command_topic:
                    commands.append((stamp, _command(src, msg, order)))
                else:
                    readings[conn.topic].append((stamp, _row(src, conn.topic, msg, *sensor_topics[conn.topic])))
    except (AnyReaderError, ReaderError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{src}: cannot read bag ({type(exc).__name__}: {exc})") from None
    series = {topic: _series(src, topic, msgs, *sensor_topics[topic]) for topic, msgs in readings.items()}
    return _align(src, states, commands, dict(settings or {}), order or [], series)


def _sensor_topics(src: str, kinds: Mapping[str, Mapping | None]) -> dict[str, tuple[TopicKind, dict[str, str]]]:
    """{topic: (its TopicKind, {field: sensor name})} of `kinds` {kind of TOPIC_KINDS: {topic: {field: sensor name}}},
    checked: known fields, each mapped to a sensor name, each name and each topic used once."""
    out: dict[str, tuple[TopicKind, dict[str, str]]] = {}
    seen: set[str] = set()
    for key, topics in kinds.items():
        kind = TOPIC_KINDS[key]
        for topic, fields in (topics or {}).items():
            where = f"{src}: {kind.name} topic {topic}"
            if topic in out:
                raise DataError(f"{where}: also among the {out[topic][0].name} topics")
            unknown = sorted(set(fields) - kind.fields.keys())
            if unknown:
                raise DataError(f"{where}: unknown fields {unknown}; expected some of {list(kind.fields)}")
            if not fields:
                raise DataError(f"{where}: no field mapped to a sensor name")
            unnamed = [field for field, name in fields.items() if not name]
            if unnamed:
                raise DataError(f"{where}: fields {unnamed} mapped to no sensor name")
            names = [str(name) for name in fields.values()]
            twice = sorted({name for name in names if name in seen or names.count(name) > 1})
            if twice:
                raise DataError(f"{where}: sensor names {twice} mapped more than once")
            seen.update(names)
            out[topic] = (kind, {field: str(name) for field, name in fields.items()})
    return out


def _row(src: str, topic: str, msg, kind: TopicKind, fields: Mapping[str, str]) -> dict[str, np.ndarray]:
    """{field: (columns,)} of one message of a sensor topic."""
    row = {field: kind.value(msg, field) for field in fields}
    absent = [field for field, value in row.items() if value is None]
    if absent:
        raise DataError(f"{src}: {topic} marks {absent[0]} as not provided (covariance[0] = -1)")
    return row


def _series(src: str, topic: str, msgs, kind: TopicKind, fields: Mapping[str, str]):
    """(receive times (M,) ns, {sensor name: (unit, (M, columns) values)}); unit: quaternions, made unit and
    sign-continuous."""
    if len(msgs) < 2:
        raise DataError(f"{src}: {topic} has {len(msgs)} {kind.name} messages; interpolation needs at least 2")
    t = np.array([stamp for stamp, _ in msgs], np.int64)
    same = np.flatnonzero(np.diff(t) == 0)
    if same.size:
        raise DataError(f"{src}: {topic} messages {same[0]} and {same[0] + 1} have the same receive time")
    channels = {}
    for field, name in fields.items():
        y = np.stack([row[field] for _, row in msgs])
        bad = np.flatnonzero(~np.isfinite(y).all(axis=1))
        if bad.size:
            raise DataError(f"{src}: {topic} {field} is not finite in message {bad[0]} "
                            f"({bad.size} of {len(msgs)} messages)")
        unit = kind.fields[field] == 4
        if unit:
            norm = np.linalg.norm(y, axis=1)
            if (norm == 0).any():
                raise DataError(f"{src}: {topic} {field} has zero norm in message {np.flatnonzero(norm == 0)[0]}")
            y = y / norm[:, None]
            flip = np.where(np.sum(y[1:] * y[:-1], axis=1) < 0, -1.0, 1.0)
            y = y * np.cumprod(np.concatenate([[1.0], flip]))[:, None]
        channels[name] = (unit, y)
    return t, channels


def _interpolate(t: np.ndarray, y: np.ndarray, at: np.ndarray, unit: bool) -> np.ndarray:
    """y (M, dim) received at t (M,) ns, linearly interpolated at (T,) ns within [t_0, t_M-1]; unit: rows
    renormalised (nlerp)."""
    i = np.clip(np.searchsorted(t, at, side="right") - 1, 0, t.size - 2)
    w = ((at - t[i]) / (t[i + 1] - t[i]))[:, None]
    out = (1.0 - w) * y[i] + w * y[i + 1]
    return out / np.linalg.norm(out, axis=1, keepdims=True) if unit else out


def _joint_arrays(src: str, msg, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    names = list(msg.name)
    missing = [j for j in order if j not in names]
    if missing:
        raise DataError(f"{src}: JointState lacks joints {missing} (has {names})")
    if len(msg.position) != len(names) or len(msg.velocity) != len(names):
        raise DataError(f"{src}: JointState needs position and velocity for each of {names}")
    idx = [names.index(j) for j in order]
    return np.asarray(msg.position, np.float64)[idx], np.asarray(msg.velocity, np.float64)[idx]


def _joint_sensor_row(src: str, msg, joint_sensors: Sequence[JointSensor]) -> dict[str, np.ndarray]:
    """{sensor: (1,)} of one JointState: each sensor's field of its joint over its divisor."""
    names, row = list(msg.name), {}
    for e in joint_sensors:
        values = getattr(msg, e.field)
        if e.joint not in names or len(values) != len(names):
            has = f"no {e.field}" if not len(values) else f"{len(values)} {e.field} values for its {len(names)} names"
            lacks = f"lacks joint {e.joint!r}" if e.joint not in names else f"carries {has}"
            raise DataError(f"{src}: JointState {lacks}; sensor {e.sensor!r} reads the {e.field} of joint {e.joint!r}")
        row[e.sensor] = np.array([values[names.index(e.joint)] / e.divisor], np.float64)
        if not np.isfinite(row[e.sensor]).all():
            raise DataError(f"{src}: JointState {e.field} of joint {e.joint!r} (sensor {e.sensor!r}) is not finite")
    return row


def _command(src: str, msg, order: list[str] | None) -> np.ndarray:
    if not hasattr(msg, "name"):  # Float64MultiArray
        return np.asarray(msg.data, np.float64)
    values = msg.effort if len(msg.effort) else msg.position
    if not len(values) or len(values) != len(msg.name):
        raise DataError(f"{src}: command JointState needs effort or position for each of {list(msg.name)}")
    names = list(msg.name)
    if order is None or any(j not in names for j in order):
        return np.asarray(values, np.float64)
    return np.asarray(values, np.float64)[[names.index(j) for j in order]]


def _align(src: str, states, commands, settings: dict[str, float], order: list[str],
           series: Mapping[str, tuple[np.ndarray, dict]]) -> Trajectory:
    if not commands:
        raise DataError(f"{src}: no command messages")
    widths = {len(c) for _, c in commands}
    if len(widths) != 1:
        raise DataError(f"{src}: command messages have different lengths {sorted(widths)}")
    cmd_t = np.array([s for s, _ in commands], np.int64)
    cmd = np.stack([c for _, c in commands])
    st_t = np.array([s for s, *_ in states], np.int64)
    which = np.searchsorted(cmd_t, st_t, side="right") - 1
    keep = which >= 0
    for sensor_t, _ in series.values():
        keep &= (st_t >= sensor_t[0]) & (st_t <= sensor_t[-1])
    if keep.sum() < 2:
        span = f" within the time span of the messages of {list(series)}" if series else ""
        raise DataError(f"{src}: fewer than 2 joint states after the first command{span}")
    t_ns = st_t[keep]
    sensors = {name: _interpolate(sensor_t, y, t_ns, unit)
               for sensor_t, channels in series.values() for name, (unit, y) in channels.items()}
    sensors |= {name: np.stack([states[i][3][name] for i in np.flatnonzero(keep)]) for name in states[0][3]}
    return Trajectory(
        t=(t_ns - t_ns[0]) * 1e-9,
        q=np.stack([states[i][1] for i in np.flatnonzero(keep)]),
        qd=np.stack([states[i][2] for i in np.flatnonzero(keep)]),
        ctrl=cmd[which[keep]],
        settings=settings, source=src, meta={"joints": ",".join(order)}, sensors=sensors,
    )


def write_rosbag(path: str | Path, traj: Trajectory, joints: Sequence[str], storage: str = "mcap",
                 joint_topic: str = JOINT_TOPIC, command_topic: str = COMMAND_TOPIC,
                 imu_topics: Mapping[str, Mapping[str, str]] | None = None,
                 wrench_topics: Mapping[str, Mapping[str, str]] | None = None,
                 pose_topics: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """Write a Trajectory as a rosbag2 folder in the layout `read_rosbag` reads.

    Row k becomes a Float64MultiArray command received at t_k and a JointState received 1 ns
    later (the command of row k is held from its state on). imu_topics, wrench_topics, pose_topics ({topic: {field:
    sensor name}}, as read_rosbag's): row k of those sensor channels becomes an Imu (WrenchStamped, PoseStamped)
    message on each topic, received with JointState k; Imu fields not mapped are zero with
    covariance[0] = -1 (ROS: not provided), WrenchStamped fields not mapped zero, a PoseStamped's position not
    mapped zero and its orientation the identity. Returns the bag folder.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if len(joints) != traj.q.shape[1]:
        raise ValueError(f"{len(joints)} joint names for {traj.q.shape[1]} measured joints")
    sensor_topics = _sensor_topics(str(path), {"imu": imu_topics, "wrench": wrench_topics, "pose": pose_topics})
    for topic, (kind, fields) in sensor_topics.items():
        for field, name in fields.items():
            if name not in traj.sensors or traj.sensors[name].shape[1] != kind.fields[field]:
                raise ValueError(f"{topic} {field}: the trajectory has no {kind.fields[field]}-column sensor {name!r}")
    ts = _typestore()
    JointState, Float64MultiArray = ts.types[JOINT_STATE], ts.types[FLOAT_ARRAY]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Layout = ts.types["std_msgs/msg/MultiArrayLayout"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    start_ns = 1_700_000_000 * 10**9
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        c_state = writer.add_connection(joint_topic, JOINT_STATE, typestore=ts)
        c_cmd = writer.add_connection(command_topic, FLOAT_ARRAY, typestore=ts)
        c_sensor = {topic: writer.add_connection(topic, kind.msgtype, typestore=ts)
                    for topic, (kind, _) in sensor_topics.items()}
        for k in range(len(traj)):
            stamp = start_ns + int(round(traj.t[k] * 1e9))
            cmd = Float64MultiArray(layout=Layout(dim=[], data_offset=0), data=np.asarray(traj.ctrl[k]))
            writer.write(c_cmd, stamp, ts.serialize_cdr(cmd, FLOAT_ARRAY))
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="")
            msg = JointState(header=header, name=list(joints), position=np.asarray(traj.q[k]),
                             velocity=np.asarray(traj.qd[k]), effort=np.zeros(0))
            writer.write(c_state, stamp + 1, ts.serialize_cdr(msg, JOINT_STATE))
            for topic, (kind, fields) in sensor_topics.items():
                reading = kind.message(ts, header, {field: traj.sensors[name][k] for field, name in fields.items()})
                writer.write(c_sensor[topic], stamp + 1, ts.serialize_cdr(reading, kind.msgtype))
    return Path(path)
