"""ROS 2 messages in: CDR to arrays, joint names to the twin's columns, samples on the twin's time grid.

No JAX: the robot is read from the twin config's MJCF with native MuJoCo. The service takes
telemetry only at exactly the twin's timestep, so `Sampler` puts joint states on that grid:
q and qd are interpolated linearly between consecutive joint states, and each grid sample gets
the command (and each Imu- or WrenchStamped-fed sensor's reading) that was the latest one received when
the last joint state at or before it arrived (a state stamped up to dt/10 after a grid time counts as at
it: stamp jitter), held as on the robot. The twin's encoder and joint torque sensors read the joint
states' positions, velocities and efforts, measured with q and qd and interpolated as they are. A joint
state more than `max_gap_s` after the previous one starts a new grid (the service sees a time jump and
cuts its window there).
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin_bayes.data.rosbag import JOINT_STATE_SENSOR_TYPES, TOPIC_KINDS, JointSensor
from twin_bayes.service.ros2_keys import typestore

ROBOTS_DIR = Path(__file__).resolve().parent.parent / "robots"
_HINGE_OR_SLIDE = (2, 3)  # mjtJoint: free 0, ball 1, slide 2, hinge 3
#: What a JointState field's sensors are called in messages.
_SENSOR_KIND = {"position": "encoder", "velocity": "encoder", "effort": "torque"}
_PLURAL = {"position": "positions", "velocity": "velocities", "effort": "efforts"}


class Rejected(ValueError):
    """A ROS 2 message the bridge does not use; `code` names the reason (counted by the bridge)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class RobotJoints:
    """The twin's columns: `joints` of q and qd (MJCF order), the joint each ctrl column drives
    (`actuators`), the sample interval `dt` (s), the config's `settings` names, the MJCF sensors
    its twin observes (`sensors`, config order), their MuJoCo types (`sensor_types`: 'gyro',
    'accelerometer', 'framequat', ...) and those a JointState feeds (`joint_sensors`, config order: encoders
    `jointpos`, `jointvel` and joint torque sensors `jointactuatorfrc`, `actuatorfrc`)."""

    robot: str
    joints: tuple[str, ...]
    actuators: tuple[str, ...]
    dt: float
    settings: tuple[str, ...] = ()
    sensors: tuple[str, ...] = ()
    sensor_types: tuple[str, ...] = ()
    joint_sensors: tuple[JointSensor, ...] = ()


def _config_path(config: str | Path) -> Path:
    p = Path(config)
    if p.is_file():
        return p.resolve()
    shipped = sorted(ROBOTS_DIR.glob(f"*/{p.stem}.toml"))
    if not shipped:
        raise ValueError(f"{config}: no such config file, nor a shipped config")
    return shipped[0]


