"""The ROS 2 bridge on a real zenoh session (peer mode, loopback, no multicast) speaking rmw_zenoh's key
expressions, CDR by `rosbags`, into a ROUTER on loopback and into the real twin service."""
import json
import re
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zenoh
import zmq

from twin_bayes.cli import main
from twin_bayes.config import load_config
from twin_bayes.models import TwinModel
from twin_bayes.service import protocol
from twin_bayes.service import ros2_keys as keys
from twin_bayes.service.ros2 import BridgeSettings, Ros2Bridge
from twin_bayes.service.ros2_inbound import (Command, Rejected, Sampler, decode, joint_readings, topic_readings,
                                             robot_joints, trajectory_command)
from twin_bayes.service.ros2_inbound import joint_state as joint_state_of
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.worker import WorkerSettings
from twin_bayes.sim.emulator import emulate

TS = keys.typestore("jazzy")
SENSORS_CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "arm2_sensors.toml"  # gyro, acc
SENSORS_MJCF = Path(__file__).resolve().parents[1] / "sim" / "arm2_sensors.xml"  # gyro, acc, quat (framequat), ...
T0_NS = 1_700_000_000 * 10**9
DT_NS = 2_000_000  # arm2: 500 Hz
JOINTS = ["shoulder", "elbow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ros():
    """The test's zenoh peer: listens on loopback, the bridge connects to it; (session, endpoint)."""
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    cfg = zenoh.Config()
    cfg.insert_json5("mode", '"peer"')
    cfg.insert_json5("listen/endpoints", json.dumps([endpoint]))
    cfg.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(cfg)
    yield session, endpoint
    session.close()


def key(topic: str, msgtype: str, distro: str = "jazzy") -> str:
    return keys.TopicKey(0, topic, msgtype, distro).data


def joint_state(t_ns: int, q, qd, names=JOINTS, effort=()) -> bytes:
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    msg = TS.types[keys.JOINT_STATE](header=Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=""),
                                     name=list(names), position=np.ascontiguousarray(q, float),
                                     velocity=np.ascontiguousarray(qd, float),
                                     effort=np.ascontiguousarray(effort, float))
    return bytes(TS.serialize_cdr(msg, keys.JOINT_STATE))


def command(values) -> bytes:
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return bytes(TS.serialize_cdr(TS.types[keys.FLOAT_ARRAY](layout=layout, data=np.asarray(values, float)),
                                  keys.FLOAT_ARRAY))


@contextmanager
def bridging(endpoint: str, ingest: str, pub: str, query: str | None = None, config: str = "arm2", wrench=None,
             pose=None):
    """A bridge for arm2 (`config`; `wrench`, `pose` its WrenchStamped and PoseStamped topics) connected to the test's
    zenoh peer, running in its own thread."""
    bridge = Ros2Bridge(BridgeSettings(config, "arm-1", wrench=wrench or {}, pose=pose or {}, zenoh_connect=(endpoint,),
                                       ingest=ingest,
                                       pub=pub, query=query, first_seq=None if query else 0, idle_flush_s=0.3))
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,))
    thread.start()
    try:
        yield bridge
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def tokens(session) -> set[str]:
    return {str(r.ok.key_expr) for r in session.liveliness().get("@ros2_lv/0/**") if r.ok is not None}


