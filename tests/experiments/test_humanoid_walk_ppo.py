"""The GPU walking path on a CPU (`experiments/humanoid_walk_ppo.py train --smoke`: 8 environments, 20-step
episodes, two PPO evaluations): Brax PPO on the MJX walking episode runs, its walker is written after each
evaluation, the exported network gives Brax's own commands, and `policy run` runs it on native MuJoCo.
Compiling the MJX humanoid's PPO step takes minutes on a CPU: marked slow.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from twin_bayes import cli
from twin_bayes.policy import walk, walk_net

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "humanoid_walk_ppo.py"


@pytest.mark.slow
def test_the_smoke_run_trains_exports_and_the_cli_runs_the_walker(tmp_path, capsys):
    subprocess.run([sys.executable, str(SCRIPT), "train", "--smoke", "--minutes", "0", "--out", str(tmp_path)],
                   check=True, timeout=3600)
    record = json.loads((tmp_path / "ppo_training.json").read_text())
    assert record["env_steps"] >= 10_000 and len(record["curve"]) == 2
    assert record["export_max_command_gap"] < 1e-5            # float32 Brax against the float64 export
    for point in record["curve"]:
        assert 0.0 <= point["eval/episode_fell"] <= 1.0 and point["eval/episode_reward"] > 0
    net = walk.load(tmp_path / "ppo.json", "humanoid")
    assert isinstance(net, walk_net.WalkNet) and len(net.layers) == 5
    argv = ["policy", "run", "--policy", str(tmp_path / "ppo.json"), "--robot", "humanoid", "--seconds", "0.3",
            "--seed", "1", "--json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seconds"] > 0 and printed["energy_j"] > 0