def robot_joints(config: str | Path) -> RobotJoints:
    """Joint and actuator names of a twin config's robot; ValueError if the robot has joints a
    JointState cannot carry (free or ball joints), actuators on anything but a joint, or observed
    sensors a JointState cannot feed (`_joint_sensors`)."""
    import mujoco

    path = _config_path(config)
    try:
        data = tomllib.loads(path.read_text())
        name = str(data["robot"]["name"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a twin config with [robot] name ({e})") from None
    if name.endswith(".xml"):
        mjcf = Path(name) if Path(name).is_absolute() else path.parent / name
    else:
        found = sorted(ROBOTS_DIR.glob(f"*/{name}.xml"))
        if not found:
            raise ValueError(f"{path}: robot {name!r} is neither an MJCF path nor a shipped robot")
        mjcf = found[0]
    m = mujoco.MjModel.from_xml_path(str(mjcf))
    joint = lambda j: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(j))  # noqa: E731
    if any(t != mujoco.mjtTrn.mjTRN_JOINT for t in m.actuator_trntype):
        raise ValueError(f"{mjcf.name}: every actuator must drive a joint")
    sensors = tuple(data.get("observation", {}).get("sensors", ()))
    types = _sensor_types(m, sensors, mjcf.name)
    fed = _joint_sensors(m, sensors, types, mjcf.name)  # first: a sensor on a ball joint is refused naming it
    _counted_once(fed, tuple(data.get("observation", {}).get("channels", ("q", "qd"))), mjcf.name)
    if any(t not in _HINGE_OR_SLIDE for t in m.jnt_type):
        raise ValueError(f"{mjcf.name}: the ROS 2 bridge needs hinge and slide joints only "
                         "(a JointState carries one position per joint)")
    return RobotJoints(name, tuple(joint(j) for j in range(m.njnt)),
                       tuple(joint(j) for j in m.actuator_trnid[:, 0]), float(m.opt.timestep),
                       tuple(data.get("settings", {})), sensors, types, fed)


def _sensor_types(m, names: tuple[str, ...], mjcf: str) -> tuple[str, ...]:
    """MuJoCo type of each named sensor of model `m`, as its MJCF element ('gyro', 'jointactuatorfrc'); ValueError
    for a name it lacks."""
    import mujoco

    ids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SENSOR, n) for n in names]
    unknown = [n for n, i in zip(names, ids) if i < 0]
    if unknown:
        raise ValueError(f"{mjcf}: declares no sensors {unknown}, which the config observes")
    kinds = (mujoco.mjtSensor(int(m.sensor_type[i])).name.removeprefix("mjSENS_").lower() for i in ids)
    return tuple({"jointactfrc": "jointactuatorfrc"}.get(k, k) for k in kinds)  # the enum's one short name


def _joint_sensors(m, names: tuple[str, ...], types: tuple[str, ...], mjcf: str) -> tuple[JointSensor, ...]:
    """The sensors among `names` a JointState feeds (see JointSensor); ValueError for one on a joint that is not a
    hinge or slide (a JointState carries one number per joint), an actuatorfrc whose joint another actuator drives
    too (the joint's effort is their sum) or of gear 0."""
    import mujoco

    obj = mujoco.mjtObj
    named = lambda kind, i: mujoco.mj_id2name(m, kind, int(i))  # noqa: E731
    out = []
    for sensor, kind in zip(names, types):
        if kind not in JOINT_STATE_SENSOR_TYPES:
            continue
        i = int(m.sensor_objid[mujoco.mj_name2id(m, obj.mjOBJ_SENSOR, sensor)])
        j, gear = (int(m.actuator_trnid[i, 0]), float(m.actuator_gear[i, 0])) if kind == "actuatorfrc" else (i, 1.0)
        joint = named(obj.mjOBJ_JOINT, j)
        if m.jnt_type[j] not in _HINGE_OR_SLIDE:
            jtype = mujoco.mjtJoint(int(m.jnt_type[j])).name.removeprefix("mjJNT_").lower()
            raise ValueError(f"{mjcf}: {kind} sensor {sensor!r} reads joint {joint!r}, a {jtype} joint; a JointState "
                             "feeds sensors of hinge and slide joints only (one number per joint)")
        if kind == "actuatorfrc":
            actuator = named(obj.mjOBJ_ACTUATOR, i)
            others = [named(obj.mjOBJ_ACTUATOR, a) for a in range(m.nu) if a != i and m.actuator_trnid[a, 0] == j]
            if others or gear == 0:
                why = f"actuators {others} drive joint {joint!r} too" if others else "its gear is 0"
                raise ValueError(f"{mjcf}: torque sensor {sensor!r} reads actuator {actuator!r}'s force, which a "
                                 f"JointState's effort of joint {joint!r} does not give: {why}; observe a "
                                 f"jointactuatorfrc on {joint!r} instead")
        out.append(JointSensor(sensor, JOINT_STATE_SENSOR_TYPES[kind], joint, gear))
    return tuple(out)