def wait_for_subscriptions(session, n: int = 2, bridge: Ros2Bridge | None = None) -> set[str]:
    """The bridge's liveliness tokens once its n subscriptions and a publisher (declared after them) are
    announced; given the bridge, once every subscription and publisher it declares is (their tokens
    arrive one by one)."""
    n, publishers = (len(bridge.inputs), len(bridge.outputs)) if bridge is not None else (n, 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = tokens(session)
        if sum("/MS/" in t for t in found) >= n and sum("/MP/" in t for t in found) >= publishers:
            return found
        time.sleep(0.05)
    raise AssertionError(f"bridge not announced: {tokens(session)}")


def wait(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_key_expressions_tokens_and_attachments_match_rmw_zenoh():
    js = keys.TopicKey(0, "/joint_states", keys.JOINT_STATE, "jazzy")
    assert js.data == ("0/joint_states/sensor_msgs::msg::dds_::JointState_/"
                       "RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e")
    assert keys.type_hash(keys.STRING, "jazzy") == \
        "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
    assert keys.TopicKey(3, "/ns/chatter", keys.STRING, "humble").data == \
        "3/ns/chatter/std_msgs::msg::dds_::String_/TypeHashNotSupported"
    assert keys.TopicKey(0, "/chatter", keys.STRING, "jazzy").liveliness("8b2091", 10, "MP", "talker", depth=7) == (
        "@ros2_lv/0/8b2091/0/10/MP/%/%/talker/%chatter/std_msgs::msg::dds_::String_/"
        "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18/::,7:,:,:,,")
    att = keys.attachment(5, 7, bytes(range(16)))
    assert att == zenoh.ext.z_serialize((zenoh.ext.Int64(5), zenoh.ext.Int64(7), bytes(range(16)))).to_bytes()
    assert keys.parse_attachment(att) == (5, 7, bytes(range(16)))
    with pytest.raises(ValueError):
        keys.parse_attachment(att[:-1])
    with pytest.raises(ValueError, match="fully qualified"):
        keys.check_topic("joint_states")


def test_joint_states_become_acked_chunks_on_the_grid_and_bad_samples_are_counted(ros, router_peer):
    session, endpoint = ros
    peer = router_peer()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub_addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    n = 120
    q = np.c_[np.sin(np.arange(n) * 0.01), np.cos(np.arange(n) * 0.01)]
    qd = np.c_[np.arange(n) * 0.1, -np.arange(n) * 0.1]
    with bridging(endpoint, peer.endpoint, pub_addr) as bridge:
        announced = wait_for_subscriptions(session, bridge=bridge)
        js, cmd = key("/joint_states", keys.JOINT_STATE), key("/twin/commands", keys.FLOAT_ARRAY)
        for k in range(n):
            session.put(cmd, command([k, -k]))
            # jitter of 0.3 % of dt is put back on the grid; names in another order are mapped by name
            stamp = T0_NS + k * DT_NS + (6000 if k % 2 else -6000)
            if k == 60:
                good = joint_state(T0_NS + 60 * DT_NS + 1, [9.0, 9.0], [0, 0])
                session.put(js, good[: len(good) // 2])                                  # truncated CDR
                session.put(js, b"\x00\x01\x00\x00" + bytes(range(7)))                    # garbage CDR
                session.put(js.replace("RIHS01_a13e", "RIHS01_b13e"), good)               # wrong type hash
                session.put(js, joint_state(T0_NS + 10 * DT_NS, [9.0, 9.0], [0, 0]))      # out of order
                session.put(js, joint_state(T0_NS + 60 * DT_NS + 1, [np.nan, 0], [0, 0]))  # non-finite
                session.put(js, joint_state(T0_NS + 60 * DT_NS + 1, [9.0], [0], ["shoulder"]))  # lacks elbow
                session.put(cmd, command([1.0, 2.0, 3.0]))                                # 3 values, 2 actuators
            state = joint_state(stamp, q[k, ::-1], qd[k, ::-1], names=JOINTS[::-1])
            session.put(js, state, attachment=b"\x01\x02" if k == 60 else None)          # a bad attachment
        session.put(js, joint_state(T0_NS + 300 * DT_NS, q[-1], qd[-1]))                   # after a gap
        wait(lambda: bridge.stats()["link"].get("acked", 0) == 3 and not bridge.stats()["link"]["unacked"],
             what="chunks acked")
        stats = bridge.stats()
    assert stats["rejected"] == {"bad_cdr": 2, "wrong_type": 1, "out_of_order": 1, "non_finite": 1,
                                 "missing_joints": 1, "bad_command": 1, "bad_attachment": 1}
    assert stats["received"] == {"joint_states": n + 7, "commands": n + 1}
    chunks = [peer.chunks[s] for s in sorted(peer.chunks)]
    assert sorted(peer.chunks) == [0, 1, 2] and [c.n for c in chunks] == [50, 50, 19]  # 119 samples, then the gap
    got = {f: np.concatenate([c.arrays[f] for c in chunks]) for f in ("t", "q", "qd", "ctrl")}
    k = np.arange(n - 1)
    np.testing.assert_allclose(got["t"], (T0_NS - 6000 + k * DT_NS) * 1e-9, rtol=0, atol=1e-6)  # from the 1st stamp
    np.testing.assert_allclose(got["q"], q[k], rtol=0, atol=1e-4)    # jitter of 0.3 % of dt interpolated away
    np.testing.assert_allclose(got["qd"], qd[k], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(got["ctrl"], np.c_[k, -k])        # each sample has its own command
    assert stats["gaps"] == 1 and stats["link"]["rejected"] == 0
    mine = {t for t in announced if "/twin_bayes_arm_1" in t}
    assert any("/NN/%/%/twin_bayes_arm_1" in t for t in mine)
    assert any(f"/MS/%/%/twin_bayes_arm_1/%joint_states/sensor_msgs::msg::dds_::JointState_/"
               f"{keys.type_hash(keys.JOINT_STATE, 'jazzy')}/" in t for t in mine)
    assert any("/MP/%/%/twin_bayes_arm_1/%twin%arm_1%prediction/trajectory_msgs::msg::dds_::JointTrajectory_/" in t
               for t in mine)
    pub.close()


def service_stream(pub: zmq.Socket, stop: threading.Event) -> None:
    """A service's PUB stream for arm-1: posterior, prediction (2 joints and a gyro, 3 steps), health, alert."""
    seq, bands = 0, np.stack([np.full((3, 2), x) for x in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    gyro = np.arange(45.0).reshape(5, 3, 3)
    health = {"status": "ok", "problems": [], "robots": {"arm-1": {"posterior_version": 4, "stale": False,
                                                                    "windows": 4, "calibration": {"coverage_90": 0.9}}}}
    while not stop.wait(0.05):
        for kind, rid, frames in (
                ("posterior", "arm-1", lambda s: protocol.posterior("arm-1", s, 4, {"body_mass:forearm": {
                    "mean": 0.6, "sd": 0.01, "q05": 0.58, "q50": 0.6, "q95": 0.62}}, stale=False)),
                ("prediction", "arm-1", lambda s: protocol.prediction(
                    "arm-1", s, 4, {"t": 1.7e9 + np.arange(1, 4) * 0.002, "q_bands": bands, "qd_bands": bands * 10,
                                    "sensor:gyro": gyro},
                    quantiles=[0.05, 0.25, 0.5, 0.75, 0.95])),
                ("health", protocol.FLEET, lambda s: protocol.reply(protocol.FLEET, s, "health", **health)),
                ("alert", "arm-1", lambda s: protocol.reply("arm-1", s, "alert", parameter="dof_damping:shoulder",
                                                           active=True, p_outside=0.95))):
            seq += 1
            pub.send_multipart([protocol.topic(kind, rid), *frames(seq)])


def test_service_stream_comes_out_as_ros2_messages_with_attachments(ros, router_peer):
    session, endpoint = ros
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub_addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    got: dict[str, tuple[bytes, bytes]] = {}
    outputs = {"posterior": keys.STRING, "prediction": keys.TRAJECTORY, "prediction_bands": keys.FLOAT_ARRAY,
               "alerts": keys.STRING, "prediction_bands/gyro": keys.FLOAT_ARRAY,
               "prediction_bands/acc": keys.FLOAT_ARRAY}
    subs = [session.declare_subscriber(key(f"/twin/arm_1/{name}", t),
                                       lambda s, name=name: got.setdefault(name, (s.payload.to_bytes(),
                                                                                  s.attachment.to_bytes())))
            for name, t in outputs.items()]
    subs.append(session.declare_subscriber(key("/diagnostics", keys.DIAGNOSTICS), lambda s: got.__setitem__(
        "diagnostics", (s.payload.to_bytes(), s.attachment.to_bytes()))))
    stop = threading.Event()
    feeder = threading.Thread(target=service_stream, args=(pub, stop))
    feeder.start()
    try:
        with bridging(endpoint, router_peer().endpoint, pub_addr, config=str(SENSORS_CONFIG)) as bridge:
            wait(lambda: len(got) == 6 and twin_status(got["diagnostics"][0])[0] == 0,
                 what=f"six outputs (no acc in these predictions) and an OK twin status, got {sorted(got)}")
            tokens_now = tokens(session)
    finally:
        stop.set()
        feeder.join()
        pub.close()
        for s in subs:
            s.undeclare()
    posterior = json.loads(TS.deserialize_cdr(got["posterior"][0], keys.STRING).data)
    assert posterior["version"] == 4 and posterior["summary"]["body_mass:forearm"]["q95"] == 0.62
    traj = TS.deserialize_cdr(got["prediction"][0], keys.TRAJECTORY)
    assert list(traj.joint_names) == JOINTS and len(traj.points) == 3
    assert traj.header.stamp.sec == 1_700_000_000 and traj.header.stamp.nanosec == 0
    assert [p.time_from_start.nanosec for p in traj.points] == [2_000_000, 4_000_000, 6_000_000]
    np.testing.assert_array_equal(traj.points[0].positions, [0.0, 0.0])  # the median band
    bands = TS.deserialize_cdr(got["prediction_bands"][0], keys.FLOAT_ARRAY)
    assert [(d.label, d.size) for d in bands.layout.dim] == [("quantile", 5), ("time", 3), ("q_qd", 4)]
    off = bands.layout.data_offset
    assert off == 8 and list(bands.data[:5]) == [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(bands.data[5:8], [0.002, 0.004, 0.006], atol=1e-6)
    cube = bands.data[off:].reshape(5, 3, 4)
    np.testing.assert_array_equal(cube[0, :, :2], -1.0)
    np.testing.assert_array_equal(cube[4, :, 2:], 10.0)
    gyro = TS.deserialize_cdr(got["prediction_bands/gyro"][0], keys.FLOAT_ARRAY)  # laid out as the joints' bands
    assert [(d.label, d.size) for d in gyro.layout.dim] == [("quantile", 5), ("time", 3), ("axis", 3)]
    np.testing.assert_array_equal(gyro.data[:8], bands.data[:8])
    np.testing.assert_array_equal(gyro.data[gyro.layout.data_offset:], np.arange(45.0))
    assert sum("/MP/" in t and "prediction_bands%acc" in t for t in tokens_now) == 1     # announced all the same
    assert bridge.published["prediction_bands/gyro"] >= 1 and "prediction_bands/acc" not in bridge.published
    assert json.loads(TS.deserialize_cdr(got["alerts"][0], keys.STRING).data) == {
        "robot_id": "arm-1", "parameter": "dof_damping:shoulder", "active": True, "p_outside": 0.95}
    level, message, values = twin_status(got["diagnostics"][0])
    assert message == "posterior v4" and values["coverage_90"] == "0.9" and values["windows"] == "4"
    for payload, att in got.values():
        seq, stamp_ns, gid = keys.parse_attachment(att)
        assert seq >= 1 and abs(stamp_ns - time.time_ns()) < 60e9 and len(gid) == 16


def twin_status(raw: bytes) -> tuple[int, str, dict[str, str]]:
    """(level, message, values) of the twin's status in a DiagnosticArray."""
    twin = TS.deserialize_cdr(raw, keys.DIAGNOSTICS).status[0]
    return int(twin.level), twin.message, {v.key: v.value for v in twin.values}


def test_cli_bridges_until_its_seconds_and_prints_its_counters(ros, router_peer, capsys):
    session, endpoint = ros
    peer = router_peer()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub_addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"

    def robot():
        wait_for_subscriptions(session, 3)
        for k in range(30):
            session.put(key("/arm/imu", keys.IMU), imu(T0_NS + k * DT_NS - 1000 * (k == 5) * DT_NS, k))  # 5: too old
            session.put(key("/arm/commands", keys.FLOAT_ARRAY), command([k, k]))
            session.put(key("/arm/joint_states", keys.JOINT_STATE), joint_state(T0_NS + k * DT_NS, [k, k], [0, 0]))
        session.put(key("/arm/joint_states", keys.STRING), b"\x00\x01\x00\x00")  # another type on the topic

    thread = threading.Thread(target=robot)
    thread.start()
    try:
        assert main(["ros2", "--config", str(SENSORS_CONFIG), "--robot-id", "arm-1", "--joint-states",
                     "/arm/joint_states", "--commands", "/arm/commands", "--zenoh-endpoint", endpoint,
                     "--service-ingest", peer.endpoint, "--service-pub", pub_addr, "--service-query", "",
                     "--imu", "/arm/imu", "--seconds", "3"]) == 0  # a bare topic: the config's gyro and acc
    finally:
        thread.join()
        pub.close()
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["received"] == {"joint_states": 31, "commands": 30, "imu:/arm/imu": 30}
    assert out["rejected"] == {"wrong_type": 1, "out_of_order": 1}
    assert out["link"]["acked"] == 1 and list(peer.chunks) == [0]  # sent when it stopped
    chunk = peer.chunks[0].arrays
    np.testing.assert_array_equal(chunk["q"][:, 0], np.arange(29))
    gyro_x = chunk["sensor:gyro"][:, 0]  # the reading latest at each joint state; the stale one at 5 was dropped
    np.testing.assert_array_equal(gyro_x, np.where(np.arange(29) == 5, 4, np.arange(29)))
    np.testing.assert_array_equal(chunk["sensor:acc"][:, 2], gyro_x + 9.81)


def imu_message(t_ns: int, gyro, accel, quat_xyzw=(0.0, 0.0, 0.0, 1.0), no_orientation: bool = False):
    """A sensor_msgs/Imu (rad/s, m/s², orientation x, y, z, w; covariance[0] = -1 marks it not provided)."""
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    Vector3, Quaternion = TS.types["geometry_msgs/msg/Vector3"], TS.types["geometry_msgs/msg/Quaternion"]
    x, y, z, w = map(float, quat_xyzw)
    return TS.types[keys.IMU](header=Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="imu"),
                              orientation=Quaternion(x=x, y=y, z=z, w=w),
                              orientation_covariance=np.r_[-1.0 if no_orientation else 0.0, np.zeros(8)],
                              angular_velocity=Vector3(*map(float, gyro)), angular_velocity_covariance=np.zeros(9),
                              linear_acceleration=Vector3(*map(float, accel)),
                              linear_acceleration_covariance=np.zeros(9))


def imu(t_ns: int, x: float) -> bytes:
    return bytes(TS.serialize_cdr(imu_message(t_ns, (x, 0.0, 0.0), (0.0, 0.0, x + 9.81)), keys.IMU))


def test_cli_rejects_bad_input_without_a_traceback(capsys):
    assert main(["ros2", "--config", "humanoid", "--robot-id", "h1"]) == 2
    assert "hinge and slide joints only" in capsys.readouterr().err
    assert main(["ros2", "--config", "arm2", "--robot-id", "arm-1", "--joint-states", "joint_states"]) == 2
    assert "fully qualified" in capsys.readouterr().err


def test_trajectory_commands_and_imu_are_held_on_the_grid():
    robot = robot_joints("arm2")
    sampler = Sampler(robot.dt, chunk_samples=4, max_gap_s=0.05, sensors=("gyro", "acc"))
    Point, Duration = TS.types["trajectory_msgs/msg/JointTrajectoryPoint"], TS.types["builtin_interfaces/msg/Duration"]
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    points = [Point(positions=np.array([x, -x]), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                    time_from_start=Duration(sec=0, nanosec=ns)) for x, ns in ((1.0, 0), (2.0, 3 * DT_NS))]
    traj = TS.types[keys.TRAJECTORY](header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
                                     joint_names=JOINTS[::-1], points=points)  # zero stamp: starts now
    chunks = sampler.state(T0_NS, np.zeros(2), np.zeros(2))
    sampler.command = trajectory_command(traj, robot, sampler.latest_ns)
    sampler.readings.update(gyro=np.arange(3.0), acc=np.arange(3.0, 6.0))
    for k in range(1, 6):
        chunks += sampler.state(T0_NS + k * DT_NS, np.full(2, k), np.zeros(2))
    assert len(chunks) == 1  # state 0 came before any command or IMU reading: the grid starts at state 1
    np.testing.assert_array_equal(chunks[0]["q"][:, 0], [1, 2, 3, 4])
    # joint names map the points' columns (elbow first); the second point holds from 3 dt on
    np.testing.assert_array_equal(chunks[0]["ctrl"], [[-1, 1], [-1, 1], [-2, 2], [-2, 2]])
    np.testing.assert_array_equal(chunks[0]["sensors"]["gyro"], np.tile([0.0, 1, 2], (4, 1)))
    np.testing.assert_array_equal(chunks[0]["sensors"]["acc"], np.tile([3.0, 4, 5], (4, 1)))
    with pytest.raises(Rejected, match="out_of_order"):
        sampler.state(T0_NS + 5 * DT_NS, np.zeros(2), np.zeros(2))


def sensor_config(path: Path, sensors: list[str], mjcf: Path = SENSORS_MJCF, channels=("q", "qd")) -> str:
    """A twin config with what the bridge reads of one: the robot's MJCF, the channels and sensors it observes."""
    path.write_text(f'[robot]\nname = "{mjcf}"\n\n[observation]\nchannels = {json.dumps(list(channels))}\n'
                    f'sensors = {json.dumps(sensors)}\n')
    return str(path)


@pytest.mark.parametrize("sensors, imu, refused", [
    (["gyro", "acc"], {"/imu": {"angular_velocity": "gyro", "linear_acceleration": "nope"}},
     "maps to sensor 'nope', which the twin config does not observe"),
    (["gyro", "acc"], {"/imu": {"angular_velocity": "acc", "linear_acceleration": "gyro"}},
     "angular_velocity feeds a sensor of type gyro; 'acc' is of type accelerometer"),
    (["gyro", "acc"], {"/imu": {"angular_velocity": "gyro"}}, r"observes sensors \['acc'\] that no --imu"),
    (["gyro", "acc", "quat"], {"/imu": {}}, r"observes sensors \['quat'\] that no --imu"),
    (["gyro", "acc"], {"/a": {"angular_velocity": "gyro", "linear_acceleration": "acc"}, "/b": {}},
     r"sensors \['acc', 'gyro'\] are fed more than once"),
    ([], {"/imu": {}}, "observes no gyro or accelerometer"),
    (["gyro", "nope"], {}, r"declares no sensors \['nope'\]"),
])
def test_imu_mappings_the_twin_cannot_take_are_refused_at_start(tmp_path, sensors, imu, refused):
    with pytest.raises(ValueError, match=refused):
        Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "twin.toml", sensors), "arm-1", imu=imu))


def test_sensors_whose_ros_names_collide_and_malformed_imu_options_are_refused(tmp_path, capsys):
    """Two sensors whose names make one ROS name would share prediction_bands/<sensor>; two gyros leave a bare
    --imu ambiguous; the command line refuses both, and a malformed --imu, without a traceback (exit 2)."""
    mjcf = tmp_path / "arm2_clash.xml"
    mjcf.write_text(SENSORS_MJCF.read_text().replace('<gyro name="gyro"', '<gyro name="a-b"')
                    .replace('<framequat name="quat" objtype="site" objname="imu"/>', '<gyro name="a_b" site="imu"/>'))
    config = sensor_config(tmp_path / "clash.toml", ["a-b", "a_b"], mjcf)
    for imu, refused in ((["/imu"], "gyro sensors ['a-b', 'a_b']; name the one angular_velocity feeds"),
                         ([], "sensors ['a-b', 'a_b'] would all publish on <namespace>/prediction_bands/a_b"),
                         (["/imu=angular_velocity"], "expected TOPIC=FIELD:SENSOR")):
        args = ["ros2", "--config", config, "--robot-id", "arm-1", *(a for i in imu for a in ("--imu", i))]
        assert main(args) == 2
        assert refused in capsys.readouterr().err


def test_imu_orientation_is_a_unit_quaternion_w_first_continuous_in_sign():
    fields = {"angular_velocity": "gyro", "orientation": "quat"}
    first = topic_readings("imu", imu_message(T0_NS, (1, 2, 3), (0, 0, 9.81), (0.0, 0.0, 0.6, 0.8)), fields, {})
    np.testing.assert_array_equal(first["gyro"], [1, 2, 3])
    np.testing.assert_allclose(first["quat"], [0.8, 0.0, 0.0, 0.6], rtol=0, atol=1e-15)
    flipped = topic_readings("imu", imu_message(T0_NS, (0, 0, 0), (0, 0, 0), (0.0, 0.0, -1.2, -1.6)), fields, first)
    np.testing.assert_allclose(flipped["quat"], first["quat"], rtol=0, atol=1e-15)  # -q is q: kept continuous
    for msg, code in ((imu_message(T0_NS, (0, 0, 0), (0, 0, 0), no_orientation=True), "bad_message"),
                      (imu_message(T0_NS, (0, 0, 0), (0, 0, 0), (0, 0, 0, 0)), "bad_message"),
                      (imu_message(T0_NS, (np.nan, 0, 0), (0, 0, 0)), "non_finite")):
        with pytest.raises(Rejected, match=code):
            topic_readings("imu", msg, fields, first)


def test_ros2_robot_into_the_service_advances_the_posterior_and_predictions_come_back(ros, tmp_path, service_model):
    session, endpoint = ros
    any_port = "tcp://127.0.0.1:*"
    settings = ServiceSettings({"arm-1": service_model.cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=tmp_path / "checkpoints"))
    traj = emulate(service_model.robot, {}, 0.7, seed=4)  # 351 samples: one 0.5 s window and a rest
    posteriors, predictions = [], []
    subs = [session.declare_subscriber(key("/twin/arm_1/posterior", keys.STRING), lambda s: posteriors.append(
                json.loads(TS.deserialize_cdr(s.payload.to_bytes(), keys.STRING).data))),
            session.declare_subscriber(key("/twin/arm_1/prediction", keys.TRAJECTORY), lambda s: predictions.append(
                TS.deserialize_cdr(s.payload.to_bytes(), keys.TRAJECTORY)))]
    with TwinService(settings, {"arm-1": service_model}) as service:
        ends = service.endpoints
        with bridging(endpoint, ends["ingest"], ends["pub"], ends["query"]) as bridge:
            wait_for_subscriptions(session, bridge=bridge)
            js, cmd = key("/joint_states", keys.JOINT_STATE), key("/twin/commands", keys.FLOAT_ARRAY)
            for k in range(len(traj.t)):
                session.put(cmd, command(traj.ctrl[k]))
                session.put(js, joint_state(T0_NS + k * DT_NS, traj.q[k], traj.qd[k]))
            wait(lambda: any(p["version"] >= 1 for p in posteriors) and predictions, timeout_s=900,
                 what="a new posterior and a prediction over ROS 2")  # the first window compiles the kernels
            # The posterior comes after the first window; the rest of the samples may still be on their way.
            wait(lambda: service.metrics()["samples_stored"] >= len(traj.t) - 1, timeout_s=60,
                 what="every sample stored")
            stats = bridge.stats()
        stored = service.metrics()["samples_stored"]
    for s in subs:
        s.undeclare()
    assert stats["rejected_total"] == 0 and stored == len(traj.t) - 1  # the last state waits for the next one
    post = max(posteriors, key=lambda p: p["version"])
    assert set(post["summary"]) == set(service_model.names)
    pred = predictions[-1]
    assert list(pred.joint_names) == JOINTS and len(pred.points) == round(0.05 / 0.002)  # the service's horizon
    assert all(np.isfinite(p.positions).all() and len(p.positions) == 2 for p in pred.points)


TORQUES = ["shoulder_frc", "elbow_tau"]  # arm2_sensors.xml: actuatorfrc of the shoulder's motor, jointactuatorfrc
ENCODERS = ["elbow_pos", "elbow_vel"]  # arm2_sensors.xml: the elbow's jointpos and jointvel


def joint_sensor_config(path: Path, sensors: list[str], channels=("q", "qd")) -> str:
    """A twin config observing `channels` and `sensors` of arm2_sensors.xml (noise scale 0.01 each), the forearm's
    mass to estimate."""
    noise = "".join(f", {s} = 0.01" for s in sensors)
    path.write_text(f'name = "{path.stem}"\n\n[robot]\nname = "{SENSORS_MJCF}"\n\n[parameters]\n'
                    '"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }\n\n[observation]\n'
                    f'channels = {json.dumps(list(channels))}\nsensors = {json.dumps(sensors)}\n'
                    f'noise_scale = {{ q = 0.002, qd = 0.02{noise} }}\n\n[inference]\nwindow_s = 0.5\nparticles = 32\n')
    return str(path)


def serve_joint_states(ros, tmp_path: Path, config: str, states: list[list[bytes]], wrench=None,
                       sensor_msgs: dict[int, list[tuple[str, bytes]]] | None = None, pose=None) -> tuple[dict, dict]:
    """A served twin of `config` bridged (with WrenchStamped topics `wrench`, PoseStamped topics `pose`) from the test's
    zenoh peer, which publishes for each step k a command [k, -k], then the (key expression, payload)s sensor_msgs[k]
    if any, then the JointStates states[k]; (the bridge's stats, the stored chunks' fields concatenated) once every
    step but the last (its state waits for the next one) is stored. Kept under a window: nothing inferred."""
    session, endpoint = ros
    model, any_port = TwinModel(load_config(config)), "tcp://127.0.0.1:*"
    settings = ServiceSettings({"arm-1": model.cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=tmp_path / "checkpoints"))
    with TwinService(settings, {"arm-1": model}) as service:
        ends = service.endpoints
        with bridging(endpoint, ends["ingest"], ends["pub"], ends["query"], config=config, wrench=wrench,
                      pose=pose) as bridge:
            wait_for_subscriptions(session, bridge=bridge)
            js, cmd = key("/joint_states", keys.JOINT_STATE), key("/twin/commands", keys.FLOAT_ARRAY)
            for k, payloads in enumerate(states):
                session.put(cmd, command([k, -k]))
                for sensor_key, payload in (sensor_msgs or {}).get(k, ()):
                    session.put(sensor_key, payload)
                for payload in payloads:
                    session.put(js, payload)
            wait(lambda: service.metrics()["samples_stored"] >= len(states) - 1, what="every sample stored")
            stats = bridge.stats()
        stored = service.store.get_chunks("arm-1")
    return stats, {f: np.concatenate([c.arrays[f] for c in stored]) for f in stored[0].arrays}


def test_joint_state_efforts_reach_a_served_torque_sensor_twin_as_its_readings(ros, tmp_path):
    """A twin observing joint torque sensors gets, with no option, each JointState's effort of the sensor's joint
    (by name: here elbow first, and a gripper the twin lacks, its effort NaN) as the sensor's reading; the service
    stores exactly the efforts sent, in order, at the joint states' times. JointStates without an effort per name
    (missing_effort, naming each sensor and its joint) or with a NaN one for a sensor (non_finite) are counted and
    dropped, and the states after them are used."""
    n = 60  # under a window (251 samples): stored, nothing inferred
    q, qd, effort = np.random.default_rng(0).normal(size=(3, n, 2))
    names, t_ns = ["gripper", "elbow", "shoulder"], T0_NS + np.arange(n) * DT_NS
    bad = [joint_state(t_ns[0], [0, 0], [0, 0], effort=[0.0, np.nan]),  # NaN at the elbow
           joint_state(t_ns[0], [0, 0], [0, 0], effort=[1.0]),  # one effort, two names
           joint_state(t_ns[0], [0, 0], [0, 0])]  # no effort
    stats, got = serve_joint_states(ros, tmp_path, joint_sensor_config(tmp_path / "arm2_torque.toml", TORQUES), [
        [*(bad if k == 0 else ()), joint_state(t_ns[k], np.r_[0, q[k, ::-1]], np.r_[0, qd[k, ::-1]], names,
                                               np.r_[np.nan, effort[k, ::-1]])] for k in range(n)])
    assert stats["rejected"] == {"non_finite": 1, "missing_effort": 2} and stats["link"]["rejected"] == 0, stats
    assert stats["last_problem"] == ("joint_states: missing_effort: JointState carries no effort; the twin's torque "
                                     "sensors read their joint's effort: 'shoulder_frc' (joint 'shoulder'), "
                                     "'elbow_tau' (joint 'elbow')")
    assert got["sensor:shoulder_frc"].shape == (n - 1, 1)  # the last state waits for the next one
    np.testing.assert_array_equal(got["sensor:shoulder_frc"][:, 0], effort[:-1, 0])
    np.testing.assert_array_equal(got["sensor:elbow_tau"][:, 0], effort[:-1, 1])
    np.testing.assert_array_equal(got["q"], q[:-1])
    np.testing.assert_array_equal(got["t"], (t_ns[:-1] // 10**9) + (t_ns[:-1] % 10**9) * 1e-9)


def test_joint_state_positions_and_velocities_reach_a_served_encoder_twin_as_its_readings(ros, tmp_path):
    """A twin observing encoders (a jointpos and a jointvel on the elbow) gets, with no option, each JointState's
    position and velocity of the sensor's joint (by name: here elbow first, and a gripper the twin lacks, its position
    and velocity NaN) as the readings: the very numbers its q and qd are made of, stored exactly, in order, at the
    joint states' times. A JointState without a velocity per name is refused bad_message as it is for qd, its
    last_problem naming the jointvel and its joint, as is one short of positions (naming the jointpos) and one with
    a NaN elbow position (non_finite); the states after them are used."""
    n = 60
    q, qd = np.random.default_rng(1).normal(size=(2, n, 2))
    names, t_ns = ["gripper", "elbow", "shoulder"], T0_NS + np.arange(n) * DT_NS
    bad = [joint_state(t_ns[0], [0, np.nan], [0, 0]),  # NaN at the elbow
           joint_state(t_ns[0], [0], [0, 0]),  # one position, two names
           joint_state(t_ns[0], [0, 0], [])]  # no velocity
    config = joint_sensor_config(tmp_path / "arm2_enc.toml", ENCODERS, channels=[])   # the encoders, not q, qd
    stats, got = serve_joint_states(ros, tmp_path, config, [
        [*(bad if k == 0 else ()), joint_state(t_ns[k], np.r_[np.nan, q[k, ::-1]], np.r_[np.nan, qd[k, ::-1]], names)]
        for k in range(n)])
    assert stats["rejected"] == {"non_finite": 1, "bad_message": 2} and stats["link"]["rejected"] == 0, stats
    assert stats["last_problem"] == ("joint_states: bad_message: JointState carries no velocity (q and qd need a "
                                     "position and a velocity for each name); the twin's encoder sensors read their "
                                     "joint's velocity: 'elbow_vel' (joint 'elbow')")
    assert got["sensor:elbow_pos"].shape == got["sensor:elbow_vel"].shape == (n - 1, 1)
    np.testing.assert_array_equal(got["sensor:elbow_pos"][:, 0], q[:-1, 1])
    np.testing.assert_array_equal(got["sensor:elbow_vel"][:, 0], qd[:-1, 1])
    np.testing.assert_array_equal(got["q"], q[:-1])
    np.testing.assert_array_equal(got["qd"], qd[:-1])
    np.testing.assert_array_equal(got["t"], (t_ns[:-1] // 10**9) + (t_ns[:-1] % 10**9) * 1e-9)


def test_torque_sensors_read_their_joints_effort_over_the_gear_and_what_effort_cannot_give_is_refused(tmp_path,
                                                                                                        capsys):
    """An actuatorfrc reads the actuator's force: its joint's effort over the gear; one whose joint another actuator
    also drives (the effort is their sum), or of gear 0, is refused at start, from Python and the command line.
    Efforts are measured with q and qd: between joint states they are interpolated as q is. An IMU that feeds the
    rest of the observed sensors makes a complete twin; a sensor neither feeds is refused."""
    motor = '<motor name="shoulder" joint="shoulder" gear="1"/>'
    geared = tmp_path / "geared.xml"
    geared.write_text(SENSORS_MJCF.read_text().replace(motor, motor.replace('"1"', '"2"')))
    robot = robot_joints(sensor_config(tmp_path / "geared.toml", TORQUES, geared))
    assert robot.joint_sensors == (("shoulder_frc", "effort", "shoulder", 2.0), ("elbow_tau", "effort", "elbow", 1.0))
    msg = decode(joint_state(T0_NS, [0, 0], [0, 0], JOINTS[::-1], effort=[-1.5, 3.0]), keys.JOINT_STATE, "jazzy")
    assert {s: v.tolist() for s, v in joint_readings(msg, robot).items()} == {"shoulder_frc": [1.5],
                                                                              "elbow_tau": [-1.5]}
    sampler = Sampler(robot.dt, chunk_samples=4, max_gap_s=0.05, sensors=("elbow_tau",),
                      command=Command(np.zeros(1, np.int64), np.zeros((1, 2))))
    chunks = [c for k, tau in enumerate((0.0, 1.0, 4.0)) for c in sampler.state(
        T0_NS + 2 * k * DT_NS, np.full(2, tau), np.zeros(2), {"elbow_tau": np.array([tau])})] + sampler.flush()
    assert len(chunks) == 1  # 2 dt apart: each state's sample, and one between
    np.testing.assert_array_equal(chunks[0]["q"][:, 0], [0, 0.5, 1, 2.5])
    np.testing.assert_array_equal(chunks[0]["sensors"]["elbow_tau"][:, 0], [0, 0.5, 1, 2.5])

    for refused, mjcf_text in (
            ("actuators ['shoulder_2'] drive joint 'shoulder' too",
             SENSORS_MJCF.read_text().replace(motor, motor + '\n    <motor name="shoulder_2" joint="shoulder"/>')),
            ("its gear is 0", SENSORS_MJCF.read_text().replace(motor, motor.replace('"1"', '"0"')))):
        (tmp_path / "arm.xml").write_text(mjcf_text)
        config = sensor_config(tmp_path / "arm.toml", TORQUES, tmp_path / "arm.xml")
        with pytest.raises(ValueError, match=r"torque sensor 'shoulder_frc' reads actuator 'shoulder'.s force, "
                                             r"which a JointState's effort of joint 'shoulder' does not give"):
            Ros2Bridge(BridgeSettings(config, "arm-1"))
        assert main(["ros2", "--config", config, "--robot-id", "arm-1"]) == 2
        assert refused in capsys.readouterr().err
    imu = {"/imu": {"angular_velocity": "gyro", "linear_acceleration": "acc"}}
    bridge = Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "all.toml", ["gyro", "acc", "elbow_tau"]), "arm-1",
                                       imu=imu))
    assert bridge.sampler.sensors == ("gyro", "acc", "elbow_tau")
    with pytest.raises(ValueError, match=r"observes sensors \['quat'\] that no --imu, --wrench or --pose mapping "
                                         "feeds, nor a JointState"):
        Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "all.toml", ["gyro", "acc", "elbow_tau", "quat"]), "arm-1",
                                  imu=imu))
    with pytest.raises(ValueError, match="linear_acceleration feeds a sensor of type accelerometer; 'elbow_tau' is of"):
        Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "all.toml", ["elbow_tau"]), "arm-1",
                                  imu={"/imu": {"linear_acceleration": "elbow_tau"}}))


