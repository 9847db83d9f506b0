"""The one window cutter (`data.windows`): shared boundaries, runs, remainders, and independence from
how samples arrive."""
import numpy as np
import pytest

from twin_bayes.data import Trajectory, consecutive_windows, cut_windows, trajectory_windows

DT = 0.01


def test_windows_share_their_boundary_sample_and_the_open_remainder_waits():
    t = DT * np.arange(25)
    bounds, nxt = cut_windows(t, n_max=10, min_n=3, dt=DT, final=False)
    assert [(b.start, b.stop) for b in bounds] == [(0, 10), (9, 19)]
    assert nxt == 18                                   # the last window's last sample starts the next
    bounds, nxt = cut_windows(t, 10, 3, DT, final=True)
    assert [(b.start, b.stop, b.usable) for b in bounds] == [(0, 10, True), (9, 19, True), (18, 25, True)]
    assert nxt == 25
    # every transition t[k] -> t[k+1] is in exactly one window
    covered = sorted(k for b in bounds for k in range(b.start, b.stop - 1))
    assert covered == list(range(24))


def test_time_jumps_and_groups_close_runs_and_short_remainders_are_unusable():
    t = np.concatenate([DT * np.arange(12), 5.0 + DT * np.arange(4), 9.0 + DT * np.arange(7)])
    bounds, nxt = cut_windows(t, 10, 3, DT, final=False)
    assert [(b.start, b.stop, b.usable) for b in bounds] == [(0, 10, True), (9, 12, True), (12, 16, True)]
    assert nxt == 16                                   # the open last run waits for 10 samples
    groups = np.repeat([0, 1], [6, 20])                # a settings change at row 6
    bounds, _ = cut_windows(DT * np.arange(26), 10, 3, DT, groups, final=True)
    assert [(b.start, b.stop, b.usable) for b in bounds] == [(0, 6, True), (6, 16, True), (15, 25, True),
                                                             (24, 26, False)]
    with pytest.raises(ValueError, match="at least 2"):
        cut_windows(t, 1, 1, DT)


def test_the_cut_does_not_depend_on_how_samples_arrive():
    """Cutting as samples arrive (resuming each time at the returned row) gives the one-shot cut."""
    rng = np.random.default_rng(0)
    t = np.concatenate([DT * np.arange(137), 3.0 + DT * np.arange(64)])
    whole, _ = cut_windows(t, 25, 5, DT, final=False)
    got, start, seen = [], 0, 0
    for n in rng.integers(1, 30, 40):
        seen = min(len(t), seen + int(n))
        bounds, nxt = cut_windows(t[start:seen], 25, 5, DT, final=False)
        got += [(b.start + start, b.stop + start, b.usable) for b in bounds]
        start += nxt
    assert got == [tuple(b) for b in whole]


def test_recordings_are_their_own_groups_and_consecutive_windows_are_whole():
    a = Trajectory(DT * np.arange(23), np.zeros((23, 1)), np.zeros((23, 1)), np.zeros((23, 1)), {"kp": 1.0})
    b = Trajectory(DT * np.arange(23), np.ones((23, 1)), np.zeros((23, 1)), np.zeros((23, 1)), {"kp": 2.0})
    ws = trajectory_windows([a, b], 10, 3, DT, final=True)
    assert [(len(w["q"]), w["settings"]["kp"], float(w["q"][0, 0])) for w in ws] == [
        (10, 1.0, 0.0), (10, 1.0, 0.0), (5, 1.0, 0.0), (10, 2.0, 1.0), (10, 2.0, 1.0), (5, 2.0, 1.0)]
    assert [len(w["q"]) for w in trajectory_windows([a, b], 10, 3, DT, final=False)] == [10, 10, 5, 10, 10]
    whole = consecutive_windows(a.q, a.qd, a.ctrl, 10)
    assert [len(w["q"]) for w in whole] == [10, 10]