def _counted_once(fed: tuple[JointSensor, ...], channels: tuple[str, ...], mjcf: str) -> None:
    """ValueError for an encoder (jointpos, jointvel) whose JointState field the twin also observes as its q or
    qd channel: the message has one position and one velocity per joint, so the twin would count one number
    twice, as two measurements with independent noise."""
    twice = [f"{s.sensor!r} reads joint {s.joint!r}'s {s.field}, in {c} too" for s in fed
             for c in channels if (s.field, c) in (("position", "q"), ("velocity", "qd"))]
    if twice:
        raise ValueError(f"{mjcf}: a JointState gives the twin's q and qd and its encoder sensors the same numbers, "
                         f"which it would count twice: {', '.join(twice)}; observe each once (leave that channel "
                         "out of [observation] channels, or the sensor out of sensors)")


def topic_sensors(robot: RobotJoints,
                  options: Mapping[str, Mapping[str, Mapping[str, str]]]) -> dict[str, dict[str, str]]:
    """{input '<option>:<topic>': {field: MJCF sensor}} of the sensor topics {option: {topic: {field: sensor}}}
    (kinds of data.rosbag.TOPIC_KINDS: 'imu', 'wrench', 'pose'), checked against the twin: an empty mapping is filled
    with the option's bare fields to the twin's one observed sensor of each one's type. ValueError for an unknown
    field, a sensor the twin does not observe or of another type, a sensor fed twice, or (with any topic) an observed
    sensor left unfed, by these topics or the JointState (`robot.joint_sensors`): the service refuses telemetry
    without it."""
    types = dict(zip(robot.sensors, robot.sensor_types))
    out, fed = {}, []
    for option, topics in options.items():
        kinds = TOPIC_KINDS[option].sensor_types
        for topic, given in topics.items():
            fields = out[f"{option}:{topic}"] = dict(given) or _derived(robot, option, topic)
            for part, name in fields.items():
                if part not in kinds:
                    raise ValueError(f"--{option} {topic}: unknown field {part!r}; expected one of {list(kinds)}")
                if name not in types:
                    raise ValueError(f"--{option} {topic}: {part} maps to sensor {name!r}, which the twin config does "
                                     f"not observe (it observes {list(robot.sensors)})")
                if types[name] != kinds[part]:
                    raise ValueError(f"--{option} {topic}: {part} feeds a sensor of type {kinds[part]}; "
                                     f"{name!r} is of type {types[name]}")
                fed.append(name)
    twice = sorted({n for n in fed if fed.count(n) > 1})
    if twice:
        raise ValueError(f"sensors {twice} are fed more than once (--imu, --wrench, --pose)")
    unfed = [n for n in robot.sensors if n not in fed and n not in {e.sensor for e in robot.joint_sensors}]
    if out and unfed:
        raise ValueError(f"the twin config observes sensors {unfed} that no --imu, --wrench or --pose mapping feeds, "
                         "nor a JointState (the service refuses telemetry without them)")
    return out


def _derived(robot: RobotJoints, option: str, topic: str) -> dict[str, str]:
    """The option's bare fields to the twin's one observed sensor of each one's type (if any)."""
    kinds, out = TOPIC_KINDS[option].sensor_types, {}
    for part in TOPIC_KINDS[option].bare:
        names = [n for n, t in zip(robot.sensors, robot.sensor_types) if t == kinds[part]]
        if len(names) > 1:
            raise ValueError(f"--{option} {topic}: the twin config observes {kinds[part]} sensors {names}; name the "
                             f"one {part} feeds: {topic}=FIELD:SENSOR[,FIELD:SENSOR...]")
        out.update({part: n for n in names})
    if not out:
        wanted = " or ".join(kinds[part] for part in TOPIC_KINDS[option].bare)
        raise ValueError(f"--{option} {topic}: the twin config observes no {wanted} for it to feed")
    return out


