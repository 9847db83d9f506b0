"""Drift: the forearm's mass rises by 30 % mid-stream (a payload); the twin flags it and its
posterior reaches the new value within a few windows."""
import pytest

from twin_bayes.inference import Twin
from twin_bayes.sim.emulator import emulate

BEFORE, AFTER = 4, 5   # windows before and after the change
MASS = "body_mass:forearm"


@pytest.fixture(scope="module")
def drifted(small_cfg, model, truth, helpers):
    T = model.window_samples
    changed = dict(truth, **{MASS: 1.3 * truth[MASS]})
    before = emulate(model.robot, truth, BEFORE * (T - 1) * model.robot.dt, seed=21)
    after = emulate(model.robot, changed, AFTER * (T - 1) * model.robot.dt, seed=22)
    twin = Twin(small_cfg, model)
    reports, means = [], []
    for traj, n in ((before, BEFORE), (after, AFTER)):
        for k in range(n):
            reports.append(twin.update(helpers.window_dict(traj, k * (T - 1), T)))
            s = twin.posterior.summary()[MASS]
            means.append((s["mean"], s["q05"], s["q95"]))
    return reports, means, changed


def test_the_change_is_flagged_after_it_happens(drifted):
    reports, _, _ = drifted
    flagged = [i for i, r in enumerate(reports) if r.drift]
    print("surprise per window:", [round(r.surprise, 3) for r in reports], "drift flagged at", flagged)
    assert all(r.accepted for r in reports), [r.reason for r in reports]
    assert flagged and all(i >= BEFORE for i in flagged), flagged
    assert flagged[0] <= BEFORE + 2


def test_posterior_reaches_the_new_mass(drifted, truth):
    reports, means, changed = drifted
    old, new = truth[MASS], changed[MASS]
    mean, q05, q95 = means[BEFORE - 1]
    assert q05 <= old <= q95   # before the change: the old mass
    reached = next(i for i, (m, lo, hi) in enumerate(means) if i >= BEFORE and lo <= new <= hi)
    print(f"{MASS}: {old} -> {new}; reached the new value's 90 % interval {reached - BEFORE + 1} "
          f"window(s) after the change: {[tuple(round(x, 4) for x in m) for m in means]}")
    assert reached - BEFORE + 1 <= 3
    mean, q05, q95 = means[-1]
    assert q05 <= new <= q95 and abs(mean - new) < 0.03 * new
