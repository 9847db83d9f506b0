"""The command line end to end: check-sim, fit, evaluate, report, demo, and clear errors on bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from twin_bayes.cli import main
from twin_bayes.config import load_config, resolve_config_path
from twin_bayes.data import write_npz
from twin_bayes.sim.emulator import emulate

SMALL = """
name = "arm2-small"
[robot]
name = "arm2"
[parameters]
"body_mass:upper_arm" = { dist = "lognormal", scale = 0.3 }
"body_mass:forearm" = { dist = "lognormal", scale = 0.3 }
"dof_damping:shoulder" = { dist = "lognormal", scale = 0.5 }
[observation]
noise_scale = { q = 0.002, qd = 0.02 }
[inference]
particles = 16
window_s = 0.5
segment_steps = 25
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg_path = d / "arm2_small.toml"
    cfg_path.write_text(SMALL)
    robot = load_config(cfg_path).load_robot()
    truth = robot.nominal()
    truth.update({"body_mass:upper_arm": 1.1, "body_mass:forearm": 0.55, "dof_damping:shoulder": 0.06})
    files = []
    for seed in (1, 2):
        path = d / f"run{seed}.npz"
        write_npz(path, emulate(robot, truth, 1.0, seed=seed))
        files.append(path)
    return d, cfg_path, files, truth


def test_check_sim_json():
    out = subprocess.run([sys.executable, "-m", "twin_bayes.cli", "check-sim", "--robot", "servo_pendulum",
                          "--json", "--no-gradients"], capture_output=True, text=True, check=True)
    fig = json.loads(out.stdout)
    assert fig["ok"] and fig["agreement"]["max_abs_err"] < 1e-3


def test_fit_evaluate_report(recorded, capsys):
    d, cfg, files, truth = recorded
    assert main(["fit", "--config", str(cfg), "--data", str(files[0]), "--out", str(d / "post"),
                 "--engine", "svi", "--adam-steps", "300", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["evaluations"] == 300
    params = summary["parameters"]
    assert set(params) >= {"body_mass:upper_arm", "noise:q"}
    for name in load_config(cfg).parameters:      # every hidden truth inside its 90 % interval
        assert params[name]["q05"] <= truth[name] <= params[name]["q95"], (name, params[name], truth[name])
    assert (d / "post" / "posterior.nc").is_file() and (d / "post" / "particles.npz").is_file()
    assert main(["evaluate", "--config", str(cfg), "--posterior", str(d / "post"), "--data", str(files[1]),
                 "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["overall"]["mae_q"] < 0.05
    assert 0.75 <= ev["overall"]["coverage90"] <= 1.0 and ev["overall"]["crps_q"] > 0    # held-out bands hold
    assert main(["report", "--posterior", str(d / "post"), "--out", str(d / "report")]) == 0
    assert (d / "report" / "index.html").stat().st_size > 0


def test_bad_input_exits_2_naming_the_file(recorded, capsys, tmp_path):
    d, cfg, _, _ = recorded
    bad = tmp_path / "broken.npz"
    np.savez(bad, t=np.arange(3.0), q=np.zeros((3, 2)))
    assert main(["fit", "--config", str(cfg), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "broken.npz" in capsys.readouterr().err
    missing = tmp_path / "nope.toml"
    assert main(["fit", "--config", str(missing), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text(SMALL.replace("body_mass:forearm", "body_mass:no_such_link"))
    assert main(["fit", "--config", str(bad_cfg), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "body_mass:no_such_link" in capsys.readouterr().err


def test_demo_emulated_robot_through_the_service_to_the_report(tmp_path):
    """`twin-bayes demo`, one window on the inference tests' small arm2 config (0.5 s windows, 32
    particles; a fresh process compiles the same kernels, so the persistent cache serves both):
    robot subprocess -> service -> live view -> truth vs posterior and the report; temp files gone."""
    text = resolve_config_path("arm2").read_text().replace("window_s = 1.0", "window_s = 0.5\nmcmc_steps = 5")
    cfg = tmp_path / "arm2_demo.toml"
    cfg.write_text(text)
    (tmp_path / "tmp").mkdir()
    run = subprocess.run([sys.executable, "-m", "twin_bayes.cli", "demo", "--config", str(cfg), "--seconds", "0.5",
                          "--seed", "3", "--out", str(tmp_path / "r")], capture_output=True, text=True,
                         env={**os.environ, "TMPDIR": str(tmp_path / "tmp"), "COLUMNS": "200"}, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "(ok, tolerance" in out
    robot = json.loads(out.split("robot done: ", 1)[1].splitlines()[0])
    # the window's 251 samples in chunks of 50
    assert robot["chunks"] == robot["acked"] == 6 and robot["rejected"] == 0
    assert "posterior after 1 window(s)" in out
    table = out.split("truths inside the 90% interval", 1)[1]   # after the live view's tables
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    rows = {c[0]: c[1:] for c in cells}   # truth, mean, 5%, 95%, covered
    assert set(rows) == set(load_config(cfg).parameters)
    for truth, mean, lo, hi, covered in rows.values():
        assert float(lo) <= float(mean) <= float(hi) and float(truth) > 0 and covered in ("yes", "no")
    yes = sum(r[-1] == "yes" for r in rows.values())
    assert f"{yes}/{len(rows)} truths inside the 90% interval" in out
    assert (tmp_path / "r" / "index.html").stat().st_size > 0
    assert list((tmp_path / "tmp").iterdir()) == []