def decode(raw: bytes, msgtype: str, distro: str):
    """CDR bytes to a `rosbags` message; Rejected('bad_cdr') for anything that does not parse."""
    try:
        return typestore(distro).deserialize_cdr(raw, msgtype)
    except Exception as e:  # rosbags raises many types on malformed bytes
        raise Rejected("bad_cdr", f"{msgtype}: {type(e).__name__}: {e}"[:300]) from None


def stamp_ns(header) -> int:
    """A std_msgs/Header's stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _finite(name: str, *arrays: np.ndarray) -> None:
    if not all(np.isfinite(a).all() for a in arrays):
        raise Rejected("non_finite", f"{name}: NaN or Inf")


def _columns(names: list[str], wanted: tuple[str, ...], what: str) -> list[int]:
    missing = [j for j in wanted if j not in names]
    if missing:
        raise Rejected("missing_joints", f"{what} lacks joints {missing} (has {names})")
    return [names.index(j) for j in wanted]


def _lacking(msg, robot: RobotJoints, fields: tuple[str, ...], why: str = "") -> str:
    """'' if a sensor_msgs/JointState has one value per name in each of `fields`, else what it lacks (`why` after
    it), naming each of the twin's sensors that reads a field it lacks and that sensor's joint."""
    names = list(msg.name)
    counts = {f: len(getattr(msg, f)) for f in fields}
    short = [f for f, n in counts.items() if n != len(names)]
    if not short:
        return ""
    has = " and ".join(f"no {f}" if not counts[f] else
                       f"{counts[f]} {f if counts[f] == 1 else _PLURAL[f]} for its {len(names)} names" for f in short)
    readers = [e for e in robot.joint_sensors if e.field in short]
    read = "" if not readers else (
        f"; the twin's {_SENSOR_KIND[readers[0].field]} sensors read their joint's "
        f"{' or '.join(f for f in short if any(e.field == f for e in readers))}: "
        + ", ".join(f"{e.sensor!r} (joint {e.joint!r})" for e in readers))
    return f"JointState carries {has}{why}{read}"


def joint_state(msg, robot: RobotJoints) -> tuple[int, np.ndarray, np.ndarray]:
    """(stamp ns, q (nq,), qd (nv,)) of a sensor_msgs/JointState, columns in the twin's joint order.
    Rejected('bad_message') for positions or velocities not one per name, naming the encoder sensors that read
    what it lacks."""
    lacking = _lacking(msg, robot, ("position", "velocity"),
                       " (q and qd need a position and a velocity for each name)")
    if lacking:
        raise Rejected("bad_message", lacking)
    names = list(msg.name)
    idx = _columns(names, robot.joints, "JointState")
    q, qd = np.asarray(msg.position, np.float64)[idx], np.asarray(msg.velocity, np.float64)[idx]
    _finite("JointState", q, qd)
    return stamp_ns(msg.header), q, qd


def joint_readings(msg, robot: RobotJoints) -> dict[str, np.ndarray]:
    """{sensor: reading (1,)} of the twin's sensors a JointState feeds (`robot.joint_sensors`) from a
    sensor_msgs/JointState that `joint_state` took: its position, velocity or effort of each sensor's joint (by
    name) over the divisor; a position or velocity is the number q or qd is made of. Rejected('missing_effort') for
    efforts not one per name (an empty effort included) with torque sensors observed, naming each and its joint."""
    if not robot.joint_sensors:
        return {}
    lacking = _lacking(msg, robot, ("effort",) if any(e.field == "effort" for e in robot.joint_sensors) else ())
    if lacking:
        raise Rejected("missing_effort", lacking)
    names = list(msg.name)
    out = {e.sensor: np.asarray(getattr(msg, e.field), np.float64)[[names.index(e.joint)]] / e.divisor
           for e in robot.joint_sensors}
    _finite("JointState effort", *(out[e.sensor] for e in robot.joint_sensors if e.field == "effort"))
    return out


@dataclass(frozen=True)
class Command:
    """Actuator commands over time: `values` (P, nu) from times `t_ns` (P,) on (the first also
    holds before t_ns[0]); a Float64MultiArray is one value for all time."""

    t_ns: np.ndarray
    values: np.ndarray

    def at(self, t: int) -> np.ndarray:
        return self.values[max(0, int(np.searchsorted(self.t_ns, t, side="right")) - 1)]


def array_command(msg, robot: RobotJoints) -> Command:
    """A std_msgs/Float64MultiArray with one value per actuator, in the twin's actuator order."""
    data = np.asarray(msg.data, np.float64)
    if data.shape != (len(robot.actuators),):
        raise Rejected("bad_command", f"Float64MultiArray of {data.size} values, the twin has "
                                      f"{len(robot.actuators)} actuators {list(robot.actuators)}")
    _finite("Float64MultiArray", data)
    return Command(np.zeros(1, np.int64), data[None])


