"""rmw_zenoh naming: data key expressions, liveliness tokens, QoS strings, type hashes, attachments.

What a ROS 2 node on rmw_zenoh (Humble to Rolling) puts on the wire, so that a bridge without a
ROS installation can talk to it (see docs/ROS2.md):

- data of topic `/a/b` of type `pkg/msg/T` on domain `d`: key `<d>/a/b/pkg::msg::dds_::T_/<hash>`,
  where `<hash>` is the type's RIHS01 hash (`RIHS01_<64 hex>`), or `TypeHashNotSupported` on Humble;
- every node, publisher and subscription holds a liveliness token
  `@ros2_lv/<d>/<zid>/<nid>/<id>/<NN|MP|MS>/<enclave>/<namespace>/<node>[/<topic>/<type>/<hash>/<qos>]`
  with every `/` inside a name replaced by `%`;
- every sample carries a 33-byte attachment: int64 sequence number, int64 source timestamp (ns),
  the publisher's 16-byte gid behind a one-byte length (zenoh-ext serialization, little-endian).
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from functools import lru_cache

from twin_bayes.data.rosbag import FLOAT_ARRAY, IMU, JOINT_STATE, POSE, WRENCH  # noqa: F401  (the types a bridge reads)

LIVELINESS = "@ros2_lv"
NO_HASH = "TypeHashNotSupported"  # Humble's rmw_zenoh puts this where the RIHS01 hash goes
DISTROS = ("humble", "jazzy", "kilted", "rolling")

TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
STRING = "std_msgs/msg/String"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"

GID_BYTES = 16
_ATTACHMENT = struct.Struct("<qqB")
_ROS_NAME = re.compile(r"(/[A-Za-z_][A-Za-z0-9_]*)+\Z")


@lru_cache(maxsize=None)
def typestore(distro: str):
    """The `rosbags` typestore of a distro (message definitions; RIHS01 hashes for Jazzy on)."""
    from rosbags.typesys import Stores, get_typestore

    if distro not in DISTROS:
        raise ValueError(f"distro must be one of {DISTROS}, got {distro!r}")
    return get_typestore(Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY)


def dds_type(msgtype: str) -> str:
    """'sensor_msgs/msg/JointState' -> 'sensor_msgs::msg::dds_::JointState_' (rmw_zenoh's type name)."""
    pkg, kind, name = msgtype.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def type_hash(msgtype: str, distro: str) -> str:
    """'RIHS01_<sha256 of the type description>' (Jazzy on), 'TypeHashNotSupported' on Humble."""
    return NO_HASH if distro == "humble" else typestore(distro).hash_rihs01(msgtype)


def check_topic(topic: str) -> str:
    """A fully qualified ROS 2 topic name ('/joint_states'); ValueError otherwise."""
    if not _ROS_NAME.match(topic):
        raise ValueError(f"topic {topic!r} is not a fully qualified ROS 2 name like /joint_states "
                         "(tokens of [A-Za-z0-9_], not starting with a digit)")
    return topic


def ros_token(text: str) -> str:
    """A string made into one ROS name token: other characters become '_', a leading digit gets '_'."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return out if out and not out[0].isdigit() else f"_{out}"


def mangle(name: str) -> str:
    """A name inside a liveliness token: '/' -> '%' (so '/' is '%', and '' is not allowed)."""
    return name.replace("/", "%")


def qos_keyexpr(depth: int = 10) -> str:
    """rmw_zenoh's QoS token part for reliable, volatile, keep last `depth`; an empty field is its
    default (reliable, volatile, keep last 42, infinite deadline, lifespan and lease, automatic liveliness)."""
    return f"::,{'' if depth == 42 else depth}:,:,:,,"


@dataclass(frozen=True)
class TopicKey:
    """One topic's rmw_zenoh names on a domain."""

    domain: int
    topic: str
    msgtype: str
    distro: str

    @property
    def type_name(self) -> str:
        return dds_type(self.msgtype)

    @property
    def hash(self) -> str:
        return type_hash(self.msgtype, self.distro)

    @property
    def data(self) -> str:
        """Key expression of the topic's samples."""
        return f"{self.domain}/{check_topic(self.topic).strip('/')}/{self.type_name}/{self.hash}"

    @property
    def any_type(self) -> str:
        """The topic's samples of any type and hash (to catch and count wrong types)."""
        return f"{self.domain}/{check_topic(self.topic).strip('/')}/*/*"

    def split(self, key: str) -> tuple[str, str]:
        """(type name, type hash) of a sample key matching `any_type`."""
        type_name, _, hash_ = key.rpartition("/")
        return type_name.rpartition("/")[2], hash_

    def liveliness(self, zid: str, entity_id: int, kind: str, node: str, depth: int = 10) -> str:
        """Token of a publisher (kind 'MP') or subscription ('MS') of node `node` in the root namespace."""
        if kind not in ("MP", "MS"):
            raise ValueError(f"kind must be MP or MS, got {kind!r}")
        return (f"{LIVELINESS}/{self.domain}/{zid}/0/{entity_id}/{kind}/%/%/{node}/{mangle(self.topic)}/"
                f"{self.type_name}/{mangle(self.hash)}/{qos_keyexpr(depth)}")


def node_token(domain: int, zid: str, node: str) -> str:
    """Liveliness token of node `node` (enclave and namespace '/', node id 0, entity id 0)."""
    return f"{LIVELINESS}/{domain}/{zid}/0/0/NN/%/%/{node}"


def gid(token: str) -> bytes:
    """A 16-byte publisher gid derived from its liveliness token (rmw_zenoh uses XXH3-128 of it;
    any stable 16 bytes identify a publisher)."""
    return hashlib.blake2b(token.encode(), digest_size=GID_BYTES).digest()


def attachment(sequence_number: int, source_timestamp_ns: int, source_gid: bytes) -> bytes:
    """The 33-byte rmw_zenoh sample attachment."""
    if len(source_gid) != GID_BYTES:
        raise ValueError(f"gid must be {GID_BYTES} bytes, got {len(source_gid)}")
    return _ATTACHMENT.pack(sequence_number, source_timestamp_ns, GID_BYTES) + source_gid


def parse_attachment(raw: bytes) -> tuple[int, int, bytes]:
    """(sequence number, source timestamp ns, gid) of an attachment; ValueError if malformed."""
    if len(raw) < _ATTACHMENT.size:
        raise ValueError(f"attachment of {len(raw)} bytes, expected {_ATTACHMENT.size + GID_BYTES}")
    seq, stamp, n = _ATTACHMENT.unpack_from(raw)
    if len(raw) != _ATTACHMENT.size + n:
        raise ValueError(f"attachment of {len(raw)} bytes announces a {n}-byte gid")
    return seq, stamp, bytes(raw[_ATTACHMENT.size:])
