"""Command-line hygiene: no JAX on the robot side or for --help, every option documented with its
default, bad option combinations and missing config paths exit 2 with the reason, serve says where
its files are."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from twin_bayes.cli import ENGINE_OPTIONS, build_parser, main

JAX_FREE = ("twin_bayes", "twin_bayes.cli", "twin_bayes.service.robot_link", "twin_bayes.service.replay",
            "twin_bayes.service.robot_commands", "twin_bayes.service.commands", "twin_bayes.service.auth",
            "twin_bayes.service.watch", "twin_bayes.service.client", "twin_bayes.service.ros2",
            "twin_bayes.service.ros2_commands", "twin_bayes.service.foxglove", "twin_bayes.data",
            "twin_bayes.service.emulate", "twin_bayes.sim", "twin_bayes.config")


def imported_modules(code: str) -> set[str]:
    """Every module a fresh interpreter imports to run `code` (from -X importtime)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True)
    return {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("module", JAX_FREE)
def test_the_robot_side_imports_no_jax(module):
    loaded = imported_modules(f"import {module}")
    assert module in loaded
    assert not {m for m in loaded if m == "jax" or m.startswith(("jax.", "jaxlib", "mujoco.mjx", "numpyro"))}


def test_an_emulated_robot_steps_without_jax():
    """`twin-bayes emulate`'s robot side whole: config, robot, a truth drawn from the prior, native steps
    of a servo (its actuator model evaluated every step, with latency) and of a torque arm."""
    code = ("import sys\nfrom twin_bayes.config import load_config\nfrom twin_bayes.service import emulate\n"
            "from twin_bayes.sim import load_robot\n"
            "for robot, config in (('servo_pendulum', 'xl330_coulomb'), ('arm2', 'arm2')):\n"
            "    r = load_robot(robot)\n"
            "    truth = {**emulate.draw_truth(load_config(config), r, 0), 'latency_s': 0.004}\n"
            "    assert emulate.EmulatedRobot(r, truth, 0).chunk(20)['q'].shape == (20, r.nq)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'numpyro', 'brax')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout


def test_building_the_parser_imports_no_jax():
    """(sys.modules: -X importtime does not see importlib.import_module, which loads COMMAND_MODULES.)"""
    run = subprocess.run([sys.executable, "-c", "import sys; from twin_bayes.cli import COMMAND_MODULES, build_parser; "
                          "build_parser(); print(all(m in sys.modules for m in COMMAND_MODULES), "
                          "'jax' in sys.modules, 'numpy' in sys.modules)"], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True", "False", "False"]


def test_twin_is_imported_on_first_use():
    run = subprocess.run([sys.executable, "-c", "import sys, twin_bayes; assert 'jax' not in sys.modules; "
                          "from twin_bayes import Twin; import jax; "
                          "print(Twin.__module__, jax.config.jax_enable_x64)"],
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["twin_bayes.inference.twin", "True"]
    assert run.stderr == ""   # MJX's missing-warp notice is swallowed
    with pytest.raises(AttributeError, match="no attribute 'Twinn'"):
        import twin_bayes
        twin_bayes.Twinn  # noqa: B018


def test_help_prints_nothing_on_stderr():
    parser, commands = build_parser()
    for args in ([], *([name] for name in commands)):
        run = subprocess.run([sys.executable, "-m", "twin_bayes.cli", *args, "--help"], capture_output=True,
                             text=True, env={**os.environ, "COLUMNS": "120"})
        assert run.returncode == 0 and run.stderr == "", (args, run.stderr)
        assert run.stdout.startswith("usage: twin-bayes")
    assert set(commands) >= {"demo", "fit", "evaluate", "serve", "emulate", "replay", "keys", "watch", "export-dr"}


def subcommands():
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_has_help_and_shows_its_default():
    """A default is shown (by the formatter or in the help's own words) unless the option is required,
    a flag, or repeatable (nothing given: none)."""
    for name, sub in subcommands().items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            shown = sub._get_formatter()._get_help_string(action) % {**vars(action), "prog": name}
            needs_default = not (action.required or not action.option_strings or action.nargs == 0
                                 or action.default == [])
            if needs_default:
                assert "default" in shown, f"{name} {action.option_strings}: no default in {shown!r}"
            assert shown.split()[0] in text
    assert "(default: 0.9)" in subcommands()["serve"].format_help()


@pytest.mark.parametrize("engine, option", [("svi", ["--warmup", "10"]), ("nuts", ["--adam-steps", "5"]),
                                            ("stream", ["--samples", "5"]), ("whole-log", ["--samples", "5"]),
                                            (None, ["--warmup", "10"])])   # the config's engine: stream
def test_an_option_of_another_engine_exits_2(engine, option, tmp_path, capsys):
    args = ["fit", "--config", "arm2", "--data", str(tmp_path / "never-read.npz"), "--out", str(tmp_path / "o")]
    assert main(args + (["--engine", engine] if engine else []) + option) == 2
    err = capsys.readouterr().err
    dest = option[0][2:].replace("-", "_")
    assert f"{option[0]} applies to --engine {' or '.join(ENGINE_OPTIONS[dest])}, not to {engine or 'stream'}" in err
    assert not (tmp_path / "o").exists()


def test_a_config_path_that_does_not_exist_exits_2(tmp_path, capsys):
    """A mistyped path is an error, even where a shipped config has the same file name."""
    missing = tmp_path / "arm2.toml"
    assert main(["fit", "--config", str(missing), "--data", "x.npz", "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: no such config file" in capsys.readouterr().err
    assert main(["serve", "--config", f"arm-1={missing}", "--store", str(tmp_path / "s.db")]) == 2
    assert f"{missing}: no such config file" in capsys.readouterr().err
    assert main(["evaluate", "--config", "arm2.toml", "--posterior", str(tmp_path), "--data", "x.npz"]) == 2
    assert "arm2.toml: no such config file" in capsys.readouterr().err
    assert main(["fit", "--config", "arm9", "--data", "x.npz", "--out", str(tmp_path / "o")]) == 2
    assert "arm9: no such config file, nor a shipped config (arm2, " in capsys.readouterr().err


def test_serve_says_where_its_store_and_checkpoints_are(tmp_path):
    store, checkpoints = tmp_path / "new" / "store.db", tmp_path / "ckpt"
    run = subprocess.run([sys.executable, "-m", "twin_bayes.cli", "serve", "--config", "arm2", "--store",
                          str(store), "--checkpoints", str(checkpoints), "--seconds", "0.2", "--no-preload",
                          *(x for sock in ("ingest", "pub", "query") for x in (f"--{sock}", "tcp://127.0.0.1:*")),
                          "--metrics-port", "0"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    ready = json.loads(run.stdout.splitlines()[0])
    assert ready["store"] == str(store) and ready["checkpoints"] == str(checkpoints)
    assert store.is_file() and ready["metrics"].startswith("http://127.0.0.1:")
    assert all(ready[s].startswith("tcp://127.0.0.1:") for s in ("ingest", "pub", "query"))
    assert main(["serve", "--config", "arm2", "--metrics-port", "70000"]) == 2
