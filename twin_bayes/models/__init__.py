"""NumPyro models of twins: priors, multiple-shooting likelihood, noise, hierarchical fleets."""
from twin_bayes import _jax  # noqa: F401  (float64; first, before any array)
from twin_bayes.models.fleet import FleetModel
from twin_bayes.models.twin_model import TwinModel, Window, WindowError, batch_log_lik, map_rows, prior_distribution

__all__ = ["FleetModel", "TwinModel", "Window", "WindowError", "batch_log_lik", "map_rows", "prior_distribution"]
