"""twin-bayes: a probabilistic digital twin for robots."""
