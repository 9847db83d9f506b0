"""Wire protocol, schema version 1 (see docs/PROTOCOL.md).

A message is a ZeroMQ multipart message: one msgpack header frame followed by
one raw little-endian C-contiguous array frame per declared field. Every
declared size is checked against the caps in `Limits` and against the actual
frame length before any array is built; nothing is ever unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeGuard

import msgpack
import numpy as np

VERSION = 1
TYPES = frozenset(
    {"telemetry", "ack", "resend", "posterior", "prediction", "query", "reply", "error"}
)
CODES = frozenset(
    {
        "bad_frames", "bad_header", "version", "unknown_type", "bad_robot_id",
        "bad_dtype", "shape_mismatch", "too_large", "non_finite", "bad_field", "bad_body",
    }
)
DTYPES: dict[str, np.dtype] = {
    s: np.dtype(s) for s in ("<f8", "<f4", "<i8", "<i4", "<i2", "<u1", "<u2", "<u4", "<u8")
}
TELEMETRY_FIELDS = ("t", "q", "qd", "ctrl")
#: Telemetry arrays not indexed by sample: the robot's planned commands `plan` (H, nu) and, once
#: stored, their times `plan_t` (H,) s. They are checked by twin_bayes.service.plan, so that a bad
#: plan costs the plan only, never the chunk's telemetry.
PLAN_FIELDS = ("plan", "plan_t")
#: Telemetry arrays `sensor:<name>` (n, dim): readings of the MJCF sensor <name> (docs/SENSORS.md),
#: required for each sensor the robot's twin observes.
SENSOR = "sensor:"
FLEET = "*"  # robot_id of queries, replies and errors not about one robot
MAX_RESEND = 1024

_ROBOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]*\Z")
_HEADER_KEYS = frozenset({"v", "type", "robot_id", "seq", "n", "fields", "body"})
_NO_ARRAYS = frozenset({"ack", "resend", "error"})
_FLEET_OK = frozenset({"query", "reply", "error"})
_INT64_MAX = 2**63 - 1


class ProtocolError(ValueError):
    """A message that violates the protocol; `code` is one of `CODES`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True)