BALL_ARM = ('<mujoco><worldbody><body name="arm"><joint name="shoulder"/><geom size="0.1" mass="1"/>'
            '<body name="hand" pos="0.3 0 0"><joint name="wrist" type="ball"/><geom size="0.1" mass="1"/></body>'
            '</body></worldbody><actuator><motor name="wrist" joint="wrist"/></actuator>'
            '<sensor><actuatorfrc name="wrist_frc" actuator="wrist"/>{}</sensor></mujoco>')


def test_encoders_read_their_joints_position_and_velocity_and_only_hinge_or_slide_joints_carry_them(tmp_path,
                                                                                                      capsys):
    """A jointpos and a jointvel read their joint's position and velocity (by name), alongside a torque sensor, a
    slide joint's as a hinge's; on the grid they are q's and qd's column exactly, interpolated alike. A JointState
    short of positions or velocities is refused bad_message, naming the encoders that read what it lacks (a twin
    without encoders: the same code, what q and qd need). A joint sensor on a ball joint is refused at start naming
    it: an actuatorfrc of the ball joint's motor by the bridge, a jointpos by MuJoCo; from Python and the command
    line. Encoders count as fed for --imu."""
    sensors = ["elbow_vel", "shoulder_frc", "elbow_pos"]
    robot = robot_joints(sensor_config(tmp_path / "enc.toml", sensors, channels=[]))
    assert robot.joint_sensors == (("elbow_vel", "velocity", "elbow", 1.0), ("shoulder_frc", "effort", "shoulder", 1.0),
                                   ("elbow_pos", "position", "elbow", 1.0))
    slide = tmp_path / "slide.xml"
    slide.write_text(SENSORS_MJCF.read_text().replace('name="elbow" type="hinge"', 'name="elbow" type="slide"'))
    assert robot_joints(sensor_config(tmp_path / "slide.toml", sensors, slide, [])).joint_sensors == robot.joint_sensors
    msg = decode(joint_state(T0_NS, [1.0, 2.0], [3.0, 4.0], JOINTS[::-1], effort=[5.0, 6.0]), keys.JOINT_STATE, "jazzy")
    assert {s: v.tolist() for s, v in joint_readings(msg, robot).items()} == {"elbow_vel": [3.0], "shoulder_frc": [6.0],
                                                                              "elbow_pos": [1.0]}
    sampler = Sampler(robot.dt, chunk_samples=4, max_gap_s=0.05, sensors=tuple(sensors),
                      command=Command(np.zeros(1, np.int64), np.zeros((1, 2))))
    chunks = []
    for k, x in enumerate((0.0, 1.0, 4.0)):  # 2 dt apart: each state's sample, and one between
        msg = decode(joint_state(T0_NS + 2 * k * DT_NS, [x, -x], [2 * x, -2 * x], effort=[0, 0]), keys.JOINT_STATE,
                     "jazzy")
        chunks += sampler.state(*joint_state_of(msg, robot), joint_readings(msg, robot))
    [chunk] = chunks + sampler.flush()
    np.testing.assert_array_equal(chunk["q"][:, 1], [0, -0.5, -1, -2.5])
    np.testing.assert_array_equal(chunk["sensors"]["elbow_pos"][:, 0], chunk["q"][:, 1])
    np.testing.assert_array_equal(chunk["sensors"]["elbow_vel"][:, 0], chunk["qd"][:, 1])

    need = " (q and qd need a position and a velocity for each name)"
    for twin, q, qd, detail in (
            (robot, [0, 0], [], "JointState carries no velocity" + need + "; the twin's encoder sensors read their "
                                "joint's velocity: 'elbow_vel' (joint 'elbow')"),
            (robot, [0], [], "JointState carries 1 position for its 2 names and no velocity" + need + "; the twin's "
                             "encoder sensors read their joint's position or velocity: 'elbow_vel' (joint 'elbow'), "
                             "'elbow_pos' (joint 'elbow')"),
            (robot_joints("arm2"), [0, 0], [0], "JointState carries 1 velocity for its 2 names" + need)):
        with pytest.raises(Rejected) as refused:
            joint_state_of(decode(joint_state(T0_NS, q, qd), keys.JOINT_STATE, "jazzy"), twin)
        assert (refused.value.code, refused.value.detail) == ("bad_message", detail)

    for observed, mjcf_text, refused in (
            (["wrist_frc"], BALL_ARM.format(""), "actuatorfrc sensor 'wrist_frc' reads joint 'wrist', a ball joint; a "
                                                 "JointState feeds sensors of hinge and slide joints only"),
            (["wrist_pos"], BALL_ARM.format('<jointpos name="wrist_pos" joint="wrist"/>'),
             "joint must be slide or hinge in sensor\nElement name 'wrist_pos'")):
        (tmp_path / "ball.xml").write_text(mjcf_text)
        config = sensor_config(tmp_path / "ball.toml", observed, tmp_path / "ball.xml")
        with pytest.raises(ValueError, match=refused):
            Ros2Bridge(BridgeSettings(config, "arm-1"))
        assert main(["ros2", "--config", config, "--robot-id", "arm-1"]) == 2
        assert refused in capsys.readouterr().err
    imu = {"/imu": {"angular_velocity": "gyro", "linear_acceleration": "acc"}}
    config = sensor_config(tmp_path / "all.toml", ["gyro", "acc", *ENCODERS], channels=[])
    assert Ros2Bridge(BridgeSettings(config, "arm-1", imu=imu)).sampler.sensors == ("gyro", "acc", *ENCODERS)
    # a JointState's position and velocity are one number each: a twin observing q (qd) and a jointpos (jointvel)
    # would count it twice
    for channels, twice in ((["q"], "'elbow_pos' reads joint 'elbow''s position, in q too"),
                            (["qd"], "'elbow_vel' reads joint 'elbow''s velocity, in qd too")):
        config = sensor_config(tmp_path / "twice.toml", ENCODERS, channels=channels)
        with pytest.raises(ValueError, match="which it would count twice: " + re.escape(twice) + "; observe each once"):
            Ros2Bridge(BridgeSettings(config, "arm-1"))
        assert main(["ros2", "--config", config, "--robot-id", "arm-1"]) == 2
        assert twice in capsys.readouterr().err


