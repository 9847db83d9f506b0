"""CLI commands `twin-bayes emulate`, `replay` and `watch` (registered through cli.COMMAND_MODULES).

emulate and replay print one JSON line when done: chunks, samples, resent, acked, rejected, plans_rejected,
errors.
"""
from __future__ import annotations

import json
import math
import sys

EXIT_BAD_INPUT = 2
EXIT_NOT_DELIVERED = 1


def _curve_args(p) -> None:
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="key directory of `twin-bayes keys`: CURVE on (default: off)")
    p.add_argument("--key-name", default=None, help="certificate name in DIR (default: the robot id / 'watch')")


def _link_args(p) -> None:
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the service's ingest address")
    p.add_argument("--chunk-samples", type=int, default=None, help="samples per chunk (default: 0.1 s worth)")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="s to wait for acks before giving up")
    p.add_argument("--first-seq", type=int, default=0, help="number of the first chunk (continue a stream)")
    _curve_args(p)


def register(sub) -> dict:
    e = sub.add_parser("emulate", help="a robot emulated by native MuJoCo with hidden truth, streaming telemetry")
    e.add_argument("--robot", required=True, help="shipped robot name (its twin config gives the prior)")
    e.add_argument("--config", default=None, help="twin config whose prior draws the truth (default: --robot)")
    e.add_argument("--truth", default=None,
                   help="truth TOML: true parameter values, and physics and sensing the twin does not model "
                        "(docs/EMULATOR.md; default: parameters drawn from the prior)")
    e.add_argument("--truth-out", default=None, help="write the truth here (default when drawn: <robot-id>-truth.toml)")
    e.add_argument("--robot-id", default=None, help="robot id on the wire (default: the config's name)")
    e.add_argument("--rate", type=float, default=None,
                   help="samples per wall-clock second (default: real time; 0: as fast as acks allow)")
    e.add_argument("--seconds", type=float, default=10.0, help="robot time to emulate (s)")
    e.add_argument("--seed", type=int, default=0, help="seed of the drawn truth, the excitation and the noise")
    e.add_argument("--drift", action="append", default=[], metavar="PARAM=FACTOR@SECONDS",
                   help="multiply a true parameter at a time, e.g. body_mass:forearm=1.3@5 (repeatable)")
    e.add_argument("--plan", action="store_true",
                   help="send with each chunk the commands of the next --plan-seconds (docs/PROTOCOL.md, Plans)")
    e.add_argument("--plan-seconds", type=float, default=0.5, help="length of each plan (s)")
    _link_args(e)
    r = sub.add_parser("replay", help="stream recorded logs (bam, npz, rosbag2) to the service")
    r.add_argument("files", nargs="+", help="recordings, streamed in this order under one robot id")
    r.add_argument("--format", choices=("bam", "npz", "rosbag2"), default=None,
                   help="default: a folder is a rosbag2 bag, else by extension (.json bam, .npz, .mcap/.db3)")
    r.add_argument("--robot-id", default="replay", help="robot id on the wire")
    r.add_argument("--speed", type=float, default=1.0, help="x real time (0: as fast as acks allow)")
    r.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="known constant for every file, e.g. servo_kp=400 (overrides the file's)")
    r.add_argument("--joint-topic", default="/joint_states", help="rosbag2: sensor_msgs/JointState topic")
    r.add_argument("--command-topic", default="/twin/commands", help="rosbag2: commands topic")
    r.add_argument("--joints", default=None, help="rosbag2: comma-separated joint order (default: as recorded)")
    _link_args(r)
    w = sub.add_parser("watch", help="live view of the service's posterior, predictions and health")
    w.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="the service's PUB address")
    w.add_argument("--query", default=None, help="the service's query address: snapshots on start and after gaps "
                                                 "(default: none, no resync)")
    w.add_argument("--json", action="store_true", help="one JSON object per message instead of the live view")
    w.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: run until "
                                                             "Ctrl-C)")
    w.add_argument("--topic", action="append", default=None, help="topic prefix, e.g. posterior/ (default: all)")
    w.add_argument("--foxglove", type=int, nargs="?", const=8765, default=None, metavar="PORT",
                   help="also serve the twin to Foxglove over WebSocket on 127.0.0.1:PORT (default 8765)")
    w.add_argument("--mcap", default=None, metavar="FILE",
                   help="also record the Foxglove channels to an MCAP file (default: none)")
    _curve_args(w)
    return {"emulate": cmd_emulate, "replay": cmd_replay, "watch": cmd_watch}


