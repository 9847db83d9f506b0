"""Scoring a predictive ensemble against what the robot then measured.

Shapes: ``samples`` (S, ...) are S ensemble members of a prediction, e.g.
(S, T, C) for T time steps and C channels; ``observed`` (...) is the measured
truth, e.g. (T, C). NaN in ``observed`` marks a missing measurement and is left
out of every average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp


def _pair(samples: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=float)
    y = np.asarray(observed, dtype=float)
    if x.shape[1:] != y.shape:
        raise ValueError(f"samples {x.shape} must be (S, *observed.shape) with observed {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("an ensemble needs at least 2 samples")
    return x, y


def quantile_bands(samples: np.ndarray, quantiles: np.ndarray | list[float]) -> np.ndarray:
    """samples (S, ...) -> quantiles (Q, ...)."""
    return np.quantile(np.asarray(samples, dtype=float), np.asarray(quantiles, dtype=float), axis=0)


def _inside(samples: np.ndarray, observed: np.ndarray, level: float) -> np.ndarray:
    """Boolean (...) of observed points inside the central ``level`` interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = quantile_bands(samples, [(1 - level) / 2, (1 + level) / 2])
    return (observed >= lo) & (observed <= hi)


def band_coverage(samples: np.ndarray, observed: np.ndarray, level: float) -> float:
    """Fraction of observed points inside the central ``level`` interval of the samples."""
    x, y = _pair(samples, observed)
    ok = np.isfinite(y)
    return float(np.mean(_inside(x, y, level)[ok])) if ok.any() else float("nan")


