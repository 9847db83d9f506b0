"""Query ops on the query ROUTER: health, metrics, posterior snapshot (answered at once by the
I/O thread) and predict (answered by its own thread, so a slow rollout never holds the socket).

A query is `protocol.query(robot_id, request_id, op, arrays, **params)`; the answer is a
`reply` with the same robot_id and request id, or an `error` (code `bad_query`, `busy`, ...).
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from twin_bayes.service import protocol
from twin_bayes.service.worker import QUANTILES, RobotTwin

BAD_QUERY = "bad_query"
BUSY = "busy"
MAX_HORIZON_S = 10.0


class QueryError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code, self.detail = code, detail


def robot_of(msg: protocol.Message, robots: dict[str, RobotTwin]) -> RobotTwin:
    if msg.robot_id not in robots:
        raise QueryError("unknown_robot", f"no twin for robot_id {msg.robot_id!r}; serving {sorted(robots)}")
    return robots[msg.robot_id]


def snapshot(msg: protocol.Message, rt: RobotTwin, pub_seq: int) -> list[bytes]:
    """Posterior snapshot: summary and the model error of its predictions (or None) in the body; values
    (N, D) physical units and weights (N,).

    `pub_seq` is the publisher's last sequence number: a resyncing subscriber drops
    published messages up to it."""
    post = rt.twin.posterior
    return protocol.reply(msg.robot_id, msg.seq, "posterior", {"values": post.values, "weights": post.weights},
                          version=post.version, names=list(post.names), summary=post.summary(),
                          stale=post.stale, reason=post.reason, applied_seq=rt.applied_seq,
                          pub_seq=pub_seq, alerts=list(rt.alerts.values()),
                          model_error=None if rt.twin.model_error is None else rt.twin.model_error.as_dict())


def _predict_inputs(msg: protocol.Message, rt: RobotTwin) -> tuple[np.ndarray, ...]:
    r = rt.twin.model.robot
    a = msg.arrays
    for name in ("q0", "qd0"):
        if name not in a:
            raise QueryError(BAD_QUERY, f"predict needs arrays q0 ({r.nq},) and qd0 ({r.nv},)")
    if "ctrl" in a:
        commands = a["ctrl"]
    else:
        horizon = msg.extra.get("horizon_s")
        last = msg.extra.get("ctrl_hold")
        if not isinstance(horizon, (int, float)) or not 0 < horizon <= MAX_HORIZON_S:
            raise QueryError(BAD_QUERY, f"give arrays ctrl (h, {r.nu}) or horizon_s in (0, {MAX_HORIZON_S}]")
        steps = max(1, int(round(horizon / r.dt)))
        hold = np.zeros(r.nu) if last is None else np.asarray(last, dtype=np.float64)
        commands = np.repeat(hold.reshape(1, -1), steps, axis=0)
    if len(commands) * r.dt > MAX_HORIZON_S:
        raise QueryError(BAD_QUERY, f"horizon {len(commands) * r.dt:.3g} s > {MAX_HORIZON_S} s")
    return a["q0"], a["qd0"], commands


def _settings(msg: protocol.Message, rt: RobotTwin) -> dict[str, float] | None:
    """The query's recording settings (e.g. {"servo_kp": 400}: a firmware gain), or None for the config's."""
    settings = msg.extra.get("settings")
    if settings is None:
        return None
    names = rt.twin.model.setting_names
    known = set(names) | {n.split(":")[0] for n in names}
    ok = isinstance(settings, dict) and all(
        k in known and isinstance(v, (int, float)) and math.isfinite(v) for k, v in settings.items())
    if not ok:
        raise QueryError(BAD_QUERY, f"settings must map {sorted(known) or 'nothing (this robot has none)'} "
                                    "to finite numbers")
    return settings


def predict(msg: protocol.Message, rt: RobotTwin) -> list[bytes]:
    """Predict reply: t (h,) s from now, q (Q, h, nq), qd (Q, h, nv) bands for `quantiles`, and per observed sensor
    `sensor:<name>` (Q, h, dim), row k read at t[k] − dt (`Bands`)."""
    q0, qd0, commands = _predict_inputs(msg, rt)
    settings = _settings(msg, rt)
    qs = msg.extra.get("quantiles", list(QUANTILES))
    if not (isinstance(qs, list) and 0 < len(qs) <= 16 and all(isinstance(x, float) and 0 < x < 1 for x in qs)):
        raise QueryError(BAD_QUERY, "quantiles must be 1-16 floats in (0, 1)")
    version = rt.twin.posterior.version
    try:
        b = rt.twin.predict(q0, qd0, commands, tuple(qs), settings, key=jax.random.PRNGKey(msg.seq % (2**31)))
    except ValueError as e:
        raise QueryError(BAD_QUERY, str(e)) from None
    model = rt.twin.model
    t = model.robot.dt * np.arange(1, len(commands) + 1)
    sensors = protocol.sensor_fields(model.sensors, model.sensor_widths, b.readings)
    return protocol.reply(msg.robot_id, msg.seq, "predict", {"t": t, "q": b.q, "qd": b.qd, **sensors},
                          quantiles=qs, posterior_version=version)


class Predictor:
    """Runs predict queries in their own thread; `answer(envelope, frames)` sends the result."""

    def __init__(self, robots: dict[str, RobotTwin], answer: Callable[[list[bytes], list[bytes]], None],
                 depth: int = 64):
        self.robots = robots
        self.answer = answer
        self.jobs: queue.Queue[tuple[list[bytes], protocol.Message] | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="twin-predict", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join()

    def submit(self, envelope: list[bytes], msg: protocol.Message) -> None:
        """Queue a predict query; raises QueryError(busy) when the queue is full."""
        try:
            self.jobs.put_nowait((envelope, msg))
        except queue.Full:
            raise QueryError(BUSY, "too many predict queries in flight; retry later") from None

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            envelope, msg = job
            try:
                frames = predict(msg, robot_of(msg, self.robots))
            except QueryError as e:
                frames = protocol.error(msg.robot_id, msg.seq, e.code, e.detail)
            except Exception as e:  # a failing rollout must not end the thread
                frames = protocol.error(msg.robot_id, msg.seq, "internal", f"{type(e).__name__}: {e}")
            self.answer(envelope, frames)


def answer_now(msg: protocol.Message, robots: dict[str, RobotTwin], health: Callable[[], dict],
               metrics: Callable[[], dict], pub_seq: int) -> list[bytes] | None:
    """Reply to health / metrics / posterior queries; None for predict (goes to the Predictor)."""
    op = msg.extra["op"]
    if op == "health":
        return protocol.reply(msg.robot_id, msg.seq, "health", **health())
    if op == "metrics":
        return protocol.reply(msg.robot_id, msg.seq, "metrics", **metrics())
    if op == "posterior":
        return snapshot(msg, robot_of(msg, robots), pub_seq)
    if op == "predict":
        robot_of(msg, robots)
        return None
    raise QueryError(BAD_QUERY, f"unknown op {op!r}: health, metrics, posterior or predict")


def jsonable(x: Any) -> Any:
    """Replace non-finite floats (NaN before any score) by None so the body passes the protocol."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return jsonable(x.item())
    return x