WRENCHES = ["frc", "trq"]  # arm2_sensors.xml: a force and a torque sensor on the forearm's site


def wrench(t_ns: int, force, torque) -> bytes:
    """A geometry_msgs/WrenchStamped (N, N m)."""
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    Vector3, Wrench = TS.types["geometry_msgs/msg/Vector3"], TS.types["geometry_msgs/msg/Wrench"]
    msg = TS.types[keys.WRENCH](header=Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="imu"),
                                wrench=Wrench(force=Vector3(*map(float, force)), torque=Vector3(*map(float, torque))))
    return bytes(TS.serialize_cdr(msg, keys.WRENCH))


def test_wrench_stamped_readings_reach_a_served_force_torque_twin_held_between_messages(ros, tmp_path):
    """A WrenchStamped topic mapped to a force and a torque sensor (`--wrench /wrist/ft=force:frc,torque:trq`) feeds
    them: every grid sample carries the wrench latest when its joint state arrived, held between messages (one every
    other state), and the service stores exactly its force and torque. A NaN force (non_finite), a truncated payload
    (bad_cdr), an Imu on the topic (wrong_type) and a stale stamp (out_of_order) are counted and change nothing."""
    n = 60
    q, qd = np.random.default_rng(2).normal(size=(2, n, 2))
    force, torque = np.random.default_rng(3).normal(size=(2, n, 3))
    t_ns, ft = T0_NS + np.arange(n) * DT_NS, key("/wrist/ft", keys.WRENCH)
    sent = {k: [(ft, wrench(t_ns[k], force[k], torque[k]))] for k in range(0, n, 2)}
    sent[10] += [(ft, wrench(t_ns[10] + 1, [np.nan, 0, 0], torque[10])), (ft, wrench(t_ns[10] + 2, *force[:2])[:30]),
                 (key("/wrist/ft", keys.IMU), imu(t_ns[10] + 3, 1.0))]
    sent[20] = [(ft, wrench(t_ns[0], force[20], torque[20]))]  # older than the one before: 20 and 21 hold 18's
    config = joint_sensor_config(tmp_path / "arm2_ft.toml", WRENCHES)
    stats, got = serve_joint_states(ros, tmp_path, config, [[joint_state(t_ns[k], q[k], qd[k])] for k in range(n)],
                                    wrench={"/wrist/ft": {"force": "frc", "torque": "trq"}}, sensor_msgs=sent)
    assert stats["received"]["wrench:/wrist/ft"] == n // 2 + 3
    assert stats["rejected"] == {"non_finite": 1, "bad_cdr": 1, "wrong_type": 1, "out_of_order": 1}, stats
    assert stats["link"]["rejected"] == 0
    assert stats["last_problem"] == (f"wrench:/wrist/ft: out_of_order: WrenchStamped stamp {t_ns[0]} ns is not after "
                                     f"the last one, {t_ns[18]} ns")
    held = np.arange(n - 1) // 2 * 2  # the last state waits for the next one
    held[20:22] = 18
    assert got["sensor:frc"].shape == got["sensor:trq"].shape == (n - 1, 3)
    np.testing.assert_array_equal(got["sensor:frc"], force[held])
    np.testing.assert_array_equal(got["sensor:trq"], torque[held])
    np.testing.assert_array_equal(got["q"], q[:-1])
    np.testing.assert_array_equal(got["t"], (t_ns[:-1] // 10**9) + (t_ns[:-1] % 10**9) * 1e-9)


@pytest.mark.parametrize("sensors, wrench_topics, refused", [
    (WRENCHES, {"/ft": {"force": "trq", "torque": "frc"}}, "force feeds a sensor of type force; 'trq' is of type "
                                                           "torque"),
    (WRENCHES, {"/ft": {"wrist": "frc"}}, "--wrench /ft: unknown field 'wrist'; expected one of ['force', 'torque']"),
    (WRENCHES, {"/ft": {"force": "frc"}}, "observes sensors ['trq'] that no --imu, --wrench or --pose mapping feeds"),
    (WRENCHES, {"/a": {}, "/b": {"force": "frc"}}, "sensors ['frc'] are fed more than once"),
    (["gyro", "acc"], {"/ft": {}}, "--wrench /ft: the twin config observes no force or torque for it to feed"),
    (["gyro", "acc", *WRENCHES], {}, "observes sensors ['frc', 'trq'] that no --imu, --wrench or --pose mapping feeds"),
])
def test_wrench_mappings_the_twin_cannot_take_are_refused_at_start(tmp_path, sensors, wrench_topics, refused):
    imu = {"/imu": {"angular_velocity": "gyro", "linear_acceleration": "acc"}} if "gyro" in sensors else {}
    with pytest.raises(ValueError, match=re.escape(refused)):
        Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "twin.toml", sensors), "arm-1", imu=imu,
                                  wrench=wrench_topics))


