"""Posterior samples (plain arrays) to ``arviz.InferenceData`` and netCDF files.

Parameter names such as ``body_mass:upper_arm`` are kept intact. HDF5 cannot
store ``/`` in a variable name, so ``save_netcdf`` percent-encodes ``%`` and
``/`` and ``load_netcdf`` decodes them; every other character is stored as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np

_ESCAPE_ATTR = "twin_bayes_name_escape"


def systematic_resample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: weights (N,) summing to 1 -> indices (N,)."""
    n = weights.shape[0]
    positions = (rng.random() + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0
    return np.searchsorted(cumulative, positions, side="left")


def _check_weights(weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.shape != shape:
        raise ValueError(f"weights have shape {w.shape}, samples have (chains, draws) {shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    totals = w.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("every chain needs a positive total weight")
    return w / totals


def _resample(
    groups: list[dict[str, np.ndarray] | None], weights: np.ndarray, seed: int
) -> tuple[list[dict[str, np.ndarray] | None], float]:
    """Resample every (chains, draws, ...) array of ``groups`` with one index per chain.

    The resampled draws are shuffled so that their order carries no information.
    Returns the resampled groups and the summed per-chain Kish ESS of the weights.
    """
    rng = np.random.default_rng(seed)
    index = np.stack(
        [rng.permutation(systematic_resample(row, rng)) for row in weights]
    )
    chains = np.arange(weights.shape[0])[:, None]
    out = [
        None if g is None else {k: v[chains, index] for k, v in g.items()}
        for g in groups
    ]
    kish = float(np.sum(1.0 / np.sum(weights**2, axis=1)))
    return out, kish


def _as_arrays(group: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    return None if group is None else {k: np.asarray(v) for k, v in group.items()}


def to_inference_data(
    samples: Mapping[str, np.ndarray],
    *,
    prior: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    observed: Mapping[str, np.ndarray] | None = None,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> az.InferenceData:
    """Build ``InferenceData`` from named posterior draws.

    samples: name -> (chains, draws). prior: name -> (draws,).
    weights: (chains, draws) importance weights of SMC particles, normalised per
      chain; the posterior, sample_stats and posterior_predictive draws are then
      resampled systematically (numpy Generator seeded with ``seed``) into equally
      weighted draws, and the Kish ESS of the weights is stored in the posterior
      attrs as ``weights_ess``.
    sample_stats: e.g. ``diverging`` (chains, draws) bool.
    observed: name -> array without chain/draw dims.
    posterior_predictive: name -> (chains, draws, ...).
    dims / coords: passed to ``arviz.from_dict`` (e.g. ``{"y": ["time", "channel"]}``).
    attrs: stored on every group (numbers and strings; anything else as JSON).
    """
    post = _as_arrays(samples)
    if not post:
        raise ValueError("samples is empty")
    shapes = {k: v.shape for k, v in post.items()}
    shape = next(iter(shapes.values()))
    if any(len(s) != 2 or s != shape for s in shapes.values()):
        raise ValueError(f"every sample array must be (chains, draws) with one shape: {shapes}")
    stats = _as_arrays(sample_stats)
    pred = _as_arrays(posterior_predictive)
    for group in (stats, pred):
        for k, v in (group or {}).items():
            if v.shape[:2] != shape:
                raise ValueError(f"{k!r} has leading shape {v.shape[:2]}, expected {shape}")
    meta = {k: _attr_value(v) for k, v in (attrs or {}).items()}
    kish = None
    if weights is not None:
        w = _check_weights(weights, shape)
        (post, stats, pred), kish = _resample([post, stats, pred], w, seed)
    prior_arrays = _as_arrays(prior)
    if prior_arrays and any(v.ndim != 1 for v in prior_arrays.values()):
        raise ValueError("prior draws must be (draws,) per name")
    idata = az.from_dict(
        posterior=post,
        prior=None if prior_arrays is None else {k: v[None] for k, v in prior_arrays.items()},
        sample_stats=stats,
        observed_data=_as_arrays(observed),
        posterior_predictive=pred,
        dims=dict(dims) if dims else None,
        coords=dict(coords) if coords else None,
        attrs=meta,
    )
    if kish is not None:
        idata.posterior.attrs["weights_ess"] = kish
    return idata


def _attr_value(value: Any) -> Any:
    """netCDF attributes hold numbers, strings and numeric arrays only."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return value
    return json.dumps(value, default=str)


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F")


def _unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def _rename_all(idata: az.InferenceData, fn) -> az.InferenceData:
    groups = {}
    for group in idata.groups():
        ds = idata[group]
        names = list(ds.data_vars) + list(ds.dims) + list(ds.coords)
        groups[group] = ds.rename({n: fn(n) for n in dict.fromkeys(names) if fn(n) != n})
    return az.InferenceData(attrs=dict(idata.attrs), **groups)


def save_netcdf(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to a netCDF4 (HDF5) file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _rename_all(idata, _escape)
    out.attrs[_ESCAPE_ATTR] = "percent"
    out.to_netcdf(str(path), engine="h5netcdf")
    return path


def load_netcdf(path: str | Path) -> az.InferenceData:
    """Read a file written by ``save_netcdf`` (names decoded) into memory."""
    with az.rc_context({"data.load": "eager"}):
        idata = az.from_netcdf(str(path), engine="h5netcdf")
    if idata.attrs.pop(_ESCAPE_ATTR, None) == "percent":
        idata = _rename_all(idata, _unescape)
    return idata
