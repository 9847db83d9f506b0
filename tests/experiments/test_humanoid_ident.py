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
    # --resume keeps the stored seed of a study of the same settings: nothing is fitted again
    subprocess.run([sys.executable, str(SCRIPT), "--configs", "humanoid_fixed", "--seeds", "0", "--seconds", "0.6",
                    "--out", str(tmp_path), "--resume"], check=True, timeout=3000)
    again = json.loads((tmp_path / "humanoid_ident.json").read_text())["configs"]["humanoid_fixed"]
    assert again["kept_seeds"] == [0] and again["runs"] == [run] and again["coverage"] == cov


@pytest.mark.slow
def test_the_floating_humanoid_whole_log_fit_holds_its_truths(tmp_path):
    """Seed 1 of the floating humanoid's study with the whole-log engine: 0.9 s of the walker's telemetry cut every
    0.09 s, each segment's start latent (the config searches starts), the Laplace posterior κ-tempered; the noise
    scales are the config's, not estimated. The estimated starts take up the sensor noise of the measured ones
    (their offsets' RMS is the emulated noise's), which leaves the residuals nearly white (κ < 5; from measured
    starts κ was 24-36 steps)."""
    subprocess.run([sys.executable, str(SCRIPT), "--configs", "humanoid", "--engine", "whole-log", "--seeds", "1",
                    "--out", str(tmp_path)], check=True, timeout=3000)
    report = json.loads((tmp_path / "humanoid_ident.json").read_text())
    study, noise = report["configs"]["humanoid whole-log"], report["noise"]       # noise: the emulated sensors'
    run = study["runs"][0]
    assert study["engine"] == "whole-log" and list(study["coverage"]) == ["prior_drawn"]
    assert run["fit"]["segments"] == 10 and run["fit"]["refused"] is None and run["fit"]["start_states"] == "latent"
    assert 1 <= run["fit"]["temper_autocorrelation_steps"] < 5
    for channel, rms in run["fit"]["start_offsets_rms"].items():
        assert 0.6 * noise[channel] < rms < 1.4 * noise[channel], (channel, rms)
    assert set(run["parameters"]) == set(run["truth"]) and len(run["parameters"]) == 5
    for n, p in run["parameters"].items():
        assert abs(p["z"]) < 3 and p["contraction"] > 0.9, (n, p)
    # torso mass and hip damping pinned down to a few per cent
    for n in ("body_mass:torso", "dof_damping:right_hip_y", "dof_damping:left_hip_y"):
        p = run["parameters"][n]
        assert p["covered"] and (p["q95"] - p["q05"]) / p["truth"] < 0.05, (n, p)
