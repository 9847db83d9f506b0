"""The walking study, short (`experiments/humanoid_walk.py --quick`: one truth, one seed, 4 + 2 ARS
iterations, 2 s runs, the twin fitted on 0.36 s of the pretrained walker's telemetry by the whole-log engine).

The study runs as its own process: the script sizes XLA's intra-op pool before JAX starts (see
`tests/experiments/test_humanoid_ident.py`). About 4 minutes on an empty compilation cache, most of it the
floating humanoid's contact model compiled for the fit, which no other test compiles: marked `first`, so
that it runs beside the other tests rather than alone after them (`tests/conftest.py`). In the default
suite since every compile is cached (`twin_bayes.compiled.enable_cache`): `.ci/run` on a clean clone,
this test included (289-306 s), took 22-26 minutes on 2 cores (docs/TESTING.md). The full study is
`experiments/humanoid_walk.py`.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from twin_bayes import cli

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "humanoid_walk.py"
TRUTHS = Path(cli.__file__).resolve().parent / "robots" / "humanoid" / "truths"


@pytest.mark.first
def test_the_short_study_writes_walkers_a_twin_and_runs_the_cli_reproduces(tmp_path, capsys):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], check=True, timeout=5400)
    result = json.loads((tmp_path / "humanoid_walk_quick.json").read_text())
    for png in ("humanoid_walk_quick_distance.png", "humanoid_walk_quick_gait.png"):
        assert (tmp_path / png).stat().st_size > 0
    (truth_name,) = result["truths"]
    assert result["config"] == "humanoid_latency"
    assert len(result["runs"]) == 3 and {r["policy"] for r in result["runs"]} == {"nominal", "uniform_dr", "posterior"}
    fit = result["identification"][truth_name]
    assert fit["seconds"] > 0.35 and fit["fit"]["refused"] is None and "latency_s" in fit["posterior"]
    assert fit["fit"]["engine"] == "whole-log" and fit["fit"]["segments"] == 4     # 0.36 s cut every 0.09 s
    for run in result["runs"]:
        d = run["predicted"]["distance_m"]
        assert d["q05"] <= d["mean"] <= d["q95"]
    # The command line reads the study's files: the posterior walker's run on the same truth and seed
    # prints the study's figures, and the twin's prediction is an ordered interval.
    store = tmp_path / "humanoid_walk_quick"
    walker = store / f"posterior_{truth_name}.json"
    row = next(r for r in result["runs"] if r["policy"] == "posterior")
    assert cli.main(["policy", "run", "--policy", str(walker), "--robot", "humanoid", "--truth",
                     str(TRUTHS / f"{truth_name}.toml"), "--seconds", str(result["run_s"]), "--seed",
                     str(row["seed"]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["distance_m"] == pytest.approx(row["distance_m"], abs=1e-12)
    assert printed["energy_j"] == pytest.approx(row["energy_j"], rel=1e-12)
    posterior = store / f"posterior_{truth_name}"
    assert cli.main(["policy", "predict", "--policy", str(walker), "--posterior", str(posterior), "--draws", "4",
                     "--seconds", "0.5", "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["distance_m"]["q05"] <= predicted["distance_m"]["mean"] <= predicted["distance_m"]["q95"]
    # Run again: the twin fitted on the same telemetry is loaded, not fitted again, and the study's figures
    # are the same.
    again = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], check=True,
                           timeout=1800, capture_output=True, text=True)
    assert "twin loaded from" in again.stderr
    second = json.loads((tmp_path / "humanoid_walk_quick.json").read_text())
    assert second["identification"] == result["identification"] and second["runs"] == result["runs"]