def test_a_bare_wrench_topic_feeds_the_one_force_and_torque_sensor_and_the_command_line_checks_it(tmp_path, capsys):
    """A bare --wrench TOPIC feeds force to the twin's one observed force sensor and torque to its one torque sensor
    (what it observes of them), next to an Imu's sensors; two force sensors leave it ambiguous. The command line
    refuses a malformed --wrench, an unknown field, a topic twice and a mapping the twin cannot take (exit 2)."""
    both = Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "ft.toml", ["gyro", "acc", *WRENCHES]), "arm-1",
                                     imu={"/imu": {}}, wrench={"/ft": {}}))
    assert both.sensor_topics == {"imu:/imu": {"angular_velocity": "gyro", "linear_acceleration": "acc"},
                                  "wrench:/ft": {"force": "frc", "torque": "trq"}}
    assert both.sampler.sensors == ("gyro", "acc", "frc", "trq")
    assert both.inputs["wrench:/ft"].data == ("0/ft/geometry_msgs::msg::dds_::WrenchStamped_/"
                                              "RIHS01_8dc3deaf06b2ab281f9f9a742a8961c328ca7cec16e3fd6586d3a5c83fa78f77")
    force_only = Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "f.toml", ["frc"]), "arm-1", wrench={"/ft": {}}))
    assert force_only.sensor_topics == {"wrench:/ft": {"force": "frc"}}
    mjcf = tmp_path / "two_forces.xml"
    mjcf.write_text(SENSORS_MJCF.read_text().replace('<torque name="trq"', '<force name="frc2" site="imu"/>\n'
                                                                          '    <torque name="trq"'))
    two = sensor_config(tmp_path / "two.toml", ["frc", "frc2", "trq"], mjcf)
    config = sensor_config(tmp_path / "ft.toml", WRENCHES)
    for args, refused in (
            ((two, "--wrench", "/ft"), "--wrench /ft: the twin config observes force sensors ['frc', 'frc2']; name "
                                       "the one force feeds: /ft=FIELD:SENSOR[,FIELD:SENSOR...]"),
            ((config, "--wrench", "/ft=force"), "--wrench '/ft=force': expected TOPIC=FIELD:SENSOR"),
            ((config, "--wrench", "/ft=wrist:frc"), "--wrench '/ft=wrist:frc': unknown field 'wrist'"),
            ((config, "--wrench", "/ft", "--wrench", "/ft"), "--wrench: topic /ft given twice"),
            ((config, "--wrench", "/ft=force:trq,torque:frc"), "force feeds a sensor of type force; 'trq' is of type")):
        assert main(["ros2", "--config", args[0], "--robot-id", "arm-1", *args[1:]]) == 2
        assert refused in capsys.readouterr().err


