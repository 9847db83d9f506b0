"""The humanoid controller transfer, short: one hidden truth, the push task scored, few optax steps.

Runs as its own process for the reason `test_humanoid_ident.py` gives (XLA's pool is sized before JAX
starts). The full run is `experiments/humanoid_transfer.py`.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twin_bayes.policy.closed_loop import real_cost
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.tasks import humanoid_push_task
from twin_bayes.sim import load_robot

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "humanoid_transfer.py"


@pytest.mark.slow
def test_balance_policies_from_the_twin_run_on_the_real_humanoid(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], check=True, timeout=5400)
    result = json.loads((tmp_path / "humanoid_transfer_quick.json").read_text())
    assert (tmp_path / "humanoid_transfer_quick_push.png").stat().st_size > 0
    ident, = result["identification"]
    assert len(ident["updates"]) >= 2 and all(u["accepted"] for u in ident["updates"])
    physical = {n: p for n, p in ident["posterior"].items() if not n.startswith("noise:")}
    assert len(physical) == 5 and all(np.isfinite([p["mean"], p["sd"]]).all() for p in physical.values())
    push = result["tasks"]["push"]
    run, = push["runs"]
    assert set(run["policies"]) == {"nominal", "uniform_dr", "posterior"}
    for name, s in run["policies"].items():
        assert len(s["real"]) == 3 and np.isfinite(s["real"]).all(), name
        assert s["predicted_q05"] <= s["predicted_mean"] <= s["predicted_q95"], name
    # 10 optax steps on the nominal twin teach the reflex to hold the pushed humanoid better than the
    # initial PD policy, on the real robot too (the same truth and sensor-noise seeds).
    real = load_robot("humanoid")
    task = humanoid_push_task(real)
    truth = push["truths"][run["truth"]]
    initial = np.mean([real_cost(real, truth, initial_policy(task), task, seed=1000 * run["seed"] + r)
                       for r in range(3)])
    assert run["policies"]["nominal"]["real_mean"] < initial
