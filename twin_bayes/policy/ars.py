"""Augmented random search (ARS V1-t, Mania, Guy & Recht 2018) as pure pieces.

A policy is a flat parameter vector theta (D,). One iteration draws N
directions delta (N, D), scores theta ± noise·delta (the pair shares its model
and its sensor-noise seed: common random numbers), keeps the `top` directions
by max(r+, r−) and steps along Σ (r+ − r−)·delta, scaled by the standard
deviation of the kept returns. The policy scales its own parameters (for the
walker, each gain by a fixed physical scale: `policy.walk.SCALES`), so this is
V1-t in those units.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Settings(NamedTuple):
    """directions N, top b ≤ N, step size alpha, exploration noise nu (in units of theta)."""

    directions: int = 16
    top: int = 8
    step_size: float = 0.02
    noise: float = 0.03


def perturbations(theta: np.ndarray, rng: np.random.Generator, settings: Settings):
    """Directions delta (N, D) ~ N(0, I) and the 2N parameter vectors to score (2N, D): theta + nu·delta
    in rows 0..N−1, theta − nu·delta in rows N..2N−1."""
    delta = rng.standard_normal((settings.directions, theta.size))
    return delta, np.concatenate([theta + settings.noise * delta, theta - settings.noise * delta])


def ars_update(theta: np.ndarray, delta: np.ndarray, returns: np.ndarray, settings: Settings) -> np.ndarray:
    """One ARS step from the returns (2N,) of `perturbations`' rows: theta (D,) moves along the
    `top` directions with the largest max(r+, r−), by alpha / (b·sigma_R) · Σ (r+ − r−)·delta."""
    n = len(delta)
    plus, minus = returns[:n], returns[n:]
    keep = np.argsort(-np.maximum(plus, minus))[:settings.top]
    sigma = np.concatenate([plus[keep], minus[keep]]).std()
    if sigma == 0.0:
        return theta
    step = ((plus[keep] - minus[keep])[:, None] * delta[keep]).sum(axis=0)
    return theta + settings.step_size / (settings.top * sigma) * step
