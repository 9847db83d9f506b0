"""Planned commands in telemetry: the commands a robot will send over the prediction horizon.

On the wire a chunk may carry the array `plan` (H, nu), its row k the command the robot will apply
at time `plan_t0 + k·dt` (body key `plan_t0`, s; dt the robot's sample interval). Ingest checks it
against the robot (`check_plan`): a bad plan is dropped and answered with `bad_plan`, while the
chunk's telemetry is stored and acked as usual. A stored chunk holds the plan as `plan` (H, nu)
and its times `plan_t` (H,) s; `plan_of(chunk)` reads them back, and `horizon_commands` gives the
commands of a prediction horizon from a chunk's own commands and its plan.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from twin_bayes.service.protocol import Message

BAD_PLAN = "bad_plan"
#: A plan starts at the chunk's last command or the one after it: t[-1] <= plan_t0 <= t[-1] + dt,
#: within this fraction of dt.
START_TOLERANCE = 0.01


class Plan(NamedTuple):
    """Planned commands: t (H,) s, evenly dt apart; ctrl (H, nu), row k applied at t[k]."""

    t: np.ndarray
    ctrl: np.ndarray


def check_plan(msg: Message, nu: int, dt: float, max_rows: int) -> tuple[Plan | None, str]:
    """(the chunk's plan or None, "" or why its plan is rejected); the chunk itself is valid telemetry."""
    a, t0 = msg.arrays, msg.extra.get("plan_t0")
    if "plan_t" in a:
        return None, "plan_t is written by the service: send plan (H, nu) and body plan_t0 (s)"
    if "plan" not in a:
        return None, "body plan_t0 without a plan array" if "plan_t0" in msg.extra else ""
    p = a["plan"]
    if p.dtype.kind != "f" or p.ndim != 2 or p.shape[1] != nu or not 1 <= p.shape[0] <= max_rows:
        return None, f"plan must be a float array (H, {nu}) with 1 <= H <= {max_rows}, got {p.dtype} {p.shape}"
    if not np.isfinite(p).all():
        return None, "plan contains NaN or Inf"
    if type(t0) not in (int, float):
        return None, "body plan_t0 (s, the time of the plan's first row) must be a number"
    t_last, slack = float(a["t"][-1]), START_TOLERANCE * dt
    if not t_last - slack <= t0 <= t_last + dt + slack:
        return None, (f"plan_t0 = {t0} s: a plan starts at the chunk's last command or the next one, "
                      f"t[-1] = {t_last} s to t[-1] + dt = {t_last + dt} s")
    return Plan(t0 + dt * np.arange(p.shape[0]), np.asarray(p, np.float64)), ""


def stored_arrays(plan: Plan) -> dict[str, np.ndarray]:
    """The plan as a stored chunk's arrays: plan (H, nu), plan_t (H,) s."""
    return {"plan": plan.ctrl, "plan_t": plan.t}


def plan_of(chunk: Message) -> Plan | None:
    """The plan stored with a chunk (from `TelemetryStore.get_chunks`), None if it came without one."""
    if "plan" not in chunk.arrays:
        return None
    return Plan(np.asarray(chunk.arrays["plan_t"], np.float64), np.asarray(chunk.arrays["plan"], np.float64))


def horizon_commands(chunk: Message, t_first: float, steps: int, dt: float) -> np.ndarray:
    """Commands (steps, nu) for the times t_first + j·dt, j = 0..steps-1, as a stored `chunk` (the one
    holding a window's last sample) knows them: its own ctrl rows where they cover the time, then
    its plan, then the last of these held. Without a plan the chunk's last command is held."""
    t, ctrl = np.asarray(chunk.arrays["t"], np.float64), np.asarray(chunk.arrays["ctrl"], np.float64)
    plan = plan_of(chunk)
    if plan is not None:
        later = plan.t > t[-1] + 0.5 * dt  # a plan from t[-1] repeats the chunk's last command
        t, ctrl = np.concatenate([t, plan.t[later]]), np.concatenate([ctrl, plan.ctrl[later]])
    rows = np.rint((t_first + dt * np.arange(steps) - t[0]) / dt).astype(np.int64)
    return ctrl[np.clip(rows, 0, len(t) - 1)]
