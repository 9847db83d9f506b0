"""Wire protocol: round trips, targeted rejections and a 10,000-message fuzz."""

from __future__ import annotations

import math
import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq

from twin_bayes.service import protocol as P
from twin_bayes.service.protocol import CODES, ProtocolError, decode, encode


def _chunk(n: int = 8, seq: int = 3) -> list[bytes]:
    t = 0.01 * np.arange(n)
    return P.telemetry("arm-1", seq, t, np.sin(t)[:, None] * [1.0, 2.0],
                       np.ones((n, 2), np.float32), np.zeros((n, 1)),
                       motor_current=np.arange(3 * n, dtype=">f8").reshape(n, 3),
                       contact=np.ones(n, np.uint8))


def _rewrite(frames: list[bytes], **changes: object) -> list[bytes]:
    h = msgpack.unpackb(frames[0], raw=False)
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _set_field(frames: list[bytes], i: int, **changes: object) -> list[bytes]:
    h = msgpack.unpackb(frames[0], raw=False)
    h["fields"][i].update(changes)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _code(frames: object) -> str:
    with pytest.raises(ProtocolError) as e:
        decode(frames)  # type: ignore[arg-type]
    assert e.value.code in CODES
    return e.value.code


def test_telemetry_round_trip() -> None:
    frames = _chunk()
    m = decode(frames)
    assert (m.type, m.robot_id, m.seq, m.n, m.extra) == ("telemetry", "arm-1", 3, 8, {})
    assert list(m.arrays) == ["t", "q", "qd", "ctrl", "motor_current", "contact"]
    assert m.arrays["qd"].dtype == np.float32 and m.arrays["q"].shape == (8, 2)
    assert m.arrays["motor_current"].dtype.str == "<f8"  # big-endian input sent little-endian
    np.testing.assert_array_equal(m.arrays["motor_current"], np.arange(24.0).reshape(8, 3))
    assert not m.arrays["q"].flags.writeable  # zero-copy views on the frames
    assert encode(m.type, m.robot_id, m.seq, m.arrays) == frames


def test_payload_helpers_round_trip() -> None:
    summary = {"body_mass:arm": {"mean": 1.2, "sd": 0.1}, "names": ["a", "b"], "stale": False}
    cases = [
        (P.ack("arm-1", 4), "ack", {"status": "stored"}),
        (P.ack("arm-1", 4, duplicate=True), "ack", {"status": "duplicate"}),
        (P.resend("arm-1", [9, 5, 6, 5]), "resend", {"seqs": [5, 6, 9]}),
        (P.error("*", 0, "bad_header", "not msgpack"), "error",
         {"code": "bad_header", "detail": "not msgpack"}),
        (P.posterior("arm-1", 11, 2, summary, {"weights": np.full(4, 0.25)}), "posterior",
         {"version": 2, "summary": summary}),
        (P.prediction("arm-1", 12, 2, {"t": np.arange(5.0), "q_bands": np.zeros((3, 5, 2))},
                      quantiles=[0.05, 0.5, 0.95]), "prediction",
         {"posterior_version": 2, "quantiles": [0.05, 0.5, 0.95]}),
        (P.query("*", 7, "health"), "query", {"op": "health"}),
        (P.query("arm-1", 8, "predict", {"ctrl": np.zeros((10, 1))}, horizon_s=0.5), "query",
         {"op": "predict", "horizon_s": 0.5}),
        (P.reply("arm-1", 8, "predict", {"q50": np.ones((10, 2))}), "reply", {"op": "predict"}),
    ]
    for frames, msg_type, body in cases:
        m = decode(frames)
        assert (m.type, m.extra) == (msg_type, body)
    assert decode(cases[4][0]).arrays["weights"].sum() == 1.0
    assert P.topic("posterior", "arm-1") == b"posterior/arm-1/"


def test_decode_accepts_zmq_frames() -> None:
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://protocol-test")
        b.connect("inproc://protocol-test")
        a.send_multipart(_chunk())
        m = decode(b.recv_multipart(copy=False))
        np.testing.assert_array_equal(m.arrays["t"], 0.01 * np.arange(8))
    finally:
        a.close(linger=0)
        b.close(linger=0)


