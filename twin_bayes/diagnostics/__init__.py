"""Posterior diagnostics on plain arrays: ArviZ conversion, convergence, identifiability,
predictive calibration and HTML reports."""

from twin_bayes.diagnostics.calibration import (
    OnlineCalibration,
    band_coverage,
    calibrated_range,
    coverage_stats,
    crps_ensemble,
    draw_coverage,
    interval_coverage_of_truth,
    log_score,
    pit,
    quantile_bands,
    wilson,
)
from twin_bayes.diagnostics.convert import (
    load_netcdf,
    save_netcdf,
    systematic_resample,
    to_inference_data,
)
from twin_bayes.diagnostics.report import write_report
from twin_bayes.diagnostics.summary import (
    confounded_pairs,
    contraction,
    correlations,
    divergences,
    identification_table,
    scalar_draws,
    summarize,
)

__all__ = [
    "OnlineCalibration",
    "band_coverage",
    "calibrated_range",
    "confounded_pairs",
    "contraction",
    "coverage_stats",
    "correlations",
    "crps_ensemble",
    "divergences",
    "draw_coverage",
    "identification_table",
    "interval_coverage_of_truth",
    "load_netcdf",
    "log_score",
    "pit",
    "quantile_bands",
    "save_netcdf",
    "scalar_draws",
    "summarize",
    "systematic_resample",
    "to_inference_data",
    "wilson",
    "write_report",
]
