"""`Ros2Bridge`: a robot on ROS 2 (rmw_zenoh) as a twin-bayes robot, and the twin back as ROS 2 topics.

Without a ROS installation: the bridge is a zenoh peer that subscribes to the robot's topics by
their rmw_zenoh key expressions, decodes CDR with `rosbags`, puts joint states, commands and
the readings of Imu and WrenchStamped topics and of the joint states' positions, velocities and efforts (as the
MJCF sensors the twin observes: IMU sensors, force-torque sensors, encoders, joint torque sensors) on the twin's
time grid (`ros2_inbound.Sampler`) and streams them to the service through a `RobotLink` (numbered chunks, kept
until acked). It subscribes to the service's PUB stream and publishes posterior,
predictions, alerts and health as ROS 2 messages (`ros2_outbound`), with the liveliness tokens
that make the node, its publishers and its subscriptions visible to `ros2 node list` /
`ros2 topic list`. A message that cannot be used is counted by reason
(`stats()["rejected"]`) and dropped; nothing a peer sends can stop the bridge.

One thread owns the ZeroMQ sockets (the one that calls `run`); zenoh's callbacks only queue.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import zmq

from twin_bayes.data.rosbag import TOPIC_KINDS
from twin_bayes.service import protocol, ros2_keys as keys
from twin_bayes.service.auth import CurveKeys
from twin_bayes.service.client import ServiceError, Subscriber, TwinClient, TwinTimeout
from twin_bayes.service.robot_link import LinkTimeout, RobotLink
from twin_bayes.service.ros2_inbound import (Rejected, Sampler, array_command, decode, joint_readings, joint_state,
                                             robot_joints, stamp_ns, topic_readings, topic_sensors, trajectory_command)
from twin_bayes.service.ros2_outbound import (diagnostics, posterior_json, prediction_messages, sensor_outputs,
                                              string_message)

COMMAND_TYPES = {"float64_multi_array": keys.FLOAT_ARRAY, "joint_trajectory": keys.TRAJECTORY}
OUTPUTS = {"posterior": keys.STRING, "prediction": keys.TRAJECTORY, "prediction_bands": keys.FLOAT_ARRAY,
           "alerts": keys.STRING}


@dataclass(frozen=True)
class BridgeSettings:
    """What to bridge. Topics are fully qualified ROS 2 names; outputs go under `namespace`
    (default /twin/<robot_id as a ROS name>), health to /diagnostics.

    imu: {sensor_msgs/Imu topic: {field: MJCF sensor}} (fields angular_velocity, linear_acceleration,
    orientation; {}: to the twin's one observed gyro and accelerometer) and wrench: {geometry_msgs/WrenchStamped
    topic: {field: MJCF sensor}} (fields force, torque; {}: to the twin's one observed force and torque sensor) and
    pose: {geometry_msgs/PoseStamped topic: {field: MJCF sensor}} (motion capture: fields position, orientation;
    {}: to the twin's one observed framepos and framequat), sent as `sensor:<name>` fields, as is, always,
    the reading of each observed sensor a JointState feeds (`jointpos`, `jointvel`, `jointactuatorfrc`,
    `actuatorfrc`: its joint's position, velocity or effort);
    chunk_samples: samples per telemetry chunk (default 0.1 s worth); max_gap_s: joint states further
    apart start a new grid; first_seq: number of the first chunk (default: the service's highest
    stored + 1, asked at `query`, else 0); idle_flush_s: a partial chunk is sent after this long
    without joint states.
    """

    config: str
    robot_id: str
    joint_states: str = "/joint_states"
    commands: str = "/twin/commands"
    command_type: str = "float64_multi_array"
    imu: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    wrench: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    pose: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    domain: int = 0
    distro: str = "jazzy"
    zenoh_connect: tuple[str, ...] = ("tcp/127.0.0.1:7447",)
    zenoh_listen: tuple[str, ...] = ("tcp/127.0.0.1:0",)
    ingest: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    query: str | None = "tcp://127.0.0.1:5557"
    namespace: str | None = None
    node: str | None = None
    settings: dict[str, float] = field(default_factory=dict)
    chunk_samples: int | None = None
    max_gap_s: float = 0.05
    first_seq: int | None = None
    idle_flush_s: float = 0.5
    diagnostics_every_s: float = 1.0
    ack_timeout_s: float = 10.0
    curve: CurveKeys | None = None


def _zenoh_config(s: BridgeSettings):
    import zenoh

    cfg = zenoh.Config()
    cfg.insert_json5("mode", '"peer"')
    cfg.insert_json5("connect/endpoints", json.dumps(list(s.zenoh_connect)))
    cfg.insert_json5("listen/endpoints", json.dumps(list(s.zenoh_listen)))
    cfg.insert_json5("scouting/multicast/enabled", "false")
    return cfg


class Ros2Bridge:
    """Bridge one ROS 2 robot to a twin service; `run()` until stopped, then `stats()`."""

    def __init__(self, settings: BridgeSettings, context: zmq.Context | None = None) -> None:
        s = self.settings = settings
        if s.command_type not in COMMAND_TYPES:
            raise ValueError(f"command type must be one of {sorted(COMMAND_TYPES)}, got {s.command_type!r}")
        protocol.encode("ack", s.robot_id, 0, status="stored")  # ProtocolError unless a valid wire id
        self.robot = robot_joints(s.config)
        if s.chunk_samples is not None and s.chunk_samples < 1:
            raise ValueError(f"chunk_samples must be >= 1, got {s.chunk_samples}")
        # sensor topic input ('imu:<topic>', 'wrench:<topic>') -> {field: MJCF sensor it feeds}
        self.sensor_topics = topic_sensors(self.robot, {"imu": s.imu, "wrench": s.wrench, "pose": s.pose})
        # each encoder and torque sensor reads its joint's position, velocity or effort in the JointState
        fed = (*(n for fields in self.sensor_topics.values() for n in fields.values()),
               *(e.sensor for e in self.robot.joint_sensors))
        self.sampler = Sampler(self.robot.dt, s.chunk_samples or max(1, round(0.1 / self.robot.dt)), s.max_gap_s,
                               sensors=fed)
        namespace = s.namespace or f"/twin/{keys.ros_token(s.robot_id)}"
        self.node = s.node or keys.ros_token(f"twin_bayes_{s.robot_id}")
        self.inputs = {"joint_states": keys.TopicKey(s.domain, s.joint_states, keys.JOINT_STATE, s.distro),
                       "commands": keys.TopicKey(s.domain, s.commands, COMMAND_TYPES[s.command_type], s.distro)}
        self.inputs.update({name: keys.TopicKey(s.domain, name.partition(":")[2],
                                                TOPIC_KINDS[name.partition(":")[0]].msgtype, s.distro)
                            for name in self.sensor_topics})
        outputs = {**OUTPUTS, **{name: keys.FLOAT_ARRAY for name in sensor_outputs(self.robot.sensors)}}
        self.outputs = {name: keys.TopicKey(s.domain, f"{namespace}/{name}", t, s.distro)
                        for name, t in outputs.items()}
        self.outputs["diagnostics"] = keys.TopicKey(s.domain, "/diagnostics", keys.DIAGNOSTICS, s.distro)
        for topic in (*self.inputs.values(), *self.outputs.values()):
            keys.check_topic(topic.topic)
        self.ctx = context or zmq.Context.instance()
        self.received: Counter = Counter()
        self.rejected: Counter = Counter()
        self.published: Counter = Counter()
        self.lost = 0  # samples missing by the publishers' attachment sequence numbers
        self.last_problem = ""
        self._last_sensor_ns: dict[str, int] = {}  # sensor topic input -> stamp of its latest message used
        self._seen: dict[bytes, int] = {}  # publisher gid -> last attachment sequence number
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._health: dict | None = None
        self._health_at: float | None = None
        self.link: RobotLink | None = None

    # --- statistics ------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: received {input: n}, rejected {code: n}, rejected_total, lost, gaps, published
        {output: n}, link {sent, acked, resent, rejected, next_seq, unacked}, last_problem."""
        link = self.link
        return {"received": dict(self.received), "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()), "lost": self.lost, "gaps": self.sampler.gaps,
                "published": dict(self.published),
                "link": {} if link is None else {"sent": link.stats.sent, "acked": link.stats.acked,
                                                 "resent": link.stats.resent, "rejected": link.stats.rejected,
                                                 "next_seq": link.next_seq, "unacked": len(link.pending)},
                "last_problem": self.last_problem}

    # --- input ----------------------------------------------------------------------------
    def _queue(self, name: str):
        def put(sample) -> None:
            att = sample.attachment
            self._inbox.put((name, str(sample.key_expr), sample.payload.to_bytes(),
                             None if att is None else att.to_bytes()))
        return put

    def _reject(self, name: str, err: Rejected) -> None:
        self.rejected[err.code] += 1
        self.last_problem = f"{name}: {err}"[:300]

    def _take(self, name: str, key: str, payload: bytes, attachment: bytes | None) -> None:
        self.received[name] += 1
        try:
            self._check_sample(name, key, attachment)
            self._use(name, decode(payload, self.inputs[name].msgtype, self.settings.distro))
        except Rejected as err:
            self._reject(name, err)

    def _check_sample(self, name: str, key: str, attachment: bytes | None) -> None:
        topic = self.inputs[name]
        type_name, type_hash = topic.split(key)
        if (type_name, type_hash) != (topic.type_name, topic.hash):
            raise Rejected("wrong_type", f"{key}: expected {topic.type_name}/{topic.hash}")
        if attachment is None:
            return
        try:
            seq, _, gid = keys.parse_attachment(attachment)
        except ValueError as e:
            self.rejected["bad_attachment"] += 1  # counted; the data itself may still be fine
            self.last_problem = f"{name}: bad_attachment: {e}"
            return
        last = self._seen.get(gid)
        if last is not None and seq > last + 1:
            self.lost += seq - last - 1
        self._seen[gid] = seq if last is None else max(seq, last)

    def _use(self, name: str, msg) -> None:
        if name == "joint_states":
            for chunk in self.sampler.state(*joint_state(msg, self.robot), joint_readings(msg, self.robot)):
                self._send(chunk)
        elif name == "commands":
            self.sampler.command = (trajectory_command(msg, self.robot, self.sampler.latest_ns)
                                    if self.settings.command_type == "joint_trajectory"
                                    else array_command(msg, self.robot))
        else:
            t, last = stamp_ns(msg.header), self._last_sensor_ns.get(name)
            if last is not None and t <= last:
                kind = self.inputs[name].msgtype.rpartition("/")[2]
                raise Rejected("out_of_order", f"{kind} stamp {t} ns is not after the last one, {last} ns")
            fields = self.sensor_topics[name]
            self.sampler.readings.update(topic_readings(name.partition(":")[0], msg, fields, self.sampler.readings))
            self._last_sensor_ns[name] = t

    def _send(self, chunk) -> None:
        try:
            self.link.send(**chunk, settings=self.settings.settings or None, timeout_s=self.settings.ack_timeout_s)
        except LinkTimeout as e:  # the service is away: the chunk is dropped, the ones held stay held
            self.rejected["not_sent"] += 1
            self.last_problem = f"service: {e}"

    # --- output ---------------------------------------------------------------------------
    def _first_seq(self) -> int:
        s = self.settings
        if s.first_seq is not None or s.query is None:
            return s.first_seq or 0
        try:
            with TwinClient(s.query, timeout_s=2.0, retries=1, curve=s.curve, context=self.ctx) as client:
                return int(client.health()["robots"][s.robot_id]["highest_seq"]) + 1
        except (TwinTimeout, ServiceError, KeyError, TypeError, zmq.ZMQError) as e:
            self.last_problem = f"no chunk number from {s.query} ({type(e).__name__}: {e}); starting at 0"
            return 0

    def _publish(self, name: str, payload: bytes) -> None:
        publisher, gid = self._publishers[name]
        self.published[name] += 1
        publisher.put(payload, attachment=keys.attachment(self.published[name], time.time_ns(), gid))

    def _event(self, event) -> None:
        kind, m = event.topic.split("/", 1)[0], event.message
        if kind in ("posterior", "snapshot") and m.robot_id == self.settings.robot_id:
            self._publish("posterior", string_message(self.settings.distro, posterior_json(m)))
        elif kind == "prediction" and m.robot_id == self.settings.robot_id:
            for name, payload in prediction_messages(m, self.robot, self.settings.distro):
                self._publish(name, payload)
        elif kind == "alert" and m.robot_id == self.settings.robot_id:
            body = {k: v for k, v in m.extra.items() if k != "op"}
            self._publish("alerts", string_message(self.settings.distro, {"robot_id": m.robot_id, **body}))
        elif kind == "health":
            self._health, self._health_at = dict(m.extra), time.monotonic()

    def _diagnostics(self) -> None:
        age = None if self._health_at is None else time.monotonic() - self._health_at
        flat = {k: v for k, v in self.stats().items() if k != "link"}
        flat.update({f"link_{k}": v for k, v in self.stats()["link"].items()})
        self._publish("diagnostics", diagnostics(self.settings.distro, self.settings.robot_id, time.time_ns(),
                                                 self._health, age, flat))

    # --- the loop -------------------------------------------------------------------------
    def _declare(self, session) -> list:
        """Subscriptions, publishers and liveliness tokens; returns what must be undeclared."""
        import zenoh

        zid, live = str(session.zid()), session.liveliness()
        held = [live.declare_token(keys.node_token(self.settings.domain, zid, self.node))]
        self._publishers = {}
        for i, (name, topic) in enumerate(self.inputs.items(), start=1):
            # called on zenoh's network thread, not a thread per subscription: joint states and commands
            # reach the inbox in the order they arrived on the link
            callback = zenoh.handlers.Callback(self._queue(name), indirect=False)
            held.append(session.declare_subscriber(topic.any_type, callback))
            held.append(live.declare_token(topic.liveliness(zid, i, "MS", self.node)))
        for i, (name, topic) in enumerate(self.outputs.items(), start=len(self.inputs) + 1):
            token = topic.liveliness(zid, i, "MP", self.node)
            self._publishers[name] = (session.declare_publisher(topic.data), keys.gid(token))
            held += [self._publishers[name][0], live.declare_token(token)]
        return held

    def run(self, stop: threading.Event | None = None, seconds: float | None = None) -> dict:
        """Bridge until `stop` is set or `seconds` pass; sends what is left, then returns `stats()`."""
        import zenoh

        s, stop = self.settings, stop or threading.Event()
        deadline = None if seconds is None else time.monotonic() + seconds
        topics = [f"{k}/{s.robot_id}/" for k in ("posterior", "prediction", "alert")] + ["health/"]
        session = zenoh.open(_zenoh_config(s))
        held = self._declare(session)
        client = TwinClient(s.query, timeout_s=2.0, retries=1, curve=s.curve, context=self.ctx) if s.query else None
        self.link = RobotLink(s.ingest, s.robot_id, first_seq=self._first_seq(), curve=s.curve, context=self.ctx)
        sub = Subscriber(s.pub, topics, client, curve=s.curve, context=self.ctx)
        next_diag, last_input = time.monotonic(), time.monotonic()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    item = self._inbox.get(timeout=0.005)
                    self._take(*item)
                    last_input = time.monotonic()
                except queue.Empty:
                    if time.monotonic() - last_input > s.idle_flush_s:
                        for chunk in self.sampler.flush():
                            self._send(chunk)
                self.link.poll(0)
                self._pump(sub)
                if time.monotonic() >= next_diag:
                    self._diagnostics()
                    next_diag = time.monotonic() + s.diagnostics_every_s
        finally:
            for chunk in self.sampler.flush():
                self._send(chunk)
            self.link.flush(s.ack_timeout_s)
            for h in reversed(held):
                h.undeclare()
            session.close()
            sub.close()
            self.link.close()
            if client is not None:
                client.close()
        return self.stats()

    def _pump(self, sub: Subscriber) -> None:
        """Publish what the service's PUB stream has for us now."""
        for _ in range(64):
            try:
                events = sub.recv(0)
            except (protocol.ProtocolError, ServiceError, TwinTimeout) as e:
                self.last_problem = f"service stream: {type(e).__name__}: {e}"[:300]
                continue
            if not events:
                return
            for event in events:
                self._event(event)