POSES = ["pos", "quat"]  # arm2_sensors.xml: a framepos and a framequat of the forearm's site (motion capture)


def pose(t_ns: int, position, orientation) -> bytes:
    """A geometry_msgs/PoseStamped: position (m), orientation w, x, y, z."""
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    w, x, y, z = map(float, orientation)
    msg = TS.types[keys.POSE](header=Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="world"),
                              pose=TS.types["geometry_msgs/msg/Pose"](
                                  position=TS.types["geometry_msgs/msg/Point"](*map(float, position)),
                                  orientation=TS.types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))
    return bytes(TS.serialize_cdr(msg, keys.POSE))


def test_pose_stamped_readings_reach_a_served_motion_capture_twin_held_between_messages(ros, tmp_path):
    """A bare PoseStamped topic (`--pose /mocap`) feeds the twin's one framepos and one framequat: every grid sample
    carries the pose latest when its joint state arrived (one every third state), its orientation made unit and w
    first, of the sign nearest the reading before it (q and −q are one rotation; message 9 sends −3q). A zero
    quaternion (bad_message) and a NaN position (non_finite) are counted and change nothing."""
    n = 60
    rng = np.random.default_rng(5)
    q, qd = rng.normal(size=(2, n, 2))
    position, quat = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    t_ns, mocap = T0_NS + np.arange(n) * DT_NS, key("/mocap", keys.POSE)
    sent = {k: [(mocap, pose(t_ns[k], position[k], 3.0 * quat[k] * (-1.0 if k == 9 else 1.0)))] for k in range(0, n, 3)}
    sent[12] += [(mocap, pose(t_ns[12] + 1, position[12], (0, 0, 0, 0))),
                 (mocap, pose(t_ns[12] + 2, (np.nan, 0, 0), quat[12]))]
    config = joint_sensor_config(tmp_path / "arm2_mocap.toml", POSES)
    stats, got = serve_joint_states(ros, tmp_path, config, [[joint_state(t_ns[k], q[k], qd[k])] for k in range(n)],
                                    pose={"/mocap": {}}, sensor_msgs=sent)
    assert stats["received"]["pose:/mocap"] == n // 3 + 2
    assert stats["rejected"] == {"bad_message": 1, "non_finite": 1}, stats
    continuous = {0: quat[0]}
    for k in range(3, n, 3):
        continuous[k] = quat[k] * np.sign(quat[k] @ continuous[k - 3])
    held = np.arange(n - 1) // 3 * 3  # the last state waits for the next one
    np.testing.assert_array_equal(got["sensor:pos"], position[held])
    np.testing.assert_allclose(got["sensor:quat"], [continuous[k] for k in held], rtol=0, atol=1e-15)


