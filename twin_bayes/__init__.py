"""twin-bayes: a probabilistic digital twin for robots.

Importing the package loads no JAX: `twin_bayes.Twin` is imported on first use, and JAX is set up
(float64, see `twin_bayes._jax`) by the subpackages that run it.
"""

__all__ = ["Twin"]


def __getattr__(name: str):
    if name == "Twin":
        from twin_bayes.inference import Twin
        return Twin
    raise AttributeError(f"module 'twin_bayes' has no attribute {name!r}")
