"""JAX set-up for the package, imported first by `twin_bayes.sim`, `twin_bayes.models` and
`twin_bayes.inference` (everything that runs JAX goes through one of them), so that `import twin_bayes`
and the robot side (`service.robot_link`, `replay`, `keys`, `watch`) load no JAX.

float64: identification compares trajectories over hundreds of steps and checks gradients against
finite differences, where float32 round-off (~1e-7 relative per step, compounding through the
integrator) swamps the signal of small parameters such as armature and friction; likelihoods sum
thousands of residuals of millimetre size.

MJX prints on stdout that its optional GPU backend (warp, mujoco_warp) is missing when it is
imported; that import is done here with stdout captured, so the command line's machine-readable
stdout and its stderr stay clean.
"""
import contextlib
import io

import jax

jax.config.update("jax_enable_x64", True)

with contextlib.redirect_stdout(io.StringIO()):
    import mujoco.mjx  # noqa: F401
