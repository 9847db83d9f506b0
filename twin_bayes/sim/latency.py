"""Command latency: what the actuators see of a command sequence, on NumPy or JAX (`sim.arrays`)."""
from __future__ import annotations

from twin_bayes.sim.arrays import namespace


def delay_commands(commands, latency_s, dt: float):
    """Commands (T, nu) as the actuators see them `latency_s` later (linear interpolation).

    Row t becomes commands at time t·dt − latency; times before the first
    row hold the first command.
    """
    xp = namespace(commands, latency_s)
    shift = latency_s / dt
    whole = xp.floor(shift)
    frac = shift - whole
    idx = xp.arange(commands.shape[0]) - xp.asarray(whole).astype(xp.int32)
    now = commands[xp.maximum(idx, 0)]
    before = commands[xp.maximum(idx - 1, 0)]
    return (1.0 - frac) * now + frac * before
