"""ROS 2 bags written with `rosbags` (MCAP and SQLite storage) read back as Trajectories."""
import re
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from twin_bayes.data import DataError, Trajectory, read_trajectory, write_npz
from twin_bayes.data.rosbag import (FLOAT_ARRAY, IMU, JOINT_STATE, POSE, WRENCH, JointSensor, read_rosbag,
                                    write_rosbag)

TS = get_typestore(Stores.ROS2_HUMBLE)
S = 10**9


def recording(n=40, dt=0.01):
    rng = np.random.default_rng(0)
    t = np.arange(n) * dt
    return Trajectory(t=t, q=rng.normal(size=(n, 2)), qd=rng.normal(size=(n, 2)), ctrl=rng.normal(size=(n, 2)))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_in_both_storages(tmp_path, storage):
    rec = recording()
    bag = write_rosbag(tmp_path / "bag", rec, ["shoulder", "elbow"], storage=storage)
    back = read_rosbag(bag)
    for k in ("t", "q", "qd", "ctrl"):
        np.testing.assert_allclose(getattr(back, k), getattr(rec, k), atol=1e-9)
    assert back.meta["joints"] == "shoulder,elbow"
    np.testing.assert_array_equal(read_trajectory(bag, "rosbag2").q, back.q)
    np.testing.assert_array_equal(read_rosbag(bag, joints=["elbow", "shoulder"]).q, back.q[:, ::-1])


