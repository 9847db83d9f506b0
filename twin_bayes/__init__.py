"""twin-bayes: a probabilistic digital twin for robots.

float64 is enabled for the whole package: identification compares
trajectories over hundreds of steps and checks gradients against finite
differences, where float32 round-off (~1e-7 relative per step) swamps the
signal. A twin can still run in float32 (`load_robot(..., dtype=jnp.float32)`,
or `float64 = false` in its config) where speed matters more.
"""
import jax

jax.config.update("jax_enable_x64", True)