@pytest.mark.parametrize("call, code", [
    (lambda: encode("telemetri", "a", 0), "unknown_type"),
    (lambda: encode("ack", "a/b", 0, status="stored"), "bad_robot_id"),
    (lambda: encode("telemetry", "*", 0), "bad_robot_id"),
    (lambda: encode("ack", "a", -1, status="stored"), "bad_header"),
    (lambda: encode("ack", "a", 0, status="kept"), "bad_body"),
    (lambda: encode("ack", "a", 0, {"x": np.zeros(1)}, status="stored"), "bad_field"),
    (lambda: encode("query", "a", 0, {"x": np.zeros(2, bool)}, op="p"), "bad_dtype"),
    (lambda: encode("query", "a", 0, {"x": np.zeros(2, np.float16)}, op="p"), "bad_dtype"),
    (lambda: encode("query", "a", 0, {"x": np.array([1.0, np.inf])}, op="p"), "non_finite"),
    (lambda: encode("query", "a", 0, op="p", h=math.nan), "non_finite"),
    (lambda: encode("query", "a", 0, op="p", blob=b"raw"), "bad_body"),
    (lambda: encode("query", "a", 0, {"bad name": np.zeros(1)}, op="p"), "bad_header"),
    (lambda: encode("telemetry", "a", 0, {"t": np.zeros(2), "q": np.zeros((2, 1)),
                                          "qd": np.zeros((2, 1))}), "bad_field"),
    (lambda: P.telemetry("a", 0, [0.0, 0.0], np.zeros((2, 1)), np.zeros((2, 1)),
                         np.zeros((2, 1))), "bad_field"),
    (lambda: P.telemetry("a", 0, [0.0, 1.0], np.zeros((3, 1)), np.zeros((2, 1)),
                         np.zeros((2, 1))), "shape_mismatch"),
    (lambda: P.telemetry("a", 0, [0.0], np.zeros(1), np.zeros((1, 1)), np.zeros((1, 1))),
     "bad_field"),
    (lambda: P.resend("a", []), "bad_body"),
    (lambda: P.resend("a", range(P.MAX_RESEND + 1)), "bad_body"),
    (lambda: encode("query", "a", 0, {f"f{i}": np.zeros(1) for i in range(33)}, op="p"),
     "too_large"),
])
def test_encode_rejects(call, code: str) -> None:
    with pytest.raises(ProtocolError) as e:
        call()
    assert e.value.code == code


def test_decode_rejects_targeted() -> None:
    good = _chunk()
    assert _code([]) == "bad_frames"
    assert _code(None) == "bad_frames"
    assert _code(["text"]) == "bad_frames"
    assert _code(good[:-1]) == "bad_frames"
    assert _code([*good, b""]) == "bad_frames"
    assert _code([b"\xc1"]) == "bad_header"
    assert _code([msgpack.packb([1, 2])]) == "bad_header"
    assert _code([good[0] + b"\x00", *good[1:]]) == "bad_header"  # trailing bytes
    assert _code(_rewrite(good, v=2)) == "version"
    assert _code(_rewrite(good, v=True)) == "version"
    assert _code(_rewrite(good, type="pickle")) == "unknown_type"
    assert _code(_rewrite(good, robot_id="a" * 65)) == "bad_robot_id"
    assert _code(_rewrite(good, seq=2**63)) == "bad_header"
    assert _code(_rewrite(good, n=7)) == "shape_mismatch"
    assert _code(_rewrite(good, extra_key=1)) == "bad_header"
    assert _code(_rewrite(good, body=[1])) == "bad_body"
    assert _code(_set_field(good, 1, dtype=">f8")) == "bad_dtype"
    assert _code(_set_field(good, 1, dtype="|O")) == "bad_dtype"
    assert _code(_set_field(good, 1, name="t")) == "bad_header"
    assert _code(_set_field(good, 1, shape=[8, 3])) == "shape_mismatch"
    assert _code(_set_field(good, 1, shape=[2**40, 2**40])) == "too_large"
    assert _code(_set_field(good, 1, shape=[1, 1, 1, 1, 1])) == "too_large"
    assert _code(_set_field(good, 1, shape=[-8, 2])) == "bad_header"
    assert _code([b"\x80" * (P.DEFAULT_LIMITS.max_header_bytes + 1)]) == "too_large"
    assert _code([good[0]] + [b""] * 40) == "too_large"
    nan = np.frombuffer(good[1], "<f8").copy()
    nan[5] = np.nan
    assert _code([good[0], nan.tobytes(), *good[2:]]) == "non_finite"


def test_deep_body_is_rejected_without_recursion_error() -> None:
    base = encode("query", "a", 1, op="p")
    h = msgpack.unpackb(base[0])
    assert len(h) == 7  # body present: rebuild it as a deep list by hand
    del h["body"]
    head = msgpack.packb(h)
    assert head[0] == 0x86
    for depth, code in [(20, "bad_body"), (50_000, "bad_header")]:
        raw = b"\x87" + head[1:] + b"\xa4body" + b"\x91" * depth + b"\xc0"
        assert _code([raw]) == code


def test_lying_shape_rejected_before_allocation() -> None:
    h = msgpack.unpackb(encode("query", "a", 0, {"x": np.zeros(1)}, op="p")[0])
    h["fields"][0]["shape"] = [2**21]  # 16 MiB declared, within the caps
    frames = [msgpack.packb(h), b"\x00" * 8]
    tracemalloc.start()
    try:
        assert _code(frames) == "shape_mismatch"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    small = P.Limits(max_elements=100)
    with pytest.raises(ProtocolError, match="too_large"):
        decode(encode("query", "a", 0, {"x": np.zeros(101)}, op="p"), small)


