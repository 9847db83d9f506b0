"""What every benchmark's JSON starts with: the command that reproduces it and the machine it ran on."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PACKAGES = ("jax", "jaxlib", "mujoco", "brax", "numpyro", "blackjax", "pyzmq")


def command() -> str:
    """The command line of this run, as typed from the repository root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def git_state(paths: str = "twin_bayes") -> dict:
    """The checkout measured: its commit and whether `paths` differ from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", paths)
    return {"commit": git("rev-parse", "HEAD"), "modified": None if status is None else status != ""}


def machine(**extra) -> dict:
    """CPU, platform, package versions, JAX's device and float64 flag (when JAX is loaded), git state,
    the 1/5/15-minute load average (above the CPU count: other processes shared the CPU and timings are
    inflated), plus `extra` (e.g. the compilation cache in use)."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    out = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
           "packages": versions, "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "git": git_state(),
           "load_average_1_5_15_min": list(os.getloadavg())}
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        dev = jax.devices()[0]
        out |= {"device": f"{dev.platform}:{dev.device_kind}", "x64": bool(jax.config.jax_enable_x64)}
    return out | extra
