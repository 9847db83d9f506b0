"""The online posterior: streaming SMC, batch NUTS/SVI/SMC, update gate, predictive."""
from twin_bayes import _jax  # noqa: F401  (float64; first, before any array)
from twin_bayes.inference.posterior import Particles, Posterior
from twin_bayes.inference.predictive import Bands
from twin_bayes.inference.twin import Twin, UpdateReport

__all__ = ["Bands", "Particles", "Posterior", "Twin", "UpdateReport"]
