"""Command latency and sensor delay: what the actuators see of a command sequence, and what a sensor
reports of its readings, on NumPy or JAX (`sim.arrays`)."""
from __future__ import annotations

from twin_bayes.sim.arrays import namespace


def delay_commands(commands, latency_s, dt: float):
    """Commands (T, nu) as the actuators see them `latency_s` later (linear interpolation).

    Row t becomes commands at time t·dt − latency; times before the first
    row hold the first command. `latency_s` is one number, or one per column (nu,).
    """
    xp = namespace(commands, latency_s)
    shift = xp.asarray(latency_s) / dt
    whole = xp.floor(shift)
    frac = shift - whole
    idx = xp.arange(commands.shape[0])[:, None] - xp.asarray(whole).astype(xp.int32)
    cols = xp.arange(commands.shape[1])[None, :]
    now = commands[xp.maximum(idx, 0), cols]
    before = commands[xp.maximum(idx - 1, 0), cols]
    return (1.0 - frac) * now + frac * before