def write_bag(path, joint_msgs, command_msgs, command_type=FLOAT_ARRAY, sensors=None):
    """joint_msgs: (stamp_ns, names, position, velocity[, effort]); command_msgs: (stamp_ns, names, values);
    sensors: {topic: [(stamp_ns, message)]}, a topic of its first message's type (Imu, WrenchStamped)."""
    JointState, Header, Time = (TS.types[JOINT_STATE], TS.types["std_msgs/msg/Header"],
                                TS.types["builtin_interfaces/msg/Time"])
    Float64MultiArray, Layout = TS.types[FLOAT_ARRAY], TS.types["std_msgs/msg/MultiArrayLayout"]

    def joint_state(stamp, names, position, velocity, effort=()):
        return JointState(header=Header(stamp=Time(sec=stamp // S, nanosec=stamp % S), frame_id=""), name=names,
                          position=np.array(position, float), velocity=np.array(velocity, float),
                          effort=np.array(effort, float))

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cj = w.add_connection("/joint_states", JOINT_STATE, typestore=TS)
        cc = w.add_connection("/twin/commands", command_type, typestore=TS)
        for stamp, names, values in command_msgs:
            msg = (Float64MultiArray(layout=Layout(dim=[], data_offset=0), data=np.array(values, float))
                   if command_type == FLOAT_ARRAY else joint_state(stamp, names, [], [], values))
            w.write(cc, stamp, TS.serialize_cdr(msg, command_type))
        for stamp, names, pos, vel, *effort in joint_msgs:
            w.write(cj, stamp, TS.serialize_cdr(joint_state(stamp, names, pos, vel, *effort), JOINT_STATE))
        for topic, msgs in (sensors or {}).items():
            msgtype = msgs[0][1].__msgtype__
            ci = w.add_connection(topic, msgtype, typestore=TS)
            for stamp, msg in msgs:
                w.write(ci, stamp, TS.serialize_cdr(msg, msgtype))
    return path


def test_commands_are_held_between_messages_and_reordered_by_joint_name(tmp_path):
    joints = [(S + k * 10**7, ["b", "a"], [k, -k], [10 * k, -10 * k]) for k in range(6)]
    commands = [(S + 15 * 10**6, ["a", "b"], [1.0, 2.0]), (S + 35 * 10**6, ["a", "b"], [3.0, 4.0])]
    bag = write_bag(tmp_path / "bag", joints, commands, command_type=JOINT_STATE)
    rec = read_rosbag(bag, joints=["a", "b"])
    # states at 0 and 10 ms come before the first command: dropped; 20, 30 ms hold it; 40, 50 ms the second
    np.testing.assert_allclose(rec.t, [0.0, 0.01, 0.02, 0.03])
    np.testing.assert_array_equal(rec.q, [[-2, 2], [-3, 3], [-4, 4], [-5, 5]])
    np.testing.assert_array_equal(rec.ctrl, [[1, 2], [1, 2], [3, 4], [3, 4]])


@pytest.mark.parametrize("joints, commands, kwargs, message", [
    ([(S, ["a"], [0.0], [0.0]), (2 * S, ["a"], [1.0], [0.0])], [(S, [], [1.0])], {"command_topic": "/cmd"},
     "no topic '/cmd'"),
    ([(S, ["a"], [0.0], []), (2 * S, ["a"], [1.0], [])], [(S, [], [1.0])], {}, "position and velocity"),
    ([(S, ["a"], [0.0], [0.0]), (2 * S, ["a"], [1.0], [0.0])], [(S, [], [1.0])], {"joints": ["z"]},
     "lacks joints ['z']"),
    ([(S, ["a"], [0.0], [0.0])], [(2 * S, [], [1.0])], {}, "fewer than 2 joint states"),
    ([(S, ["a"], [0.0], [0.0]), (2 * S, ["a"], [1.0], [0.0])], [(S, [], [1.0]), (S + 1, [], [1.0, 2.0])], {},
     "different lengths"),
])
def test_malformed_bags_raise_data_error_naming_the_problem(tmp_path, joints, commands, kwargs, message):
    bag = write_bag(tmp_path / "bag", joints, commands)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        read_rosbag(bag, **kwargs)
    assert str(bag) in str(err.value)


def test_a_missing_bag_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read bag"):
        read_rosbag(tmp_path / "none")


# --- IMU topics -------------------------------------------------------------------------------
IMU_MAP = {"/imu": {"angular_velocity": "torso_gyro", "linear_acceleration": "torso_accel"},
           "/imu/orientation": {"orientation": "torso_quat"}}


def quat_wxyz(angle, axis=(1.0, 2.0, 2.0)):
    """(n, 4) unit quaternions w, x, y, z of rotations by angle (n,) rad about axis."""
    u = np.asarray(axis) / np.linalg.norm(axis)
    return np.column_stack([np.cos(angle / 2), np.sin(angle / 2)[:, None] * u])


def imu_msg(gyro=(0.0, 0.0, 0.0), accel=(0.0, 0.0, 9.81), xyzw=(0.0, 0.0, 0.0, 1.0), absent=()):
    """A sensor_msgs/Imu; fields in absent get covariance[0] = -1 (ROS: not provided)."""
    V, Q = TS.types["geometry_msgs/msg/Vector3"], TS.types["geometry_msgs/msg/Quaternion"]
    cov = {f"{f}_covariance": np.r_[-1.0 if f in absent else 0.0, np.zeros(8)]
           for f in ("orientation", "angular_velocity", "linear_acceleration")}
    header = TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                             frame_id="imu")
    return TS.types[IMU](header=header, orientation=Q(*map(float, xyzw)), angular_velocity=V(*map(float, gyro)),
                         linear_acceleration=V(*map(float, accel)), **cov)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_imu_channels_round_trip_exactly_when_stamps_coincide(tmp_path, storage):
    rec = recording()
    rng = np.random.default_rng(1)
    sensors = {"torso_gyro": rng.normal(size=(40, 3)), "torso_accel": rng.normal(9.81, 1.0, size=(40, 3)),
               "torso_quat": quat_wxyz(0.4 + 3.0 * rec.t)}
    rec = Trajectory(t=rec.t, q=rec.q, qd=rec.qd, ctrl=rec.ctrl, sensors=sensors)
    bag = write_rosbag(tmp_path / "bag", rec, ["shoulder", "elbow"], storage=storage, imu_topics=IMU_MAP)
    back = read_rosbag(bag, imu_topics=IMU_MAP)
    assert sorted(back.sensors) == sorted(sensors)
    for name, value in sensors.items():
        np.testing.assert_allclose(back.sensors[name], value, rtol=0, atol=1e-12)
    plain = read_rosbag(bag)  # IMU topics not asked for: joints and commands only, as before
    assert plain.sensors == {}
    for k in ("t", "q", "qd", "ctrl"):
        np.testing.assert_array_equal(getattr(plain, k), getattr(back, k))


def test_write_refuses_a_sensor_the_trajectory_lacks(tmp_path):
    with pytest.raises(ValueError, match="no 4-column sensor 'torso_quat'"):
        write_rosbag(tmp_path / "bag", recording(), ["a", "b"], imu_topics={"/imu": {"orientation": "torso_quat"}})


def test_imu_at_400_hz_is_interpolated_onto_500_hz_joint_stamps(tmp_path):
    h, freq, omega = 2.5e-3, np.array([1.0, 2.0, 3.0]), 4.0  # IMU period (s), gyro/accel Hz, rotation rad/s

    def gyro(t):
        return np.sin(2 * np.pi * freq * t[:, None] + 0.3)

    def accel(t):
        return 9.81 + np.cos(2 * np.pi * freq * t[:, None])

    joint_ns = S + np.arange(100) * 2 * 10**6  # 500 Hz over 0.2 s
    imu_ns = S + 3 * 10**6 + np.arange(57) * 2_500_000  # 400 Hz over 3..143 ms
    ti = (imu_ns - S) * 1e-9
    imu = [(int(s), imu_msg(g, a, [*q[1:], q[0]]))
           for s, g, a, q in zip(imu_ns, gyro(ti), accel(ti), quat_wxyz(omega * ti))]
    bag = write_bag(tmp_path / "bag", [(int(s), ["a"], [0.0], [0.0]) for s in joint_ns], [(S, [], [1.0])],
                    sensors={"/imu": imu})
    rec = read_rosbag(bag, imu_topics={"/imu": {**IMU_MAP["/imu"], "orientation": "torso_quat"}})
    kept = joint_ns[(joint_ns >= imu_ns[0]) & (joint_ns <= imu_ns[-1])]  # 4..142 ms: outside the IMU's span dropped
    assert len(rec) == kept.size == 70
    np.testing.assert_allclose(rec.t, (kept - kept[0]) * 1e-9, atol=1e-12)
    tj = (kept - S) * 1e-9
    # linear interpolation between samples h apart errs by at most h²/8·max|y''| = h²/8·(2πf)² here (measured
    # 0.89-0.96 of it; a hold errs by up to h·max|y'|, 100x more)
    bound = h**2 / 8 * (2 * np.pi * freq) ** 2
    assert (np.abs(rec.sensors["torso_gyro"] - gyro(tj)) <= bound).all()
    assert (np.abs(rec.sensors["torso_accel"] - accel(tj)) <= bound).all()
    assert (np.abs(rec.sensors["torso_gyro"] - gyro(tj)).max(axis=0) > 0.8 * bound).all()  # the bound is tight
    # nlerp between unit quaternions an arc phi apart reaches arc w·phi - phi³·w(1-w)(1-2w)/6 + O(phi⁵) at
    # weight w: off by at most phi³/(36√3) = 2.0e-9 for phi = omega·h/2 (measured 2.0e-9)
    phi = omega * h / 2
    quat_err = np.linalg.norm(rec.sensors["torso_quat"] - quat_wxyz(omega * tj), axis=1)
    assert (quat_err <= 1.01 * phi**3 / (36 * np.sqrt(3))).all()


def test_orientation_is_converted_to_mujoco_order_normalised_and_sign_continuous(tmp_path):
    import mujoco

    s45 = np.sqrt(0.5)
    xyzw = np.array([s45, 0.0, 0.0, s45])  # ROS order: 90° about x
    imu = [(S, imu_msg(xyzw=xyzw)), (S + 10**7, imu_msg(xyzw=-2 * xyzw)), (S + 2 * 10**7, imu_msg(xyzw=xyzw))]
    bag = write_bag(tmp_path / "bag", [(S + k * 5 * 10**6, ["a"], [0.0], [0.0]) for k in range(5)],
                    [(S, [], [1.0])], sensors={"/imu": imu})
    quat = read_rosbag(bag, imu_topics={"/imu": {"orientation": "torso_quat"}}).sensors["torso_quat"]
    np.testing.assert_allclose(quat, np.tile([s45, s45, 0.0, 0.0], (5, 1)), atol=1e-15)
    turned = np.zeros(3)
    mujoco.mju_rotVecQuat(turned, np.array([0.0, 1.0, 0.0]), quat[0])  # MuJoCo reads w, x, y, z
    np.testing.assert_allclose(turned, [0.0, 0.0, 1.0], atol=1e-15)


GOOD_IMU = [(S, imu_msg()), (2 * S, imu_msg())]


@pytest.mark.parametrize("imu, imu_topics, message", [
    (GOOD_IMU, {"/imu/data": {"angular_velocity": "g"}}, "no topic '/imu/data'"),
    (GOOD_IMU, {"/twin/commands": {"angular_velocity": "g"}}, "/twin/commands is std_msgs/msg/Float64MultiArray"),
    ([(S, imu_msg(gyro=(0.0, np.nan, 0.0))), (2 * S, imu_msg())], {"/imu": {"angular_velocity": "g"}},
     "/imu angular_velocity is not finite in message 0 (1 of 2 messages)"),
    ([(S, imu_msg()), (2 * S, imu_msg(accel=(np.inf, 0.0, 0.0)))], {"/imu": {"linear_acceleration": "a"}},
     "/imu linear_acceleration is not finite"),
    (GOOD_IMU, {"/imu": {"angular_velocity": ""}}, "/imu: fields ['angular_velocity'] mapped to no sensor name"),
    (GOOD_IMU, {"/imu": {}}, "/imu: no field mapped to a sensor name"),
    (GOOD_IMU, {"/imu": {"magnetic_field": "m"}}, "/imu: unknown fields ['magnetic_field']"),
    (GOOD_IMU, {"/imu": {"angular_velocity": "s", "linear_acceleration": "s"}}, "/imu: sensor names ['s'] mapped"),
    ([(S, imu_msg(xyzw=(0.0, 0.0, 0.0, 0.0))), (2 * S, imu_msg())], {"/imu": {"orientation": "q"}},
     "/imu orientation has zero norm in message 0"),
    ([(S, imu_msg()), (2 * S, imu_msg(absent=["orientation"]))], {"/imu": {"orientation": "q"}},
     "/imu marks orientation as not provided"),
    (GOOD_IMU[:1], {"/imu": {"angular_velocity": "g"}}, "/imu has 1 IMU messages"),
    ([(S, imu_msg()), (S, imu_msg())], {"/imu": {"angular_velocity": "g"}}, "/imu messages 0 and 1 have the same"),
    ([(S, imu_msg()), (S + 10**7, imu_msg())], {"/imu": {"angular_velocity": "g"}},
     "fewer than 2 joint states after the first command within the time span of the messages of ['/imu']"),
])
def test_bad_imu_input_raises_data_error_naming_file_topic_and_problem(tmp_path, imu, imu_topics, message):
    joints = [(S + k * S // 10, ["a"], [0.0], [0.0]) for k in range(11)]  # 1 s to 2 s, every 100 ms
    bag = write_bag(tmp_path / "bag", joints, [(S, [], [1.0])], sensors={"/imu": imu})
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_rosbag(bag, imu_topics=imu_topics)
    assert str(bag) in str(err.value)


def test_the_command_lines_imu_mapping_is_parsed_and_checked(tmp_path):
    from twin_bayes.data import parse_sensor_topics
    from twin_bayes.data.rosbag import WRENCH_FIELDS
    assert parse_sensor_topics(["/imu=angular_velocity:torso_gyro,linear_acceleration:torso_accel",
                             "/imu/orientation=orientation:torso_quat"]) == IMU_MAP
    for spec, message in (("/imu", "expected TOPIC=FIELD:SENSOR"), ("=orientation:q", "expected TOPIC"),
                          ("/imu=angular_velocity:", "expected TOPIC"),
                          ("/imu=gyro:torso_gyro", "unknown field 'gyro'"),
                          ("/imu=orientation:a,orientation:b", "field orientation given twice")):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_sensor_topics([spec])
    with pytest.raises(ValueError, match="topic /imu given twice"):
        parse_sensor_topics(["/imu=orientation:a", "/imu=angular_velocity:b"])
    assert parse_sensor_topics(["/ft=force:wrist_force,torque:wrist_torque"], WRENCH_FIELDS, "--wrench") == WRENCH_MAP
    with pytest.raises(ValueError, match=re.escape("--wrench '/ft=angular_velocity:g': unknown field")):
        parse_sensor_topics(["/ft=angular_velocity:g"], WRENCH_FIELDS, "--wrench")
    write_npz(tmp_path / "run.npz", recording())
    for topics in ({"imu_topics": IMU_MAP}, {"wrench_topics": WRENCH_MAP}):
        with pytest.raises(DataError, match=f"{next(iter(topics))} are read from rosbag2 recordings, not npz"):
            read_trajectory(tmp_path / "run.npz", **topics)


# --- WrenchStamped topics -----------------------------------------------------------------------
WRENCH_MAP = {"/ft": {"force": "wrist_force", "torque": "wrist_torque"}}


def wrench_msg(force=(0.0, 0.0, 0.0), torque=(0.0, 0.0, 0.0)):
    """A geometry_msgs/WrenchStamped of force (N) and torque (N·m)."""
    V = TS.types["geometry_msgs/msg/Vector3"]
    header = TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                             frame_id="ft")
    return TS.types[WRENCH](header=header, wrench=TS.types["geometry_msgs/msg/Wrench"](
        force=V(*map(float, force)), torque=V(*map(float, torque))))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_wrench_channels_round_trip_exactly_beside_imu_channels(tmp_path, storage):
    """Force and torque channels written as WrenchStamped messages received with the joint states read back
    exactly (interpolation weight 0 or 1), next to an Imu topic's gyro; a wrench topic with one field mapped
    reads back that field."""
    rng = np.random.default_rng(2)
    rec = recording()
    sensors = {"wrist_force": rng.normal(0.0, 20.0, size=(40, 3)), "wrist_torque": rng.normal(0.0, 2.0, size=(40, 3)),
               "torso_gyro": rng.normal(size=(40, 3))}
    rec = Trajectory(t=rec.t, q=rec.q, qd=rec.qd, ctrl=rec.ctrl, sensors=sensors)
    imu = {"/imu": {"angular_velocity": "torso_gyro"}}
    bag = write_rosbag(tmp_path / "bag", rec, ["shoulder", "elbow"], storage=storage, imu_topics=imu,
                       wrench_topics=WRENCH_MAP)
    back = read_rosbag(bag, imu_topics=imu, wrench_topics=WRENCH_MAP)
    assert sorted(back.sensors) == sorted(sensors)
    for name, value in sensors.items():
        np.testing.assert_array_equal(back.sensors[name], value)
    np.testing.assert_allclose(back.t, rec.t, atol=1e-9)
    np.testing.assert_array_equal(read_trajectory(bag, "rosbag2", wrench_topics=WRENCH_MAP).sensors["wrist_torque"],
                                  sensors["wrist_torque"])
    force_only = read_rosbag(bag, wrench_topics={"/ft": {"force": "f"}})
    assert list(force_only.sensors) == ["f"]
    np.testing.assert_array_equal(force_only.sensors["f"], sensors["wrist_force"])


def test_write_refuses_a_wrench_sensor_the_trajectory_lacks(tmp_path):
    with pytest.raises(ValueError, match="/ft torque: the trajectory has no 3-column sensor 'wrist_torque'"):
        write_rosbag(tmp_path / "bag", recording(), ["a", "b"], wrench_topics={"/ft": {"torque": "wrist_torque"}})


def test_wrench_between_joint_states_is_interpolated_linearly(tmp_path):
    """WrenchStamped every 7 ms from 3 ms, joint states every 10 ms: each joint state within the wrench messages'
    span gets force and torque interpolated linearly in receive time (numpy's interp), exactly the message's where
    stamps coincide (10, 80, 150 ms); joint states outside the span are dropped."""
    rng = np.random.default_rng(3)
    joint_ns = S + np.arange(21) * 10**7                    # 0..200 ms
    wrench_ns = S + 3 * 10**6 + np.arange(25) * 7 * 10**6   # 3..171 ms
    force, torque = rng.normal(0.0, 10.0, size=(25, 3)), rng.normal(0.0, 1.0, size=(25, 3))
    bag = write_bag(tmp_path / "bag", [(int(s), ["a"], [0.0], [0.0]) for s in joint_ns], [(S, [], [1.0])],
                    sensors={"/ft": [(int(s), wrench_msg(f, m)) for s, f, m in zip(wrench_ns, force, torque)]})
    rec = read_rosbag(bag, wrench_topics=WRENCH_MAP)
    kept = joint_ns[(joint_ns >= wrench_ns[0]) & (joint_ns <= wrench_ns[-1])]  # 10..170 ms
    assert len(rec) == kept.size == 17
    np.testing.assert_allclose(rec.t, (kept - kept[0]) * 1e-9, atol=1e-12)
    for name, y in (("wrist_force", force), ("wrist_torque", torque)):
        expected = np.column_stack([np.interp(kept, wrench_ns, y[:, c]) for c in range(3)])
        np.testing.assert_allclose(rec.sensors[name], expected, rtol=1e-12, atol=1e-12)
        same = np.flatnonzero(np.isin(kept, wrench_ns))
        assert (kept[same] - S).tolist() == [10**7, 8 * 10**7, 15 * 10**7]
        np.testing.assert_array_equal(rec.sensors[name][same], y[np.searchsorted(wrench_ns, kept[same])])


GOOD_WRENCH = [(S, wrench_msg()), (2 * S, wrench_msg())]


@pytest.mark.parametrize("wrench, kwargs, message", [
    ([(S, wrench_msg(force=(0.0, np.nan, 0.0))), (2 * S, wrench_msg())], {"wrench_topics": {"/ft": {"force": "f"}}},
     "/ft force is not finite in message 0 (1 of 2 messages)"),
    ([(S, wrench_msg()), (2 * S, wrench_msg(torque=(np.inf, 0.0, 0.0)))], {"wrench_topics": {"/ft": {"torque": "m"}}},
     "/ft torque is not finite in message 1"),
    (GOOD_WRENCH, {"wrench_topics": {"/imu": {"force": "f"}}},
     "/imu is sensor_msgs/msg/Imu, expected one of ['geometry_msgs/msg/WrenchStamped']"),
    (GOOD_WRENCH, {"imu_topics": {"/ft": {"angular_velocity": "g"}}},
     "/ft is geometry_msgs/msg/WrenchStamped, expected one of ['sensor_msgs/msg/Imu']"),
    (GOOD_WRENCH[:1], {"wrench_topics": {"/ft": {"force": "f"}}}, "/ft has 1 WrenchStamped messages"),
    ([(S, wrench_msg()), (S, wrench_msg())], {"wrench_topics": {"/ft": {"force": "f"}}},
     "/ft messages 0 and 1 have the same receive time"),
    (GOOD_WRENCH, {"wrench_topics": {"/ft": {"angular_velocity": "g"}}},
     "WrenchStamped topic /ft: unknown fields ['angular_velocity']; expected some of ['force', 'torque']"),
    (GOOD_WRENCH, {"wrench_topics": {"/ft": {"force": "s"}}, "imu_topics": {"/imu": {"angular_velocity": "s"}}},
     "WrenchStamped topic /ft: sensor names ['s'] mapped more than once"),
    (GOOD_WRENCH, {"wrench_topics": {"/imu": {"force": "f"}}, "imu_topics": {"/imu": {"angular_velocity": "g"}}},
     "WrenchStamped topic /imu: also among the IMU topics"),
    ([(S, wrench_msg()), (S + 10**7, wrench_msg())], {"wrench_topics": {"/ft": {"force": "f"}}},
     "within the time span of the messages of ['/ft']"),
])
def test_bad_wrench_input_raises_data_error_naming_file_topic_and_problem(tmp_path, wrench, kwargs, message):
    joints = [(S + k * S // 10, ["a"], [0.0], [0.0]) for k in range(11)]  # 1 s to 2 s, every 100 ms
    bag = write_bag(tmp_path / "bag", joints, [(S, [], [1.0])], sensors={"/imu": GOOD_IMU, "/ft": wrench})
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_rosbag(bag, **kwargs)
    assert str(bag) in str(err.value)


def test_fit_wrench_option_reads_the_bags_wrench_topics(tmp_path, capsys):
    """`fit --wrench TOPIC=force:S,torque:S` (with `--imu`) is parsed into read_rosbag's wrench_topics: the
    recordings `fit` reads carry the channels; a malformed spec and a topic the bag lacks stop `fit` (exit 2)
    naming them."""
    from twin_bayes.cli import _read, build_parser, main

    rng = np.random.default_rng(4)
    rec = recording()
    sensors = {"wrist_force": rng.normal(size=(40, 3)), "wrist_torque": rng.normal(size=(40, 3)),
               "torso_gyro": rng.normal(size=(40, 3))}
    rec = Trajectory(t=rec.t, q=rec.q, qd=rec.qd, ctrl=rec.ctrl, sensors=sensors)
    imu = {"/imu": {"angular_velocity": "torso_gyro"}}
    bag = write_rosbag(tmp_path / "run.mcap", rec, ["shoulder", "elbow"], imu_topics=imu, wrench_topics=WRENCH_MAP)
    base = ["fit", "--config", "arm2", "--data", str(bag), "--out", str(tmp_path / "fit")]
    args = build_parser()[0].parse_args([*base, "--wrench", "/ft=force:wrist_force,torque:wrist_torque",
                                         "--imu", "/imu=angular_velocity:torso_gyro"])
    (back,) = _read(args.config, args.data, {"imu": args.imu, "wrench": args.wrench, "pose": args.pose})
    expected = read_rosbag(bag, imu_topics=imu, wrench_topics=WRENCH_MAP)
    assert sorted(back.sensors) == sorted(expected.sensors) == sorted(sensors)
    for name in sensors:
        np.testing.assert_array_equal(back.sensors[name], expected.sensors[name])
    for spec, error in (("/ft=gyro:g", "--wrench '/ft=gyro:g': unknown field 'gyro'"),
                        ("/wrench=force:f", f"{bag}: no topic '/wrench'")):
        assert main([*base, "--wrench", spec]) == 2
        assert error in capsys.readouterr().err


# --- sensors a JointState feeds -----------------------------------------------------------------------
def effort_bag(tmp_path, efforts=None, names=("elbow", "shoulder")):
    """Six JointStates 10 ms apart naming the joints in `names` order, position k·(1, 2), velocity k·(10, 20),
    effort (efforts[k] or k·(-1, -2)); one command [3, 4] before them."""
    joints = [(S + k * 10**7, list(names), [k, 2 * k], [10 * k, 20 * k],
               (efforts[k] if efforts is not None else [-k, -2 * k])) for k in range(6)]
    return write_bag(tmp_path / "bag", joints, [(S, [], [3.0, 4.0])])


def test_a_jointstate_feeds_encoder_and_torque_sensors_by_joint_name(tmp_path):
    """Each sensor reads its joint's position, velocity or effort (over its divisor, an actuator's gear) in every
    JointState, whatever the message's joint order, as a (T, 1) channel aligned with q."""
    bag = effort_bag(tmp_path)
    fed = (JointSensor("shoulder_frc", "effort", "shoulder", 2.0), JointSensor("elbow_tau", "effort", "elbow"),
           JointSensor("elbow_pos", "position", "elbow"), JointSensor("shoulder_vel", "velocity", "shoulder"))
    rec = read_rosbag(bag, joints=["shoulder", "elbow"], joint_sensors=fed)
    k = np.arange(6.0)[:, None]
    np.testing.assert_array_equal(rec.q, np.hstack([2 * k, k]))
    expected = {"shoulder_frc": -2 * k / 2.0, "elbow_tau": -k, "elbow_pos": k, "shoulder_vel": 20 * k}
    assert sorted(rec.sensors) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(rec.sensors[name], value, err_msg=name)


@pytest.mark.parametrize("efforts, fed, kwargs, message", [
    ([[]] * 6, [JointSensor("elbow_tau", "effort", "elbow")], {},
     "JointState carries no effort; sensor 'elbow_tau' reads the effort of joint 'elbow'"),
    ([[1.0]] * 6, [JointSensor("elbow_tau", "effort", "elbow")], {},
     "JointState carries 1 effort values for its 2 names; sensor 'elbow_tau'"),
    (None, [JointSensor("wrist_tau", "effort", "wrist")], {}, "JointState lacks joint 'wrist'; sensor 'wrist_tau'"),
    ([[0.0, 0.0]] * 3 + [[np.nan, 0.0]] * 3, [JointSensor("elbow_tau", "effort", "elbow")], {},
     "JointState effort of joint 'elbow' (sensor 'elbow_tau') is not finite"),
    (None, [JointSensor("g", "effort", "elbow")], {"imu_topics": {"/imu": {"angular_velocity": "g"}}},
     "sensors ['g'] are fed by the JointState and by a sensor topic"),
])
def test_bad_jointstate_sensor_input_raises_data_error(tmp_path, efforts, fed, kwargs, message):
    bag = effort_bag(tmp_path, efforts)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_rosbag(bag, joint_sensors=fed, **kwargs)
    assert str(bag) in str(err.value)


def test_fit_reads_a_bag_in_the_configs_joint_order_with_its_torque_sensors(tmp_path):
    """`fit`'s reader takes a bag's joints by the config's MJCF joint names, not the message's order, and fills the
    joint torque sensors the config observes (an actuatorfrc and a jointactuatorfrc) from the JointState's
    efforts; an NPZ beside it is read as it is."""
    from twin_bayes.cli import _read

    mjcf = Path(__file__).resolve().parents[1] / "sim" / "arm2_sensors.xml"
    config = tmp_path / "torques.toml"
    config.write_text(f'name = "torques"\n\n[robot]\nname = "{mjcf}"\n\n[parameters]\n'
                      '"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }\n\n[observation]\n'
                      'sensors = ["shoulder_frc", "elbow_tau"]\n'
                      'noise_scale = { q = 0.002, qd = 0.02, shoulder_frc = 0.1, elbow_tau = 0.1 }\n')
    bag = effort_bag(tmp_path)                             # the messages name elbow first, the MJCF shoulder
    write_npz(tmp_path / "run.npz", recording())
    from_bag, from_npz = _read(str(config), [bag, tmp_path / "run.npz"])
    k = np.arange(6.0)[:, None]
    np.testing.assert_array_equal(from_bag.q, np.hstack([2 * k, k]))
    np.testing.assert_array_equal(from_bag.qd, np.hstack([20 * k, 10 * k]))
    np.testing.assert_array_equal(from_bag.sensors["shoulder_frc"], -2 * k)
    np.testing.assert_array_equal(from_bag.sensors["elbow_tau"], -k)
    np.testing.assert_array_equal(from_npz.q, recording().q)


# --- PoseStamped topics (motion capture) ---------------------------------------------------------------
POSE_MAP = {"/mocap": {"position": "torso_pos", "orientation": "torso_quat"}}


def test_pose_channels_round_trip_and_orientations_are_sign_continuous_and_nlerped(tmp_path):
    """Position and orientation channels written as PoseStamped messages received with the joint states read back
    exactly (orientations to 1e-12, renormalised); a pose topic read between messages interpolates the position
    linearly and the orientation by normalised linear interpolation of sign-continuous quaternions; `fit --pose`
    parses into pose_topics."""
    from twin_bayes.cli import _read

    rng = np.random.default_rng(6)
    rec = recording()
    quat = rng.normal(size=(40, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    sensors = {"torso_pos": rng.normal(size=(40, 3)), "torso_quat": quat}
    rec = Trajectory(t=rec.t, q=rec.q, qd=rec.qd, ctrl=rec.ctrl, sensors=sensors)
    bag = write_rosbag(tmp_path / "run.mcap", rec, ["shoulder", "elbow"], pose_topics=POSE_MAP)
    back = read_rosbag(bag, pose_topics=POSE_MAP)
    np.testing.assert_array_equal(back.sensors["torso_pos"], sensors["torso_pos"])
    flips = np.cumprod(np.r_[1.0, np.where(np.sum(quat[1:] * quat[:-1], 1) < 0, -1.0, 1.0)])
    np.testing.assert_allclose(back.sensors["torso_quat"], quat * flips[:, None], rtol=0, atol=1e-12)
    (parsed,) = _read("arm2", [bag], {"pose": ["/mocap=position:torso_pos,orientation:torso_quat"]})
    np.testing.assert_array_equal(parsed.sensors["torso_pos"], back.sensors["torso_pos"])

    joint_ns = S + np.arange(5) * 10**7                                        # 0..40 ms
    pose_ns = S + np.array([0, 25, 40]) * 10**6
    a, c = np.array([1.0, 0.0, 0.0, 0.0]), np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])  # c: 90° about z
    msgs = [(int(s), pose_msg(p, o)) for s, p, o in zip(pose_ns, ([0, 0, 0], [2.5, 0, 0], [4, 0, 0]), (a, -c, -c))]
    rec = read_rosbag(write_bag(tmp_path / "bag", [(int(s), ["a"], [0.0], [0.0]) for s in joint_ns],
                                [(S, [], [1.0])], sensors={"/mocap": msgs}), pose_topics=POSE_MAP)
    np.testing.assert_allclose(rec.sensors["torso_pos"][:, 0], [0.0, 1.0, 2.0, 3.0, 4.0], atol=1e-12)
    for t_ms, got in zip((0, 10, 20, 30, 40), rec.sensors["torso_quat"]):     # −c is made c, continuous with a
        w = min(t_ms / 25.0, 1.0)
        expected = (1 - w) * a + w * c
        np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-12)


def pose_msg(position, wxyz):
    header = TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                             frame_id="world")
    w, x, y, z = map(float, wxyz)
    return TS.types[POSE](header=header, pose=TS.types["geometry_msgs/msg/Pose"](
        position=TS.types["geometry_msgs/msg/Point"](*map(float, position)),
        orientation=TS.types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))
