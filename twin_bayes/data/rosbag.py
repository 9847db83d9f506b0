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
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from twin_bayes.data.trajectory import DataError, Trajectory

JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/twin/commands"
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT_ARRAY = "std_msgs/msg/Float64MultiArray"
STORAGES = ("mcap", "sqlite3")


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def read_rosbag(path: str | Path, joint_topic: str = JOINT_TOPIC, command_topic: str = COMMAND_TOPIC,
                joints: Sequence[str] | None = None, settings: Mapping[str, float] | None = None) -> Trajectory:
    """Read a rosbag2 folder (or single .mcap/.db3 file) as q, qd (T, joints), ctrl (T, nu).

    joints: joint names in the order wanted (default: the order of the first JointState).
    settings: known constants of the recording (e.g. servo_kp), attached to the Trajectory.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import ReaderError

    src = str(path)
    states: list[tuple[int, np.ndarray, np.ndarray]] = []
    commands: list[tuple[int, np.ndarray]] = []
    order: list[str] | None = list(joints) if joints is not None else None
    try:
        with AnyReader([Path(path)], default_typestore=_typestore()) as reader:
            conns = {c.topic: c for c in reader.connections}
            for topic, types in ((joint_topic, (JOINT_STATE,)), (command_topic, (JOINT_STATE, FLOAT_ARRAY))):
                if topic not in conns:
                    raise DataError(f"{src}: no topic {topic!r}; topics: {sorted(conns)}")
                if conns[topic].msgtype not in types:
                    raise DataError(f"{src}: {topic} is {conns[topic].msgtype}, expected one of {list(types)}")
            for conn, stamp, raw in reader.messages(connections=[conns[joint_topic], conns[command_topic]]):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == joint_topic:
                    order = order or list(msg.name)
                    states.append((stamp, *_joint_arrays(src, msg, order)))
                else:
                    commands.append((stamp, _command(src, msg, order)))
    except (AnyReaderError, ReaderError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{src}: cannot read bag ({type(exc).__name__}: {exc})") from None
    return _align(src, states, commands, dict(settings or {}), order or [])


def _joint_arrays(src: str, msg, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    names = list(msg.name)
    missing = [j for j in order if j not in names]
    if missing:
        raise DataError(f"{src}: JointState lacks joints {missing} (has {names})")
    if len(msg.position) != len(names) or len(msg.velocity) != len(names):
        raise DataError(f"{src}: JointState needs position and velocity for each of {names}")
    idx = [names.index(j) for j in order]
    return np.asarray(msg.position, np.float64)[idx], np.asarray(msg.velocity, np.float64)[idx]


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


def _align(src: str, states, commands, settings: dict[str, float], order: list[str]) -> Trajectory:
    if not commands:
        raise DataError(f"{src}: no command messages")
    widths = {len(c) for _, c in commands}
    if len(widths) != 1:
        raise DataError(f"{src}: command messages have different lengths {sorted(widths)}")
    cmd_t = np.array([s for s, _ in commands], np.int64)
    cmd = np.stack([c for _, c in commands])
    st_t = np.array([s for s, _, _ in states], np.int64)
    which = np.searchsorted(cmd_t, st_t, side="right") - 1
    keep = which >= 0
    if keep.sum() < 2:
        raise DataError(f"{src}: fewer than 2 joint states after the first command")
    t_ns = st_t[keep]
    return Trajectory(
        t=(t_ns - t_ns[0]) * 1e-9,
        q=np.stack([states[i][1] for i in np.flatnonzero(keep)]),
        qd=np.stack([states[i][2] for i in np.flatnonzero(keep)]),
        ctrl=cmd[which[keep]],
        settings=settings, source=src, meta={"joints": ",".join(order)},
    )


def write_rosbag(path: str | Path, traj: Trajectory, joints: Sequence[str], storage: str = "mcap",
                 joint_topic: str = JOINT_TOPIC, command_topic: str = COMMAND_TOPIC) -> Path:
    """Write a Trajectory as a rosbag2 folder in the layout `read_rosbag` reads.

    Row k becomes a Float64MultiArray command received at t_k and a JointState received 1 ns
    later (the command of row k is held from its state on). Returns the bag folder.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if len(joints) != traj.q.shape[1]:
        raise ValueError(f"{len(joints)} joint names for {traj.q.shape[1]} measured joints")
    ts = _typestore()
    JointState, Float64MultiArray = ts.types[JOINT_STATE], ts.types[FLOAT_ARRAY]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Layout = ts.types["std_msgs/msg/MultiArrayLayout"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    start_ns = 1_700_000_000 * 10**9
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        c_state = writer.add_connection(joint_topic, JOINT_STATE, typestore=ts)
        c_cmd = writer.add_connection(command_topic, FLOAT_ARRAY, typestore=ts)
        for k in range(len(traj)):
            stamp = start_ns + int(round(traj.t[k] * 1e9))
            cmd = Float64MultiArray(layout=Layout(dim=[], data_offset=0), data=np.asarray(traj.ctrl[k]))
            writer.write(c_cmd, stamp, ts.serialize_cdr(cmd, FLOAT_ARRAY))
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="")
            msg = JointState(header=header, name=list(joints), position=np.asarray(traj.q[k]),
                             velocity=np.asarray(traj.qd[k]), effort=np.zeros(0))
            writer.write(c_state, stamp + 1, ts.serialize_cdr(msg, JOINT_STATE))
    return Path(path)