_NASTY = [None, True, -1, 2**64 - 1, 1.5, math.nan, math.inf, "", "x" * 300, "ü", [], {},
          [1, [2, [3]]], {"a": {"b": None}}, b"\x00\x01", msgpack.ExtType(5, b"x"),
          msgpack.Timestamp(0)]
_BAD_DTYPES = [">f8", "|O", "<c16", "<f2", "|b1", "<U4", "O", "V8", "float64", "", 5, None]


def test_fuzz_10000_frames_only_protocol_errors() -> None:
    rng = np.random.default_rng(1234)
    bases = [_chunk(), _chunk(n=1, seq=0), P.posterior("r", 1, 1, {"m": 1.0}, {"w": np.ones(3)}),
             P.ack("r", 2), P.resend("r", [3, 4]), P.query("*", 5, "predict", {"u": np.ones((4, 1))})]
    stats = {"rejected": 0, "accepted": 0}

    def must_reject(frames: list, code: str | None = None) -> None:
        got = _code(frames)
        assert code is None or got == code, (got, code)
        stats["rejected"] += 1

    def may_reject(frames: list) -> None:
        try:
            decode(frames)
            stats["accepted"] += 1
        except ProtocolError as e:
            assert e.code in CODES
            stats["rejected"] += 1

    def flip(b: bytes, k: int) -> bytes:
        a = bytearray(b)
        for i in rng.integers(0, len(a), k):
            a[i] ^= int(rng.integers(1, 256))
        return bytes(a)

    for i in range(10_000):
        base = bases[i % len(bases)]
        arrays = [j for j in range(1, len(base)) if len(base[j])]
        kind = i % 13
        if kind == 0:
            must_reject([rng.bytes(int(rng.integers(0, 64))) for _ in range(rng.integers(1, 5))])
        elif kind == 1:
            must_reject([base[0][: int(rng.integers(0, len(base[0])))], *base[1:]])
        elif kind == 2:
            may_reject([flip(base[0], int(rng.integers(1, 4))), *base[1:]])
        elif kind == 3 and arrays:
            j = int(rng.choice(arrays))
            may_reject([*base[:j], flip(base[j], int(rng.integers(1, 4))), *base[j + 1:]])
        elif kind == 4 and arrays:
            j = int(rng.choice(arrays))
            cut = base[j][: int(rng.integers(0, len(base[j])))] if rng.random() < 0.5 else \
                base[j] + rng.bytes(int(rng.integers(1, 16)))
            must_reject([*base[:j], cut, *base[j + 1:]], "shape_mismatch")
        elif kind == 5:
            if len(base) > 1 and rng.random() < 0.5:
                j = int(rng.integers(1, len(base)))
                must_reject([*base[:j], *base[j + 1:]], "bad_frames")
            else:
                must_reject([*base, rng.bytes(8)], "bad_frames")
        elif kind == 6:
            key = str(rng.choice(["v", "type", "robot_id", "seq", "n", "fields", "body"]))
            may_reject(_rewrite(base, **{key: _NASTY[int(rng.integers(len(_NASTY)))]}))
        elif kind == 7 and arrays:
            dt = _BAD_DTYPES[int(rng.integers(len(_BAD_DTYPES)))]
            must_reject(_set_field(base, int(rng.choice(arrays)) - 1, dtype=dt), "bad_dtype")
        elif kind == 8 and arrays:
            shape = [[2**62], [2**31, 2**31], [10**7, 10**7], [1] * 5, [2**24 + 1]][i % 5]
            must_reject(_set_field(base, int(rng.choice(arrays)) - 1, shape=shape), "too_large")
        elif kind == 9 and arrays:
            j = int(rng.choice(arrays))
            shape = msgpack.unpackb(base[0])["fields"][j - 1]["shape"]
            shape[int(rng.integers(len(shape)))] += int(rng.integers(1, 5))
            must_reject(_set_field(base, j - 1, shape=shape), "shape_mismatch")
        elif kind == 10 and arrays:
            h = msgpack.unpackb(base[0])
            floats = [j for j, f in enumerate(h["fields"], 1) if f["dtype"][1] == "f" and len(base[j])]
            j = int(rng.choice(floats))
            a = np.frombuffer(base[j], h["fields"][j - 1]["dtype"]).copy()
            a[int(rng.integers(a.size))] = [np.nan, np.inf, -np.inf][i % 3]
            must_reject([*base[:j], a.tobytes(), *base[j + 1:]], "non_finite")
        elif kind == 11:
            name = rng.bytes(int(rng.integers(1, 12))).hex()
            must_reject(_rewrite(base, type=name), "unknown_type")
        else:
            bad = ["", "a" * 65, "a/b", "ü", " x", "-x", 5, None][i % 8]
            must_reject(_rewrite(base, robot_id=bad), "bad_robot_id")
    assert stats["rejected"] + stats["accepted"] == 10_000
    assert stats["rejected"] > 8_000
