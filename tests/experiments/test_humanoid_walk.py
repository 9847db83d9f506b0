"""The humanoid walking study, short: one hidden truth, one seed, a few ARS iterations, 2 s runs.

Runs as its own process for the reason `test_humanoid_ident.py` gives (XLA's pool is sized before JAX
starts); marked slow: the twin's first compile takes minutes on 2 cores. The full run is
`experiments/humanoid_walk.py`.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twin_bayes.policy import walk

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "humanoid_walk.py"


@pytest.mark.slow
def test_walkers_from_three_distributions_run_on_the_real_humanoid(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], check=True, timeout=5400)
    result = json.loads((tmp_path / "humanoid_walk_quick.json").read_text())
    for figure in ("distance", "gait"):
        assert (tmp_path / f"humanoid_walk_quick_{figure}.png").stat().st_size > 0
    assert {r["policy"] for r in result["runs"]} == {"nominal", "uniform_dr", "posterior"}
    budgets = {k: v["steps"] for k, v in result["training"].items() if k != "pretrained"}
    assert len(budgets) == 3 and all(v > 0 for v in budgets.values())
    ident, = result["identification"].values()
    assert ident["windows"] >= 1 and all(ident["accepted"])
    for run in result["runs"]:
        d = run["predicted"]["distance_m"]
        assert d["q05"] <= d["mean"] <= d["q95"] and np.isfinite(run["distance_m"])
    # The saved walkers are controller files that `policy run` reads.
    for name in ("nominal", "uniform_dr", "pretrained"):
        policy = walk.load(tmp_path / "humanoid_walk_quick" / f"{name}.json", "humanoid")
        assert np.isfinite(policy.flat()).all()
