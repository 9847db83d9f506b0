"""NumPyro models of twins: priors, multiple-shooting likelihood, noise."""
from twin_bayes.models.twin_model import TwinModel, Window, WindowError, prior_distribution

__all__ = ["TwinModel", "Window", "WindowError", "prior_distribution"]
