"""Cutting stored telemetry chunks into twin windows, deterministically.

A window is a run of whole, consecutive chunks (seq n, n+1, ...) with evenly
spaced samples and one set of known settings. It is cut when it holds exactly
`max_n` samples, or when the next chunk would overflow it, or when time jumps
or the settings change between chunks. The cut
depends only on the chunks, never on when they arrived, so a restart (or the
same chunks sent again in another order) gives the same windows.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from twin_bayes.service.ingest import SETTING
from twin_bayes.service.protocol import Message


class Cut(NamedTuple):
    """A window of whole chunks up to chunk `last_seq`; arrays (n, ·); usable: enough samples;
    settings: the recording's known constants {name: value} (see ingest.SETTING)."""

    last_seq: int
    t: np.ndarray
    q: np.ndarray
    qd: np.ndarray
    ctrl: np.ndarray
    usable: bool
    settings: dict[str, float]


def settings_of(chunk: Message) -> dict[str, float]:
    return {k[len(SETTING):]: float(a[0]) for k, a in chunk.arrays.items() if k.startswith(SETTING)}


def _join(chunks: Sequence[Message], min_n: int) -> Cut:
    cat = {k: np.concatenate([c.arrays[k] for c in chunks]) for k in ("t", "q", "qd", "ctrl")}
    return Cut(chunks[-1].seq, cat["t"], cat["q"], cat["qd"], cat["ctrl"], len(cat["t"]) >= min_n,
               settings_of(chunks[0]))


def cut_windows(chunks: Sequence[Message], after_seq: int, max_n: int, min_n: int,
                dt: float, limit: int | None = None) -> list[Cut]:
    """The first `limit` (default all) windows completed by `chunks` (seq order, starting at
    after_seq + 1); chunks after a missing seq and a trailing partial window are left for
    later. A run of chunks too short to use (time jump) comes back with usable=False so its
    chunks count as consumed."""
    out: list[Cut] = []
    run: list[Message] = []
    expect = after_seq + 1
    for c in chunks:
        if c.seq != expect or (limit is not None and len(out) >= limit):
            break
        expect += 1
        if run:
            jump = abs(float(c.arrays["t"][0] - run[-1].arrays["t"][-1]) - dt) > 0.5 * dt
            if jump or settings_of(c) != settings_of(run[-1]) or sum(r.n for r in run) + c.n > max_n:
                out.append(_join(run, min_n))
                run = []
        run.append(c)
        if sum(r.n for r in run) == max_n:
            out.append(_join(run, min_n))
            run = []
    return out
