"""Posterior summaries, convergence (R-hat, ESS, divergences) and identifiability."""

from __future__ import annotations

from collections.abc import Mapping

import arviz as az
import numpy as np
import xarray as xr

Samples = Mapping[str, np.ndarray] | xr.Dataset


def scalar_draws(group: xr.Dataset) -> dict[str, np.ndarray]:
    """InferenceData group -> name -> (chains, draws); vector variables become ``name[i,j]``."""
    out: dict[str, np.ndarray] = {}
    for name, da in group.data_vars.items():
        arr = np.asarray(da.transpose("chain", "draw", ...))
        if arr.ndim == 2:
            out[str(name)] = arr
            continue
        for idx in np.ndindex(*arr.shape[2:]):
            out[f"{name}[{','.join(map(str, idx))}]"] = arr[(slice(None), slice(None), *idx)]
    return out


def summarize(idata: az.InferenceData) -> dict[str, dict[str, float]]:
    """Per-parameter mean, sd, q05, q50, q95, r_hat, ess_bulk, ess_tail.

    r_hat is the rank-normalised split R-hat and needs >= 2 chains; with one
    chain (e.g. SMC particles) it is NaN. When the posterior was resampled from
    weighted particles (posterior attr ``weights_ess``), ESS is capped at the
    Kish ESS of the weights, since duplicated particles carry no new information.
    """
    cap = float(idata.posterior.attrs.get("weights_ess", np.inf))
    out = {}
    for name, x in scalar_draws(idata.posterior).items():
        q05, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])
        out[name] = {
            "mean": float(np.mean(x)),
            "sd": float(np.std(x, ddof=1)),
            "q05": float(q05),
            "q50": float(q50),
            "q95": float(q95),
            "r_hat": float(az.rhat(x)) if x.shape[0] >= 2 else float("nan"),
            "ess_bulk": min(float(az.ess(x, method="bulk")), cap),
            "ess_tail": min(float(az.ess(x, method="tail")), cap),
        }
    return out


def divergences(idata: az.InferenceData) -> int:
    """Number of divergent transitions in ``sample_stats.diverging`` (0 when absent)."""
    if "sample_stats" not in idata.groups() or "diverging" not in idata.sample_stats:
        return 0
    return int(np.sum(np.asarray(idata.sample_stats["diverging"])))


def contraction(prior_samples: Samples, posterior_samples: Samples) -> dict[str, float]:
    """name -> 1 - var_post / var_prior for names in both (any sample shape, flattened).

    0: the data taught nothing; near 1: the data pinned the parameter down.
    NaN when the prior variance is zero.
    """
    out = {}
    for name in posterior_samples:
        if name not in prior_samples:
            continue
        v_prior = np.var(np.asarray(prior_samples[name]))
        v_post = np.var(np.asarray(posterior_samples[name]))
        out[str(name)] = float(1.0 - v_post / v_prior) if v_prior > 0 else float("nan")
    return out


def correlations(posterior_samples: Samples) -> tuple[list[str], np.ndarray]:
    """Pearson correlation of the posterior draws: (names, (P, P)); NaN for constant parameters."""
    names = [str(n) for n in posterior_samples]
    x = np.stack([np.asarray(posterior_samples[n], dtype=float).ravel() for n in names])
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.atleast_2d(np.corrcoef(x))
    return names, corr


def confounded_pairs(
    names: list[str], corr: np.ndarray, threshold: float = 0.8
) -> list[tuple[str, str, float]]:
    """Pairs with |r| >= threshold (the data cannot tell them apart), strongest first."""
    i, j = np.triu_indices(len(names), k=1)
    r = corr[i, j]
    keep = np.abs(r) >= threshold
    pairs = [(names[a], names[b], float(c)) for a, b, c in zip(i[keep], j[keep], r[keep])]
    return sorted(pairs, key=lambda p: -abs(p[2]))


def identification_table(names, prior: np.ndarray, draws: Mapping[str, np.ndarray],
                         summary: Mapping[str, Mapping[str, float]], truth: Mapping[str, float] | None = None,
                         threshold: float = 0.8) -> dict:
    """What the data pinned down: per parameter {mean, q05, q95, contraction} (plus truth and whether the
    90 % interval covers it, where `truth` is given) and the posterior pairs with |r| >= threshold.

    prior (n, P): prior draws in `names` order; draws {name: (m,)}: posterior draws; summary: the
    posterior's {name: {mean, q05, q95, ...}} (`Posterior.summary()`).
    """
    shrink = contraction({n: prior[:, i] for i, n in enumerate(names)}, draws)
    table = {}
    for n in names:
        s = summary[n]
        row = {"mean": s["mean"], "q05": s["q05"], "q95": s["q95"], "contraction": shrink[n]}
        if truth is not None:
            row = {"truth": truth[n], **row, "covered": bool(s["q05"] <= truth[n] <= s["q95"])}
        table[n] = row
    pair_names, corr = correlations(draws)
    return {"parameters": table, "confounded_pairs": confounded_pairs(pair_names, corr, threshold)}