class Limits:
    """Caps enforced before allocation. Sizes in bytes unless named otherwise."""

    max_header_bytes: int = 64 * 1024
    max_fields: int = 32
    max_ndim: int = 4
    max_elements: int = 1 << 24  # per array
    max_frame_bytes: int = 16 << 20
    max_message_bytes: int = 64 << 20
    max_robot_id: int = 64
    max_body_depth: int = 8


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Message:
    """A decoded message. Arrays are read-only views on the received frames."""

    type: str
    robot_id: str
    seq: int
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Sample count: rows of every telemetry field, 0 for other types."""
        return int(self.arrays["t"].shape[0]) if self.type == "telemetry" else 0


def _is_int(x: Any) -> TypeGuard[int]:
    return type(x) is int


def _check_envelope(msg_type: Any, robot_id: Any, seq: Any, limits: Limits) -> None:
    if not isinstance(msg_type, str) or msg_type not in TYPES:
        raise ProtocolError("unknown_type", f"type {msg_type!r} is not one of {sorted(TYPES)}")
    if not isinstance(robot_id, str) or not (
        (robot_id == FLEET and msg_type in _FLEET_OK)
        or (len(robot_id) <= limits.max_robot_id and _ROBOT_ID.match(robot_id))
    ):
        raise ProtocolError(
            "bad_robot_id",
            f"robot_id must be 1-{limits.max_robot_id} chars of [A-Za-z0-9_.-] starting "
            f"alphanumeric (or {FLEET!r} for {sorted(_FLEET_OK)})",
        )
    if not _is_int(seq) or not 0 <= seq <= _INT64_MAX:
        raise ProtocolError("bad_header", "seq must be an integer in [0, 2**63)")


def _check_json(x: Any, depth: int, limits: Limits, where: str) -> None:
    if depth > limits.max_body_depth:
        raise ProtocolError("bad_body", f"{where}: nested deeper than {limits.max_body_depth}")
    if x is None or isinstance(x, (bool, str)) or _is_int(x):
        return
    if type(x) is float:
        if not math.isfinite(x):
            raise ProtocolError("non_finite", f"{where}: {x!r}")
        return
    if isinstance(x, list):
        for i, v in enumerate(x):
            _check_json(v, depth + 1, limits, f"{where}[{i}]")
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                raise ProtocolError("bad_body", f"{where}: map keys must be strings")
            _check_json(v, depth + 1, limits, f"{where}.{k}")
        return
    raise ProtocolError("bad_body", f"{where}: {type(x).__name__} is not JSON-like")


def _require(key: str, ok: bool, what: str) -> None:
    if not ok:
        raise ProtocolError("bad_body", f"body.{key} must be {what}")


def _check_body(msg_type: str, seq: int, body: dict[str, Any], limits: Limits) -> None:
    _check_json(body, 0, limits, "body")
    if msg_type == "telemetry" and "settings" in body:
        st = body["settings"]
        _require("settings", isinstance(st, dict) and all(
            type(v) in (int, float) for v in st.values()), "a map of names to numbers")
    elif msg_type == "ack":
        _require("status", body.get("status") in ("stored", "duplicate"),
                 "'stored' or 'duplicate'")
    elif msg_type == "resend":
        s = body.get("seqs")
        _require(
            "seqs",
            isinstance(s, list) and 0 < len(s) <= MAX_RESEND
            and all(_is_int(x) and 0 <= x <= _INT64_MAX for x in s)
            and all(a < b for a, b in pairwise(s)) and s[0] == seq,
            f"1-{MAX_RESEND} ascending chunk numbers starting at seq",
        )
    elif msg_type == "posterior":
        v = body.get("version")
        _require("version", _is_int(v) and v >= 0, "an integer >= 0")
    elif msg_type == "prediction":
        v = body.get("posterior_version")
        _require("posterior_version", _is_int(v) and v >= 0, "an integer >= 0")
    elif msg_type in ("query", "reply"):
        _require("op", isinstance(body.get("op"), str), "a string")
    elif msg_type == "error":
        _require("code", isinstance(body.get("code"), str), "a string")
        _require("detail", isinstance(body.get("detail"), str), "a string")


def _check_arrays(msg_type: str, n: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Semantic checks on arrays that already passed the size checks."""
    if msg_type in _NO_ARRAYS and arrays:
        raise ProtocolError("bad_field", f"{msg_type} carries no arrays")
    if msg_type != "telemetry":
        if n != 0:
            raise ProtocolError("bad_header", f"n must be 0 for {msg_type}")
    else:
        missing = [f for f in TELEMETRY_FIELDS if f not in arrays]
        if missing:
            raise ProtocolError("bad_field", f"telemetry lacks fields {missing}")
        if n < 1:
            raise ProtocolError("bad_header", "telemetry needs n >= 1 samples")
        for name, a in arrays.items():
            if name in PLAN_FIELDS:
                continue
            if a.ndim == 0 or a.shape[0] != n:
                raise ProtocolError("shape_mismatch", f"{name}: shape {a.shape}, expected ({n}, ...)")
        if arrays["t"].dtype != DTYPES["<f8"] or arrays["t"].ndim != 1:
            raise ProtocolError("bad_field", "t must be (n,) <f8 seconds")
        for name in TELEMETRY_FIELDS[1:]:
            a = arrays[name]
            if a.dtype.kind != "f" or a.ndim != 2:
                raise ProtocolError("bad_field", f"{name} must be a 2-D float array (n, k)")
    for name, a in arrays.items():
        if msg_type == "telemetry" and name in PLAN_FIELDS:
            continue
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ProtocolError("non_finite", f"{name} contains NaN or Inf")
    if msg_type == "telemetry" and n > 1 and not (np.diff(arrays["t"]) > 0).all():
        raise ProtocolError("bad_field", "t must be strictly increasing")


