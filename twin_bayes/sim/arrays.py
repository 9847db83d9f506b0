"""NumPy or JAX: `sim`'s formulas (parameter map, actuator models, command latency) serve both the
native emulator, which runs on NumPy and never imports JAX, and the differentiable twin, which
traces them under JAX. Each formula takes its array module from its arguments."""
from __future__ import annotations

import numpy as np


def namespace(*xs):
    """jax.numpy where any of xs is a JAX array or tracer (JAX is imported only then), else numpy."""
    for x in xs:
        if type(x).__module__.partition(".")[0] in ("jax", "jaxlib"):
            import jax.numpy as jnp
            return jnp
    return np


def put(a, index, values):
    """a with a[index] = values, as a new array (`a.at[index].set` under JAX)."""
    if isinstance(a, np.ndarray):
        a = a.copy()
        a[index] = values
        return a
    return a.at[index].set(values)


def add_at(a, index, values):
    """a with values added at index, repeated indices accumulating (`a.at[index].add` under JAX)."""
    if isinstance(a, np.ndarray):
        a = a.copy()
        np.add.at(a, index, values)
        return a
    return a.at[index].add(values)
