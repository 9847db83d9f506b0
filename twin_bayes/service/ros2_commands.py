"""CLI command `twin-bayes ros2` (registered through cli.COMMAND_MODULES): a ROS 2 robot on rmw_zenoh
to the twin service and the twin back to ROS 2 (docs/ROS2.md). Robot side: never imports JAX.

Prints one JSON line when it stops: the bridge's counters (received, rejected by reason, lost,
published, link).
"""
from __future__ import annotations

import json
import signal
import sys
import threading

EXIT_BAD_INPUT = 2


def register(sub) -> dict:
    p = sub.add_parser("ros2", help="bridge a ROS 2 robot (rmw_zenoh, no ROS install) to the twin service")
    p.add_argument("--config", required=True, help="twin config (file or shipped name): joint names from its MJCF")
    p.add_argument("--robot-id", required=True, help="robot id on the twin service")
    p.add_argument("--joint-states", default="/joint_states", help="sensor_msgs/JointState topic")
    p.add_argument("--commands", default="/twin/commands", help="command topic")
    p.add_argument("--command-type", choices=("float64_multi_array", "joint_trajectory"),
                   default="float64_multi_array",
                   help="std_msgs/Float64MultiArray (one value per actuator) or trajectory_msgs/JointTrajectory")
    p.add_argument("--imu", action="append", default=[], metavar="TOPIC[=FIELD:SENSOR,...]",
                   help="sensor_msgs/Imu topic feeding the twin's observed sensors, as `fit --imu`: fields "
                        "angular_velocity, linear_acceleration, orientation, e.g. "
                        "/imu=angular_velocity:torso_gyro,linear_acceleration:torso_accel; a bare TOPIC feeds the "
                        "config's one observed gyro and accelerometer (repeat per topic; default: none)")
    p.add_argument("--wrench", action="append", default=[], metavar="TOPIC[=FIELD:SENSOR,...]",
                   help="geometry_msgs/WrenchStamped topic feeding the twin's observed force-torque sensors: fields "
                        "force (a `force` sensor), torque (a `torque` sensor), e.g. /wrist/ft=force:wrist_force,"
                        "torque:wrist_torque; a bare TOPIC feeds the config's one observed force and torque sensor "
                        "(repeat per topic; default: none)")
    p.add_argument("--pose", action="append", default=[], metavar="TOPIC[=FIELD:SENSOR,...]",
                   help="geometry_msgs/PoseStamped topic (motion capture) feeding the twin's observed frame sensors: "
                        "fields position (a `framepos` sensor), orientation (a `framequat` sensor), e.g. "
                        "/mocap/torso=position:torso_pos; a bare TOPIC feeds the config's one observed framepos and "
                        "framequat (repeat per topic; default: none)")
    p.add_argument("--domain", type=int, default=0, help="ROS_DOMAIN_ID")
    p.add_argument("--distro", choices=("humble", "jazzy", "kilted", "rolling"), default="jazzy",
                   help="humble: key expressions carry TypeHashNotSupported instead of RIHS01 hashes")
    p.add_argument("--zenoh-endpoint", action="append", default=None, metavar="LOCATOR",
                   help="zenoh router or peer to connect to (default tcp/127.0.0.1:7447; repeatable)")
    p.add_argument("--zenoh-listen", action="append", default=None, metavar="LOCATOR",
                   help="where this peer listens (default tcp/127.0.0.1:0)")
    p.add_argument("--service-ingest", default="tcp://127.0.0.1:5555", help="the twin service's ingest address")
    p.add_argument("--service-pub", default="tcp://127.0.0.1:5556", help="the twin service's PUB address")
    p.add_argument("--service-query", default="tcp://127.0.0.1:5557",
                   help="asked for the next chunk number on start ('' for none: start at --first-seq)")
    p.add_argument("--namespace", default=None, help="ROS namespace of the outputs (default /twin/<robot id>)")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="known constant of the robot, e.g. servo_kp=400 (repeatable)")
    p.add_argument("--chunk-samples", type=int, default=None, help="samples per chunk (default: 0.1 s worth)")
    p.add_argument("--max-gap", type=float, default=0.05, help="s between joint states that starts a new grid")
    p.add_argument("--first-seq", type=int, default=None,
                   help="number of the first chunk (default: one above the highest the service stores)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: run until "
                                                             "SIGINT/SIGTERM)")
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="key directory of `twin-bayes keys`: CURVE on (default: off)")
    p.add_argument("--key-name", default=None, help="certificate name in DIR (default: the robot id)")
    return {"ros2": cmd_ros2}


def sensor_topics(specs: list[str], option: str) -> dict[str, dict[str, str]]:
    """`--imu`, `--wrench` or `--pose` (`option` 'imu', 'wrench', 'pose') specs as {topic: {field: sensor}}:
    TOPIC=FIELD:SENSOR[,...] as `fit --imu`, a bare TOPIC as {} (the bridge maps it to the config's one sensor of
    each type it feeds); ValueError for a malformed spec."""
    from twin_bayes.data.rosbag import TOPIC_KINDS, parse_sensor_topics

    topics = parse_sensor_topics([s for s in specs if "=" in s], TOPIC_KINDS[option].fields, f"--{option}")
    for topic in (s for s in specs if "=" not in s):
        if topic in topics:
            raise ValueError(f"--{option}: topic {topic} given twice")
        topics[topic] = {}
    return topics


def cmd_ros2(args) -> int:
    import zenoh
    import zmq

    from twin_bayes.service.auth import KeysError, load
    from twin_bayes.service.robot_commands import _settings
    from twin_bayes.service.ros2 import BridgeSettings, Ros2Bridge
    try:
        curve = None if args.curve_keys is None else load(args.curve_keys, args.key_name or args.robot_id)
        settings = BridgeSettings(
            args.config, args.robot_id, args.joint_states, args.commands, args.command_type,
            sensor_topics(args.imu, "imu"), sensor_topics(args.wrench, "wrench"), sensor_topics(args.pose, "pose"),
            args.domain, args.distro, tuple(args.zenoh_endpoint or ("tcp/127.0.0.1:7447",)),
            tuple(args.zenoh_listen or ("tcp/127.0.0.1:0",)), args.service_ingest, args.service_pub,
            args.service_query or None, args.namespace, settings=_settings(args.setting),
            chunk_samples=args.chunk_samples, max_gap_s=args.max_gap, first_seq=args.first_seq, curve=curve)
        bridge = Ros2Bridge(settings)
    except (KeysError, ValueError, OSError, zmq.ZMQError) as e:  # ProtocolError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = bridge.run(stop, args.seconds)
    except zenoh.ZError as e:  # e.g. an endpoint that cannot be opened
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps({"robot_id": args.robot_id, **stats}), flush=True)
    return 0