def trajectory_command(msg, robot: RobotJoints, now_ns: int | None) -> Command:
    """A trajectory_msgs/JointTrajectory: each point's positions (else efforts) from header.stamp +
    time_from_start; a zero stamp means 'start now', the stamp of the latest joint state `now_ns`."""
    names, points = list(msg.joint_names), list(msg.points)
    if not points:
        raise Rejected("bad_command", "JointTrajectory without points")
    idx = _columns(names, robot.actuators, "JointTrajectory")
    start = stamp_ns(msg.header) or (now_ns or 0)
    rows, times = [], []
    for p in points:
        values = p.positions if len(p.positions) else p.effort
        if len(values) != len(names):
            raise Rejected("bad_command", f"JointTrajectory point needs positions or efforts for each of {names}")
        rows.append(np.asarray(values, np.float64)[idx])
        times.append(start + int(p.time_from_start.sec) * 10**9 + int(p.time_from_start.nanosec))
    t, values = np.asarray(times, np.int64), np.stack(rows)
    _finite("JointTrajectory", values)
    if np.any(np.diff(t) < 0):
        raise Rejected("bad_command", "JointTrajectory points must be in time order")
    return Command(t, values)


def topic_readings(kind: str, msg, fields: Mapping[str, str],
                   previous: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{sensor: reading} of a message of a sensor topic of `kind` (data.rosbag.TOPIC_KINDS: 'imu', 'wrench', 'pose'),
    one per mapped field {field: sensor}, read as the bag reader reads it: an Imu's angular_velocity (3,) rad/s,
    linear_acceleration (3,) m/s^2, orientation (4,); a WrenchStamped's force (3,) N, torque (3,) N m; a
    PoseStamped's position (3,) m, orientation (4,). Orientations are w, x, y, z, unit, of the sign nearest the
    sensor's `previous` reading (q and -q are one rotation). The frame_id is not looked at: the readings are taken
    to be in the sensor's frame. Rejected('bad_message') for a field the message marks not provided (an Imu's
    covariance[0] = -1) or a zero quaternion, Rejected('non_finite') for NaN or Inf in a mapped field."""
    topic_kind, out = TOPIC_KINDS[kind], {}
    for part, name in fields.items():
        out[name] = topic_kind.value(msg, part)
        if out[name] is None:
            raise Rejected("bad_message", f"{topic_kind.name} marks {part} as not provided (covariance[0] = -1)")
        _finite(f"{topic_kind.name} {part}", out[name])
        if topic_kind.fields[part] == 4:
            out[name] = _unit(out[name], previous.get(name), f"{topic_kind.name} {part}")
    return out


def _unit(quat: np.ndarray, previous: np.ndarray | None, what: str) -> np.ndarray:
    """A quaternion (4,) normalised, with the sign nearest `previous` (4,)."""
    norm = float(np.linalg.norm(quat))
    if norm == 0:
        raise Rejected("bad_message", f"{what} has zero norm")
    quat = quat / norm
    return -quat if previous is not None and quat @ previous < 0 else quat


@dataclass
class _Last:
    t_ns: int
    q: np.ndarray
    qd: np.ndarray
    command: Command | None
    readings: dict[str, np.ndarray]
    measured: Mapping[str, np.ndarray]


@dataclass
class Sampler:
    """Joint states to chunks of samples on the grid t0 + k dt (see the module docstring).

    Times are integer nanoseconds inside (exact grid), seconds in the chunks. `state` returns
    finished chunks: dicts of t (n,) s, q (n, nq), qd (n, nv), ctrl (n, nu) and, with `sensors`, sensors
    {name: (n, dim)}: held from `readings` {name: (dim,)}, or interpolated as q from the readings measured with
    each state (`state(..., measured)`); no sample is made before each of `sensors` has a reading. `gaps`
    counts grids restarted after a gap.
    """

    dt: float
    chunk_samples: int
    max_gap_s: float
    sensors: tuple[str, ...] = ()
    command: Command | None = None
    readings: dict[str, np.ndarray] = field(default_factory=dict)
    gaps: int = 0
    _last: _Last | None = None
    _grid0: int = 0
    _k: int = 0
    _rows: list[tuple] = field(default_factory=list)

    @property
    def latest_ns(self) -> int | None:
        """Stamp of the latest joint state accepted."""
        return None if self._last is None else self._last.t_ns

    def state(self, t_ns: int, q: np.ndarray, qd: np.ndarray,
              measured: Mapping[str, np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
        """Take one joint state (stamp ns, q (nq,), qd (nv,)) and the sensor readings `measured` with it
        ({name: (dim,)}, from a JointState); Rejected('out_of_order') unless it is after the previous one."""
        measured = measured or {}
        last, dt_ns = self._last, round(self.dt * 1e9)
        if last is not None and t_ns <= last.t_ns:
            raise Rejected("out_of_order", f"stamp {t_ns} ns is not after the last one, {last.t_ns} ns")
        out: list[dict[str, np.ndarray]] = []
        ready = last is not None and last.command is not None and all(
            n in last.readings or n in last.measured for n in self.sensors)
        gap = ready and (t_ns - last.t_ns) > self.max_gap_s * 1e9
        if not ready or gap:
            self.gaps += gap
            out += self.flush()
            self._grid0, self._k = t_ns, 0
        else:
            # a grid time up to dt/10 before this stamp is this stamp's sample (stamp jitter): it is
            # interpolated from the next interval and gets this state's command
            while (tau := self._grid0 + self._k * dt_ns) < t_ns - dt_ns // 10:
                w = (tau - last.t_ns) / (t_ns - last.t_ns)
                readings = {**last.readings, **{n: (1 - w) * v + w * measured[n] for n, v in last.measured.items()}}
                self._rows.append((tau, (1 - w) * last.q + w * q, (1 - w) * last.qd + w * qd,
                                   last.command.at(tau), readings))
                self._k += 1
                if len(self._rows) == self.chunk_samples:
                    out += self.flush()
        self._last = _Last(t_ns, q, qd, self.command, dict(self.readings), dict(measured))
        return out

    def flush(self) -> list[dict[str, np.ndarray]]:
        """The samples gathered so far as one chunk ([] if none)."""
        if not self._rows:
            return []
        t, q, qd, ctrl, readings = zip(*self._rows)
        self._rows = []
        ns = np.array(t, np.int64)
        chunk = {"t": (ns // 10**9) + (ns % 10**9) * 1e-9, "q": np.stack(q), "qd": np.stack(qd),
                 "ctrl": np.stack(ctrl)}
        if self.sensors:
            chunk["sensors"] = {n: np.stack([r[n] for r in readings]) for n in self.sensors}
        return [chunk]