def _check_field_name(name: Any) -> None:
    if not isinstance(name, str) or len(name) > 64 or not _FIELD_NAME.match(name):
        raise ProtocolError("bad_header", f"field name {name!r} is not 1-64 chars of [A-Za-z0-9_.:-]")


def _wire_dtype(a: np.ndarray, name: str) -> str:
    for wire, dt in DTYPES.items():
        if a.dtype.kind == dt.kind and a.dtype.itemsize == dt.itemsize:
            return wire
    raise ProtocolError("bad_dtype", f"{name}: dtype {a.dtype} not in {sorted(DTYPES)}")


def _check_size(name: str, shape: tuple[int, ...], dt: np.dtype, limits: Limits) -> int:
    if len(shape) > limits.max_ndim:
        raise ProtocolError("too_large", f"{name}: ndim {len(shape)} > {limits.max_ndim}")
    elements = math.prod(shape)
    if elements > limits.max_elements:
        raise ProtocolError("too_large", f"{name}: {elements} elements > {limits.max_elements}")
    nbytes = elements * dt.itemsize
    if nbytes > limits.max_frame_bytes:
        raise ProtocolError("too_large", f"{name}: {nbytes} bytes > {limits.max_frame_bytes}")
    return nbytes


def encode(
    msg_type: str,
    robot_id: str,
    seq: int,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    **extra: Any,
) -> list[bytes]:
    """Encode a message into frames [header, array...]; `extra` becomes the header body.

    Arrays are converted to their allow-listed little-endian dtype (e.g. >f8 to
    <f8, uint8 to <u1). Raises ProtocolError for anything `decode` would reject.
    """
    _check_envelope(msg_type, robot_id, seq, limits)
    arrays = dict(arrays or {})
    if len(arrays) > limits.max_fields:
        raise ProtocolError("too_large", f"{len(arrays)} fields > {limits.max_fields}")
    wire: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    total = 0
    for name, value in arrays.items():
        _check_field_name(name)
        a = np.asarray(value)
        names[name] = _wire_dtype(a, name)
        total += _check_size(name, a.shape, DTYPES[names[name]], limits)
        wire[name] = np.ascontiguousarray(a, dtype=DTYPES[names[name]])
    if total > limits.max_message_bytes:
        raise ProtocolError("too_large", f"{total} bytes > {limits.max_message_bytes}")
    n = int(wire["t"].shape[0]) if msg_type == "telemetry" and "t" in wire and wire["t"].ndim else 0
    _check_arrays(msg_type, n, wire)
    _check_body(msg_type, seq, extra, limits)
    header: dict[str, Any] = {
        "v": VERSION, "type": msg_type, "robot_id": robot_id, "seq": seq, "n": n,
        "fields": [{"name": k, "dtype": names[k], "shape": list(a.shape)} for k, a in wire.items()],
    }
    if extra:
        header["body"] = extra
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header {len(packed)} bytes > {limits.max_header_bytes}")
    return [packed, *(a.tobytes() for a in wire.values())]


def _buffers(frames: Sequence[Any], limits: Limits) -> list[memoryview]:
    try:
        count = len(frames)
        views = [memoryview(f) for f in frames[: 2 + limits.max_fields]]
        views = [v if v.ndim == 1 and v.itemsize == 1 else v.cast("B") for v in views]
    except (TypeError, ValueError) as e:
        raise ProtocolError("bad_frames", f"frames must be a list of byte buffers ({e})") from None
    if count == 0:
        raise ProtocolError("bad_frames", "empty message")
    if count > 1 + limits.max_fields:
        raise ProtocolError("too_large", f"{count} frames > {1 + limits.max_fields}")
    return views


