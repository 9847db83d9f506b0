"""Consolidation: when a robot's stream pauses, its stored telemetry refitted whole by the whole-log engine.

The streaming engine sees one window at a time. Where the model class is wrong (any real robot) the
windowed posterior settles elsewhere than a fit of the same data whole: on the real XL330 the live
median missed held-out logs by 0.082 rad where the whole-log fit of the same logs misses by 0.059
(docs/STUDIES/xl330.md). A config with `inference.consolidate_after_s` > 0 has the service, once a
robot's stream has paused that long, refit the newest `inference.consolidate_s` seconds of what it
holds with the whole-log engine (`inference.whole_log.fit_twin`: from the config's prior, each
recording open loop, the model error learned from cross-validated residuals). The live posterior
becomes that fit (the next version) and the next windows stream on from it, as a filter is restarted
from a smoother. Recordings are the runs of the stored samples (`data.windows.run_starts`, the
cutter's runs: a time jump or a change of known settings starts another).
"""
from __future__ import annotations

import copy

import numpy as np

from twin_bayes.data import Trajectory
from twin_bayes.data.windows import run_starts
from twin_bayes.inference import Twin
from twin_bayes.inference.engine import TwinState
from twin_bayes.inference.whole_log import fit_twin
from twin_bayes.service.ingest import settings_groups
from twin_bayes.service.store import TelemetryStore


def stored_recordings(store: TelemetryStore, robot_id: str, model, seconds: float) -> list[Trajectory]:
    """The newest `seconds` of the robot's stored samples as recordings, oldest first, with the readings of
    the sensors the model observes (ValueError where a chunk lacks them); runs shorter than one segment are
    left out. A paused stream's last samples that wait for a whole window are included: the fit sees every
    sample the service holds (when the stream goes on, the window holding them counts them once more in the
    streamed posterior, until the next consolidation refits from the prior)."""
    dt, last = model.robot.dt, store.last_seq(robot_id)
    newest = store.get_chunks(robot_id, last - 1, limit=1) if last >= 0 else []
    if not newest:
        return []
    count = int(np.ceil(seconds / (newest[0].n * dt))) + 1      # chunks holding `seconds` at the newest one's size
    chunks = store.get_chunks(robot_id, last - count, limit=count)
    keep = min(sum(c.n for c in chunks), int(round(seconds / dt)) + 1)
    columns = ("t", "q", "qd", "ctrl") + tuple(f"sensor:{n}" for n in model.sensors)
    missing = sorted({k for c in chunks for k in columns if k not in c.arrays})
    if missing:
        raise ValueError(f"{robot_id}: stored telemetry lacks {missing}")
    cat = {k: np.concatenate([c.arrays[k] for c in chunks])[-keep:] for k in columns}
    settings, groups = settings_groups(chunks, [c.n for c in chunks])
    kinds = groups[-keep:]
    bounds = list(run_starts(cat["t"], dt, kinds)) + [keep]
    return [Trajectory(*(cat[k][a:b] for k in ("t", "q", "qd", "ctrl")), settings[kinds[a]],
                       source=f"{robot_id} (stored)", sensors={n: cat[f"sensor:{n}"][a:b] for n in model.sensors})
            for a, b in zip(bounds[:-1], bounds[1:]) if b - a > model.segment_steps]


def consolidate(twin: Twin, recordings: list[Trajectory]) -> tuple[TwinState | None, dict]:
    """The whole-log fit of recordings from the config's prior as the twin's next state (its recorded
    windows, κ, drift baseline and key kept), and the fit's figures (`whole_log.fit_twin`, padded to
    whole windows so a growing history compiles few shapes); None where the fit was refused. The twin
    itself is untouched."""
    scratch = copy.copy(twin)      # shares the model; its state is replaced, never mutated
    info = fit_twin(scratch, recordings, bucket=twin.model.window_samples)
    return (None if info["refused"] else scratch.state), info
