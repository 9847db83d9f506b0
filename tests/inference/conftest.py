"""Shared fixtures for the inference tests.

A `TwinModel` is a pytree whose numbers are traced, so every config of arm2 with
the same shapes shares one compiled update (`engine.propose_jit` and the rest); the first
compiles for minutes on a 2-core machine. One small config and its model serve
the whole session; tests that need a fresh posterior build a new
`Twin(cfg, model)` around it, and other configs of the same shapes reuse it.

The small config is the shipped arm2 config with 0.5 s windows (251 samples,
10 segments) and 32 particles (the shipped count). `mcmc_steps = 5` is the
least move count per stage of the tempered-SMC twins here (`laplace = false`,
and the gate tests that force tempering).

The data are emulated by native MuJoCo (`twin_bayes.sim.emulator.emulate`)
under a hidden truth inside the prior, with the emulator's default sensor
noise (q 0.002 rad, qd 0.02 rad/s).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from twin_bayes.config import load_config, resolve_config_path
from twin_bayes.inference import Twin, UpdateReport, discrepancy, engine, predictive
from twin_bayes.inference import twin as twin_module
from twin_bayes.models import TwinModel
from twin_bayes.sim.emulator import emulate

# Hidden truth: inside the prior (|log(truth / nominal)| < 1 prior sd for every parameter).
TRUTH = {
    "body_mass:upper_arm": 1.25,     # nominal 1.0, prior log-sd 0.3
    "body_mass:forearm": 0.5,        # nominal 0.6
    "dof_damping:shoulder": 0.08,    # nominal 0.05, prior log-sd 0.5
    "dof_damping:elbow": 0.02,       # nominal 0.03
    "dof_armature:shoulder": 0.012,  # nominal 0.01
    "dof_armature:elbow": 0.004,     # nominal 0.005
}
EMULATOR_NOISE = {"q": 0.002, "qd": 0.02}  # emulate()'s default sensor noise
SMALL = {"particles": 32, "window_s": 0.5, "mcmc_steps": 5}
FULL_WINDOWS = 4          # streamed full windows, then one shorter (padded) window
SHORT_SAMPLES = 151       # 0.3 s
DATA_SEED = 1
HELD_OUT_SEED = 7


def _dump(data: dict) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {val(x)}' for k, x in v.items()) + " }"
        return repr(v)
    lines = [f"{k} = {val(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, body in data.items():
        if isinstance(body, dict):
            lines += [f"\n[{section}]"] + [f'"{k}" = {val(v)}' for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write_arm2_config(directory: Path, name: str, noise_scale: dict | None = None, **inference) -> Path:
    """The shipped arm2 config with inference settings (and the noise scales) replaced, written as TOML."""
    data = tomllib.loads(resolve_config_path("arm2").read_text())
    data["name"] = name
    data["inference"].update(inference)
    data["observation"]["noise_scale"].update(noise_scale or {})
    path = directory / f"{name}.toml"
    path.write_text(_dump(data))
    return path


def cache_sizes() -> dict[str, int]:
    """Compiled-executable counts of every jitted kernel an update or predict goes through."""
    return {
        "update": engine.propose_jit._cache_size() + engine.finish_jit._cache_size(),
        "temper": engine.temper_jit._cache_size(),
        "constrain_all": twin_module.constrain_all._cache_size(),
        "predictive_samples": predictive.predictive_samples._cache_size(),
        "predictive_samples_many": predictive.predictive_samples_many._cache_size(),
        "model_error": discrepancy.record._cache_size() + discrepancy.refit._cache_size(),
    }


def window_dict(traj, start: int, n: int) -> dict:
    return {"q": traj.q[start:start + n], "qd": traj.qd[start:start + n], "ctrl": traj.ctrl[start:start + n]}


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("twin_configs")


@pytest.fixture(scope="session")
def small_cfg(config_dir):
    return load_config(write_arm2_config(config_dir, "arm2_small", **SMALL))


@pytest.fixture(scope="session")
def model(small_cfg) -> TwinModel:
    return TwinModel(small_cfg)


@pytest.fixture(scope="session")
def recording(model):
    """Telemetry for the streamed windows: 4 × 0.5 s full windows and one 0.3 s window."""
    T = model.window_samples
    seconds = (FULL_WINDOWS * (T - 1) + SHORT_SAMPLES) * model.robot.dt
    return emulate(model.robot, TRUTH, seconds, seed=DATA_SEED)


@pytest.fixture(scope="session")
def stream_windows(model, recording) -> list[dict]:
    """Consecutive windows (sharing their boundary sample): 4 of T samples, then one of 151."""
    T = model.window_samples
    out = [window_dict(recording, k * (T - 1), T) for k in range(FULL_WINDOWS)]
    out.append(window_dict(recording, FULL_WINDOWS * (T - 1), SHORT_SAMPLES))
    assert len(out[-1]["q"]) == SHORT_SAMPLES
    return out


@pytest.fixture(scope="session")
def held_out(model):
    """1 s of fresh telemetry (other excitation, other noise) from the same truth."""
    return emulate(model.robot, TRUTH, 1.0, seed=HELD_OUT_SEED)


@dataclass
class Stream:
    twin: Twin
    reports: list[UpdateReport] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)   # posterior.summary() before and after each update
    versions: list[int] = field(default_factory=list)
    caches_after_first: dict = field(default_factory=dict)
    caches_after_all: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def stream(small_cfg, model, stream_windows) -> Stream:
    """One twin fed the five windows through `update()`; what happened is recorded for the tests.

    Its posterior after the stream is read by the predict and bad-input tests: tests
    must not update this twin further.
    """
    twin = Twin(small_cfg, model)
    s = Stream(twin, summaries=[twin.posterior.summary()], versions=[twin.posterior.version])
    for i, w in enumerate(stream_windows):
        s.reports.append(twin.update(w))
        s.summaries.append(twin.posterior.summary())
        s.versions.append(twin.posterior.version)
        if i == 0:
            s.caches_after_first = cache_sizes()
    s.caches_after_all = cache_sizes()
    return s


def snapshot(twin: Twin) -> dict:
    """Everything about a twin's posterior that bad input must leave alone."""
    p = twin.posterior
    return {"posterior": p, "version": p.version, "stale": p.stale, "reason": p.reason,
            "z": np.array(twin.particles.z), "log_weights": np.array(twin.particles.log_weights),
            "post_z": np.array(p.particles.z), "values": p.values.copy(), "pending": len(twin.pending)}


def assert_unchanged(twin: Twin, before: dict) -> None:
    after = snapshot(twin)
    assert after["posterior"] is before["posterior"]
    assert after["version"] == before["version"]
    assert after["stale"] == before["stale"] and after["reason"] == before["reason"]
    for key in ("z", "log_weights", "post_z", "values"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert after["pending"] == before["pending"]


@pytest.fixture(scope="session")
def truth() -> dict[str, float]:
    return dict(TRUTH)


@pytest.fixture(scope="session")
def emulator_noise() -> dict[str, float]:
    return dict(EMULATOR_NOISE)


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(write_arm2_config=write_arm2_config, cache_sizes=cache_sizes, window_dict=window_dict,
                           snapshot=snapshot, assert_unchanged=assert_unchanged)