def _parse_header(raw: memoryview, limits: Limits) -> dict[str, Any]:
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header {raw.nbytes} bytes > {limits.max_header_bytes}")
    try:
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises many types for malformed input
        raise ProtocolError("bad_header", f"not a msgpack document ({type(e).__name__})") from None
    if not isinstance(h, dict):
        raise ProtocolError("bad_header", "header must be a msgpack map")
    if "v" in h and not (_is_int(h["v"]) and h["v"] == VERSION):
        raise ProtocolError("version", f"schema version {h['v']!r}, this side speaks {VERSION}")
    keys = set(h)
    if not _HEADER_KEYS - {"body"} <= keys <= _HEADER_KEYS:
        raise ProtocolError("bad_header", f"header keys {sorted(map(str, keys))}, "
                                          f"expected {sorted(_HEADER_KEYS)}")
    return h


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode and validate frames; raises ProtocolError (and nothing else) on bad input.

    `frames` are the message parts after any transport envelope (ROUTER identity,
    PUB topic): bytes, memoryview or zmq.Frame.
    """
    views = _buffers(frames, limits)
    h = _parse_header(views[0], limits)
    msg_type, robot_id, seq, n = h["type"], h["robot_id"], h["seq"], h["n"]
    _check_envelope(msg_type, robot_id, seq, limits)
    if not _is_int(n) or not 0 <= n <= limits.max_elements:
        raise ProtocolError("bad_header", f"n must be an integer in [0, {limits.max_elements}]")
    specs = h["fields"]
    if not isinstance(specs, list):
        raise ProtocolError("bad_header", "fields must be a list")
    if len(specs) > limits.max_fields:
        raise ProtocolError("too_large", f"{len(specs)} fields > {limits.max_fields}")
    parsed: list[tuple[str, np.dtype, tuple[int, ...], int]] = []
    total = 0
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError("bad_header", "each field must be a map {name, dtype, shape}")
        name, dts, shape = spec["name"], spec["dtype"], spec["shape"]
        _check_field_name(name)
        if any(name == p[0] for p in parsed):
            raise ProtocolError("bad_header", f"field {name!r} declared twice")
        if not isinstance(dts, str) or dts not in DTYPES:
            raise ProtocolError("bad_dtype", f"{name}: dtype {dts!r} not in {sorted(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ProtocolError("bad_header", f"{name}: shape must be a list of integers >= 0")
        if len(shape) > limits.max_ndim or any(d > limits.max_elements for d in shape):
            raise ProtocolError("too_large", f"{name}: shape {shape} exceeds caps")
        nbytes = _check_size(name, tuple(shape), DTYPES[dts], limits)
        total += nbytes
        parsed.append((name, DTYPES[dts], tuple(shape), nbytes))
    if total > limits.max_message_bytes:
        raise ProtocolError("too_large", f"{total} bytes > {limits.max_message_bytes}")
    if len(views) != 1 + len(parsed):
        raise ProtocolError("bad_frames", f"{len(views) - 1} array frames for {len(parsed)} fields")
    for (name, _, shape, nbytes), buf in zip(parsed, views[1:], strict=True):
        if buf.nbytes != nbytes:
            raise ProtocolError("shape_mismatch",
                                f"{name}: shape {list(shape)} needs {nbytes} bytes, frame has {buf.nbytes}")
    arrays = {name: np.frombuffer(buf, dtype=dt).reshape(shape)
              for (name, dt, shape, _), buf in zip(parsed, views[1:], strict=True)}
    body = h.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError("bad_body", "body must be a map")
    _check_arrays(msg_type, n, arrays)
    _check_body(msg_type, seq, body, limits)
    return Message(msg_type, robot_id, seq, arrays, body)


def topic(msg_type: str, robot_id: str) -> bytes:
    """PUB topic frame sent before a message: b"<type>/<robot_id>/" (prefix-safe)."""
    return f"{msg_type}/{robot_id}/".encode("ascii")


def telemetry(robot_id: str, seq: int, t: np.ndarray, q: np.ndarray, qd: np.ndarray,
              ctrl: np.ndarray, settings: Mapping[str, float] | None = None,
              plan: np.ndarray | None = None, plan_t0: float | None = None,
              sensors: Mapping[str, np.ndarray] | None = None, **channels: np.ndarray) -> list[bytes]:
    """Telemetry chunk number `seq`: t (n,) s, q (n, nq), qd (n, nv), ctrl (n, nu), extras (n, ...).

    `settings`: known constants of the recording the chunk belongs to (e.g. servo_kp, servo_vin),
    sent in the body when given. `plan` (H, nu): the commands the robot plans to send next, the
    first at time `plan_t0` (s), one per sample interval (docs/PROTOCOL.md, "Plans"). `sensors`
    {name: (n, dim) or (n,)}: MJCF sensor readings, sent as `sensor:<name>` fields.
    """
    body: dict[str, Any] = {"settings": {k: float(v) for k, v in settings.items()}} if settings else {}
    arrays = {"t": np.asarray(t, dtype=np.float64), "q": q, "qd": qd, "ctrl": ctrl, **channels}
    arrays.update({SENSOR + k: np.asarray(v, np.float64).reshape(len(arrays["t"]), -1)
                   for k, v in (sensors or {}).items()})
    if plan is not None:
        if plan_t0 is None:
            raise ProtocolError("bad_body", "a plan needs plan_t0, the time of its first row (s)")
        arrays["plan"] = plan
        body["plan_t0"] = float(plan_t0)
    return encode("telemetry", robot_id, seq, arrays, **body)


def sensor_fields(names: Sequence[str], widths: Sequence[int], readings: np.ndarray) -> dict[str, np.ndarray]:
    """`sensor:<name>` arrays (..., dim) of readings (..., R) whose columns are the named sensors' in order, each
    `widths` columns wide (a twin's `sensors`, `sensor_widths` and predicted readings)."""
    ends = np.cumsum(widths, dtype=np.int64)
    return {SENSOR + n: readings[..., e - w:e] for n, w, e in zip(names, widths, ends)}


def ack(robot_id: str, seq: int, duplicate: bool = False) -> list[bytes]:
    """Ack of chunk `seq`, sent once it is durable (or was already stored)."""
    return encode("ack", robot_id, seq, status="duplicate" if duplicate else "stored")


def resend(robot_id: str, seqs: Sequence[int]) -> list[bytes]:
    """Request to resend chunks `seqs` (1..MAX_RESEND distinct chunk numbers)."""
    s = sorted({int(x) for x in seqs})
    if not s:
        raise ProtocolError("bad_body", "resend needs at least one chunk number")
    return encode("resend", robot_id, s[0], seqs=s)


def error(robot_id: str, seq: int, code: str, detail: str) -> list[bytes]:
    """Error reply to message `seq` (0 when unknown); robot_id may be FLEET."""
    return encode("error", robot_id, seq, code=code, detail=detail)


def posterior(robot_id: str, seq: int, version: int, summary: Mapping[str, Any],
              arrays: Mapping[str, np.ndarray] | None = None, **extra: Any) -> list[bytes]:
    """Posterior `version` as a JSON-like summary plus optional arrays (e.g. particles (P, D))."""
    return encode("posterior", robot_id, seq, arrays, version=version, summary=dict(summary), **extra)


def prediction(robot_id: str, seq: int, posterior_version: int,
               arrays: Mapping[str, np.ndarray], **extra: Any) -> list[bytes]:
    """Prediction from `posterior_version`, e.g. t (h,) s and quantile bands (k, h, nq)."""
    return encode("prediction", robot_id, seq, arrays, posterior_version=posterior_version, **extra)


def query(robot_id: str, seq: int, op: str, arrays: Mapping[str, np.ndarray] | None = None,
          **params: Any) -> list[bytes]:
    """Query `op` with request id `seq`; robot_id may be FLEET."""
    return encode("query", robot_id, seq, arrays, op=op, **params)


def reply(robot_id: str, seq: int, op: str, arrays: Mapping[str, np.ndarray] | None = None,
          **body: Any) -> list[bytes]:
    """Reply to query `seq` of `op`."""
    return encode("reply", robot_id, seq, arrays, op=op, **body)
