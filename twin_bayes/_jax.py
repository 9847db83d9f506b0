"""JAX set-up for the package, imported first by `twin_bayes.sim`, `twin_bayes.models` and
`twin_bayes.inference` (everything that runs JAX goes through one of them), so that `import twin_bayes`
and the robot side (`service.robot_link`, `replay`, `keys`, `watch`) load no JAX.

float64: identification compares trajectories over hundreds of steps and checks gradients against
finite differences, where float32 round-off (~1e-7 relative per step, compounding through the
integrator) swamps the signal of small parameters such as armature and friction; likelihoods sum
thousands of residuals of millimetre size.

NPROC: see below (a deadlock of batched LAPACK kernels on small machines).

MJX prints on stdout that its optional GPU backend (warp, mujoco_warp) is missing when it is
imported; that import is done here with stdout captured, so the command line's machine-readable
stdout and its stderr stay clean.
"""
import contextlib
import io
import os

# jaxlib's batched LAPACK kernels (a batch of robots' or particles' Cholesky and eigen-decompositions)
# wait for their pieces inside XLA's intra-op thread pool, NPROC threads (default one per core): on a
# 2-core machine two such kernels can hold the whole pool and hang forever. XLA reads NPROC when JAX
# makes its CPU client, so it is set here, before anything computes.
os.environ.setdefault("NPROC", str(max(8, os.cpu_count() or 1)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

with contextlib.redirect_stdout(io.StringIO()):
    import mujoco.mjx  # noqa: F401

# MJX walks the body tree one depth level at a time (`mjx._src.scan.body_tree`), each level reading
# the one above it. XLA's CPU compiler fuses the levels of a chain into one loop that recomputes
# every parent once per use, so the cost grows exponentially with the tree's depth: one
# `mjx.forward` of a 7-link serial chain took 13 ms, 100 times its parts (3 links: 12 µs). An
# optimization barrier on each level's results keeps them as computed values; the arithmetic, and
# therefore every result and derivative, is unchanged (`benchmarks/tree_depth.py` measures it;
# `tests/sim/test_sim.py` checks the barrier is in place, should MJX rename its level function).
from mujoco.mjx._src import scan as _mjx_scan  # noqa: E402

_level = getattr(_mjx_scan, "_nvmap", None)


def _level_then_barrier(f, *args):
    y = _level(f, *args)
    return None if y is None else jax.lax.optimization_barrier(y)


if _level is not None:
    _mjx_scan._nvmap = _level_then_barrier