def test_pose_fields_feed_position_and_orientation_sensors_and_are_checked_at_start(tmp_path, capsys):
    """A bare --pose TOPIC feeds the one framepos and the one framequat the twin observes (alone: what it observes of
    them); a mapping naming them works the same; a position mapped to a framequat, an unknown field and a malformed
    spec are refused (exit 2 on the command line)."""
    config = sensor_config(tmp_path / "mocap.toml", POSES)
    assert Ros2Bridge(BridgeSettings(config, "arm-1", pose={"/mocap": {}})).sensor_topics == {
        "pose:/mocap": {"position": "pos", "orientation": "quat"}}
    assert Ros2Bridge(BridgeSettings(sensor_config(tmp_path / "p.toml", ["pos"]), "arm-1",
                                     pose={"/mocap": {"position": "pos"}})).sensor_topics == {
        "pose:/mocap": {"position": "pos"}}
    for args, refused in ((("--pose", "/mocap=position:quat"), "position feeds a sensor of type framepos; 'quat' is "
                                                                 "of type framequat"),
                          (("--pose", "/mocap=euler:quat"), "--pose '/mocap=euler:quat': unknown field 'euler'"),
                          (("--pose", "/mocap=position"), "--pose '/mocap=position': expected TOPIC=FIELD:SENSOR")):
        assert main(["ros2", "--config", config, "--robot-id", "arm-1", *args]) == 2
        assert refused in capsys.readouterr().err


def test_fuzzed_cdr_is_only_ever_rejected():
    robot, rng = robot_joints("arm2"), np.random.default_rng(0)
    good = joint_state(T0_NS, [1.0, 2.0], [3.0, 4.0])
    codes = Counter()
    for _ in range(2000):
        raw = bytearray(good)
        for _ in range(rng.integers(1, 4)):
            i = int(rng.integers(4, len(raw)))
            if rng.random() < 0.3:
                raw[i:i + 4] = b"\xff\xff\xff\x7f"  # a huge sequence or string length
            elif rng.random() < 0.5:
                raw = raw[:i]
            else:
                raw[i] = int(rng.integers(256))
            if len(raw) < 8:
                break
        try:
            joint_state_of(decode(bytes(raw), keys.JOINT_STATE, "jazzy"), robot)
            codes["used"] += 1
        except Rejected as e:
            codes[e.code] += 1
    assert set(codes) <= {"used", "bad_cdr", "bad_message", "missing_joints", "non_finite"}
    assert codes["bad_cdr"] > 1000
