"""ROS 2 bags written with `rosbags` (MCAP and SQLite storage) read back as Trajectories."""
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from twin_bayes.data import DataError, Trajectory, read_trajectory
from twin_bayes.data.rosbag import FLOAT_ARRAY, JOINT_STATE, read_rosbag, write_rosbag

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


def write_bag(path, joint_msgs, command_msgs, command_type=FLOAT_ARRAY):
    """joint_msgs: (stamp_ns, names, position, velocity); command_msgs: (stamp_ns, names, values)."""
    JointState, Header, Time = TS.types[JOINT_STATE], TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
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
        for stamp, names, pos, vel in joint_msgs:
            w.write(cj, stamp, TS.serialize_cdr(joint_state(stamp, names, pos, vel), JOINT_STATE))
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