def _bad(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _keys(args, name: str):
    from twin_bayes.service.auth import load
    return None if args.curve_keys is None else load(args.curve_keys, args.key_name or name)


def _link(args, robot_id: str):
    from twin_bayes.service import protocol
    from twin_bayes.service.robot_link import RobotLink
    protocol.encode("ack", robot_id, 0, status="stored")  # ProtocolError unless a valid wire id
    if args.chunk_samples is not None and args.chunk_samples < 1:
        raise ValueError(f"--chunk-samples must be >= 1, got {args.chunk_samples}")
    return RobotLink(args.endpoint, robot_id, first_seq=args.first_seq, curve=_keys(args, robot_id))


def _deliver(link, send) -> int:
    """Run `send()` (which streams through `link`), print the summary line; 1 if chunks were lost."""
    from twin_bayes.service.robot_link import LinkTimeout
    try:
        chunks = send()
        problem = ""
    except LinkTimeout as e:
        chunks, problem = link.stats.sent, str(e)
    finally:
        link.close()
    s = link.stats
    print(json.dumps({"robot_id": link.robot_id, "chunks": chunks, "next_seq": link.next_seq, "resent": s.resent,
                      "acked": s.acked, "duplicates": s.duplicates, "rejected": s.rejected,
                      "plans_rejected": s.plans_rejected,
                      "errors": [list(x) for x in s.errors[-10:]]}), flush=True)
    if problem or s.rejected:
        print(f"error: {problem or f'{s.rejected} chunks rejected by the service'}", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    return 0


def cmd_emulate(args) -> int:
    import zmq

    from twin_bayes.config import ConfigError, load_config
    from twin_bayes.service import emulate
    from twin_bayes.service.auth import KeysError
    from twin_bayes.sim import load_robot
    from twin_bayes.sim.truth import read_truth
    try:
        robot = load_robot(args.robot)
        cfg = load_config(args.config or args.robot)
        drifts = tuple(emulate.Drift.parse(d) for d in args.drift)
        if args.truth:
            truth = read_truth(args.truth, robot)
        else:
            truth = emulate.Truth(emulate.draw_truth(cfg, robot, args.seed))
        robot_id = args.robot_id or cfg.name
        truth_out = args.truth_out or (None if args.truth else f"{robot_id}-truth.toml")
        if args.seconds <= 0 or (args.rate is not None and args.rate < 0):
            raise ValueError("--seconds must be > 0 and --rate >= 0")
        plan_steps = round(args.plan_seconds / robot.dt) if args.plan else 0
        if args.plan and not 1 <= plan_steps <= round(cfg.inference.window_s / robot.dt) + 1:
            raise ValueError(f"--plan-seconds must be between one step ({robot.dt} s) and one twin window "
                             f"({cfg.inference.window_s} s), got {args.plan_seconds}")
        noise = {**cfg.observation.noise_scale, **truth.noise}
        emulated = emulate.EmulatedRobot(robot, truth.params, args.seed, noise, drifts, truth.misspecified)
        link = _link(args, robot_id)
    except (ConfigError, KeysError, ValueError, OSError, zmq.ZMQError) as e:
        return _bad(str(e))
    if truth_out:
        emulate.write_truth(truth_out, truth, drifts)
    chunk = args.chunk_samples or max(1, round(0.1 / robot.dt))
    return _deliver(link, lambda: emulate.stream(emulated, link, args.seconds, chunk, args.rate, args.ack_timeout,
                                                 plan_steps))


def _settings(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, value = (x.strip() for x in pair.partition("="))
        try:
            out[name] = float(value) if sep and name else math.nan
        except ValueError:
            out[name] = math.nan
        if not math.isfinite(out[name]):
            raise ValueError(f"--setting {pair!r}: expected NAME=NUMBER")
    return out


def cmd_replay(args) -> int:
    from dataclasses import replace

    import zmq

    from twin_bayes.data import DataError, read_trajectory, trajectory_format
    from twin_bayes.data.rosbag import read_rosbag
    from twin_bayes.service.auth import KeysError
    from twin_bayes.service.replay import replay
    try:
        settings = _settings(args.setting)
        if args.speed < 0:
            raise ValueError(f"--speed must be >= 0, got {args.speed}")
        trajs = []
        for path in args.files:
            if trajectory_format(path, args.format) == "rosbag2":
                joints = args.joints.split(",") if args.joints else None
                traj = read_rosbag(path, args.joint_topic, args.command_topic, joints)
            else:
                traj = read_trajectory(path, args.format)
            trajs.append(replace(traj, settings={**traj.settings, **settings}))
        link = _link(args, args.robot_id)
    except (DataError, KeysError, ValueError, OSError, zmq.ZMQError) as e:
        return _bad(str(e))
    chunk = args.chunk_samples or max(1, round(0.1 / trajs[0].dt))
    return _deliver(link, lambda: replay(trajs, link, chunk, args.speed, ack_timeout_s=args.ack_timeout))


def cmd_watch(args) -> int:
    import zmq

    from twin_bayes.service.auth import KeysError
    from twin_bayes.service.client import ServiceError, Subscriber, TwinClient, TwinTimeout
    from twin_bayes.service.watch import watch
    try:
        curve = _keys(args, "watch")
        sink = None
        if args.foxglove is not None or args.mcap is not None:
            from twin_bayes.service.foxglove import FoxgloveSink
            sink = FoxgloveSink(args.foxglove, args.mcap)
        client = TwinClient(args.query, timeout_s=3.0, retries=1, curve=curve) if args.query else None
        sub = Subscriber(args.endpoint, args.topic or ("",), client, curve=curve)
    except (KeysError, ValueError, OSError, RuntimeError, zmq.ZMQError) as e:  # RuntimeError: port taken
        return _bad(str(e))
    if client is not None:  # robots known up front get a snapshot with the first message
        try:
            sub.robots.update(client.health().get("robots", {}))
        except (TwinTimeout, ServiceError, zmq.ZMQError) as e:
            print(f"warning: no health from {args.query} ({e})", file=sys.stderr)
    try:
        watch(sub, args.seconds, args.json, sink=sink)
    except KeyboardInterrupt:
        pass
    finally:
        if sink is not None:
            sink.close()
        sub.close()
        if client is not None:
            client.close()
    return 0