def draw_coverage(samples: np.ndarray, level: float, where: np.ndarray | None = None) -> np.ndarray:
    """Coverage (S,) that each of the S draws would score as the observation, in the central ``level``
    band of the other S − 1 (by its rank among them: inside iff a fraction in [(1 − level)/2, (1 + level)/2]
    of them lies below it), over the points ``where`` (..., bool; default all).

    A recording that behaves as the predictive says is one more such draw, so these are the coverages a
    calibrated twin scores on it: their spread is how far from ``level`` an honest coverage of this
    recording may fall (wide for a few long recordings of autocorrelated error)."""
    x = np.asarray(samples, dtype=float)
    if x.shape[0] < 3:
        raise ValueError("draw coverage needs at least 3 samples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    below = np.argsort(np.argsort(x, axis=0), axis=0) / (x.shape[0] - 1)      # (S, ...) share of the others
    inside = (below >= (1 - level) / 2) & (below <= (1 + level) / 2)
    where = np.ones(x.shape[1:], bool) if where is None else np.broadcast_to(np.asarray(where, bool), x.shape[1:])
    return inside[:, where].mean(axis=1) if where.any() else np.full(x.shape[0], np.nan)


def calibrated_range(draw_coverages: list[np.ndarray], mass: float = 0.9, n: int = 4000,
                     seed: int = 0) -> list[float]:
    """[lo, hi]: the central ``mass`` range of the mean coverage over R recordings that a calibrated twin
    scores, from each recording's `draw_coverage` (S_r,): one draw per recording, independently, averaged
    (n Monte Carlo means)."""
    rng = np.random.default_rng(seed)
    means = np.mean([c[rng.integers(0, len(c), n)] for c in draw_coverages], axis=0)
    return np.quantile(means, [(1 - mass) / 2, (1 + mass) / 2]).tolist()


def interval_coverage_of_truth(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of ``truth`` values inside [lo, hi] (broadcast), e.g. true parameters
    inside their 90% credible intervals over many simulated fits."""
    lo, hi, truth = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (lo, hi, truth)))
    ok = np.isfinite(truth)
    inside = (truth >= lo) & (truth <= hi)
    return float(np.mean(inside[ok])) if ok.any() else float("nan")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (95 % at z = 1.96); NaNs for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return c - h, c + h


def coverage_stats(hits: list[bool]) -> dict:
    """How often intervals held their truths: {covered, n, coverage, se (binomial), wilson95 [lo, hi]}."""
    n, k = len(hits), int(sum(hits))
    p = k / n if n else float("nan")
    lo, hi = wilson(k, n)
    return {"covered": k, "n": n, "coverage": p, "se": math.sqrt(p * (1 - p) / n) if n else float("nan"),
            "wilson95": [lo, hi]}


def pit(values: np.ndarray, weights: np.ndarray, x: float) -> float:
    """Probability integral transform of a truth x under weighted draws values (N,), weights (N,) summing
    to 1: the posterior probability below x (ties half). Uniform on [0, 1] when calibrated."""
    return float(weights @ ((values < x) + 0.5 * (values == x)))


def crps_ensemble(samples: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Fair (unbiased) ensemble CRPS per point: samples (S, ...), observed (...) -> (...).

    CRPS = mean_i |x_i - y| - sum_{i,j} |x_i - x_j| / (2 S (S - 1)); the pair sum
    is computed in O(S log S) from the sorted ensemble as
    sum_{i,j} |x_i - x_j| = 2 sum_k (2k - S - 1) x_(k), k = 1..S. Lower is better.
    """
    x, y = _pair(samples, observed)
    s = x.shape[0]
    xs = np.sort(x, axis=0)
    k = np.arange(1, s + 1, dtype=float).reshape((s,) + (1,) * y.ndim)
    spread = np.sum((2 * k - s - 1) * xs, axis=0) / (s * (s - 1))
    return np.mean(np.abs(x - y), axis=0) - spread


def log_score(samples: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Log predictive density of ``observed`` per point: samples (S, ...), observed (...) -> (...).

    The density is a Gaussian kernel estimate of the ensemble with Silverman's
    bandwidth per point (floored at 1e-9 times the ensemble's scale). Higher is better.
    """
    x, y = _pair(samples, observed)
    s = x.shape[0]
    sd = np.std(x, axis=0, ddof=1)
    q25, q75 = np.quantile(x, [0.25, 0.75], axis=0)
    robust = np.where(q75 > q25, np.minimum(sd, (q75 - q25) / 1.349), sd)
    floor = 1e-9 * np.maximum(1.0, np.abs(np.median(x, axis=0)))
    h = np.maximum(0.9 * robust * s ** (-0.2), floor)
    z = (y - x) / h
    return logsumexp(-0.5 * z**2, axis=0) - np.log(s * h * np.sqrt(2 * np.pi))


#: Bins of the probability-integral-transform histogram (each observation's rank among its draws).
PIT_BINS = 10


@dataclass
class OnlineCalibration:
    """Running calibration of published predictions, updated as their truth arrives.

    ``update(samples (S, ...), observed (...))`` scores one prediction; ``as_dict()``
    gives coverage of the central ``levels`` bands, mean CRPS, mean log score and the
    PIT histogram over every finite observed point so far (NaN observations are skipped).
    """

    levels: tuple[float, ...] = (0.5, 0.9)
    n_batches: int = 0
    n_points: int = 0
    crps_sum: float = 0.0
    log_score_sum: float = 0.0
    inside: dict[float, int] = field(default_factory=dict)
    pit: list[int] = field(default_factory=lambda: [0] * PIT_BINS)   # PIT histogram: flat when calibrated

    def update(self, samples: np.ndarray, observed: np.ndarray) -> dict[str, float]:
        """Add one batch; returns that batch's own scores (same keys as ``as_dict``)."""
        x, y = _pair(samples, observed)
        ok = np.isfinite(y)
        batch = OnlineCalibration(self.levels, 1, int(ok.sum()))
        batch.crps_sum = float(np.sum(crps_ensemble(x, y)[ok]))
        batch.log_score_sum = float(np.sum(log_score(x, y)[ok]))
        batch.inside = {lv: int(np.sum(_inside(x, y, lv)[ok])) for lv in self.levels}
        pit = np.mean(x <= y[None], axis=0)[ok]
        batch.pit = np.bincount(np.minimum((pit * PIT_BINS).astype(int), PIT_BINS - 1), minlength=PIT_BINS).tolist()
        self.pit = [a + b for a, b in zip(self.pit, batch.pit)]
        self.n_batches += 1
        self.n_points += batch.n_points
        self.crps_sum += batch.crps_sum
        self.log_score_sum += batch.log_score_sum
        for lv, n in batch.inside.items():
            self.inside[lv] = self.inside.get(lv, 0) + n
        return batch.as_dict()

    def as_dict(self) -> dict[str, float]:
        """{n_batches, n_points, coverage_50, coverage_90, ..., crps, log_score}; NaN before any point."""
        n = self.n_points

        def mean(total: float) -> float:
            return total / n if n else float("nan")

        out: dict[str, float] = {"n_batches": self.n_batches, "n_points": n}
        for lv in self.levels:
            out[f"coverage_{round(100 * lv)}"] = mean(self.inside.get(lv, 0))
        out["crps"] = mean(self.crps_sum)
        out["log_score"] = mean(self.log_score_sum)
        out["pit_histogram"] = list(self.pit)
        return out
