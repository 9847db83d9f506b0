"""twin-bayes: a probabilistic digital twin for robots.

float64 is enabled for the whole package: identification compares
trajectories over hundreds of steps and checks gradients against finite
differences, where float32 round-off (~1e-7 relative per step, compounding
through the integrator) swamps the signal of small parameters such as
armature and friction.
"""
import contextlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

# MJX reports its optional GPU backend (warp) missing on stdout; keep stdout for
# the command line's machine-readable output.
with contextlib.redirect_stdout(sys.stderr):
    import mujoco.mjx  # noqa: E402,F401

from twin_bayes.inference import Twin  # noqa: E402

__all__ = ["Twin"]
