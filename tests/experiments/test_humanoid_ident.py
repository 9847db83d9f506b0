"""The humanoid identification study, short: humanoid_fixed, two 0.3 s windows, one hidden truth.

The study runs as its own process: the script sizes XLA's intra-op pool before JAX starts (see its
docstring), which a test session that has already computed with JAX cannot do. The full study is
`experiments/humanoid_ident.py`.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "humanoid_ident.py"


@pytest.mark.slow
def test_fixed_humanoid_telemetry_pins_down_every_parameter_near_its_truth(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--configs", "humanoid_fixed", "--seeds", "0", "--seconds", "0.6",
                    "--out", str(tmp_path)], check=True, timeout=3000)
    report = json.loads((tmp_path / "humanoid_ident.json").read_text())
    assert (tmp_path / "humanoid_ident.png").stat().st_size > 0
    run = report["configs"]["humanoid_fixed"]["runs"][0]
    assert run["windows"] == 2 and all(u["accepted"] for u in run["updates"])
    physical = {n: p for n, p in run["parameters"].items() if not n.startswith("noise:")}
    assert len(physical) == 5
    for n, p in physical.items():
        assert np.isfinite([p["mean"], p["q05"], p["q95"], p["contraction"]]).all(), n
        assert p["q05"] <= p["mean"] <= p["q95"] and p["contraction"] <= 1.0, n
        assert p["truth"] == run["truth"][n]
    # 16 weighted particles (ESS about 11) give coarse 5 % / 95 % quantiles, so the truth is checked against
    # the spread they imply, sd = (q95 − q05) / 3.29: within 4 sd for every parameter.
    for n, p in physical.items():
        assert abs(p["mean"] - p["truth"]) < 4.0 * (p["q95"] - p["q05"]) / 3.29, (n, p)
    assert min(p["contraction"] for p in physical.values()) > 0.5      # 0.6 s pins down every one
    # the coverage summary counts the prior-drawn parameters apart from the noise scales (fixed truths)
    cov = report["configs"]["humanoid_fixed"]["coverage"]
    assert cov["prior_drawn"]["parameters"] == sorted(physical, key=list(run["parameters"]).index)
    assert cov["prior_drawn"]["covered"] == sum(p["covered"] for p in physical.values())
    assert cov["noise_scales"]["n"] == 2 and cov["prior_drawn"]["n"] == 5
    z = [p["z"] for p in physical.values()]
    assert cov["prior_drawn"]["rms_z"] == pytest.approx(float(np.sqrt(np.mean(np.square(z)))))
