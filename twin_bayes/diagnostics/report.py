"""HTML posterior report with PNG plots (matplotlib ``Figure`` objects, Agg; no pyplot state).

``predictive`` entries are dicts with ``name``, ``t`` (T,), ``observed`` (T, C),
``bands`` {quantile: (T, C)} and ``channel_names`` (C names).
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.figure import Figure

from twin_bayes.diagnostics.calibration import interval_coverage_of_truth
from twin_bayes.diagnostics.summary import (
    confounded_pairs,
    contraction,
    correlations,
    divergences,
    scalar_draws,
    summarize,
)

MAX_PAIR = 6
MAX_RANK = 12
_POST, _PRIOR, _TRUTH = "tab:blue", "0.6", "tab:red"
Draws = dict[str, np.ndarray]  # name -> (chains, draws)


def _label(text: str) -> str:
    """Keep matplotlib from reading ``$`` in parameter names as mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=90)
    return name


def _forest(
    names: list[str], post: Draws, prior: Draws, truth: dict[str, float], out_dir: Path
) -> str:
    """One row per parameter (own x scale): prior and posterior median with 90% interval."""
    fig = Figure(figsize=(7, 0.55 * len(names) + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(names), 1))
    for ax, name in zip(axes, names):
        for y, draws, color, lw in ((0, prior.get(name), _PRIOR, 2), (1, post[name], _POST, 4)):
            if draws is None:
                continue
            lo, mid, hi = np.quantile(draws, [0.05, 0.5, 0.95])
            ax.hlines(y, lo, hi, color=color, lw=lw)
            ax.plot(mid, y, "o", color=color, ms=5)
        if name in truth:
            ax.axvline(truth[name], color=_TRUTH, ls="--", lw=1.2)
        ax.set_ylim(-0.7, 1.7)
        ax.set_yticks([])
        ax.set_ylabel(_label(name), rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_title("posterior (blue) vs prior (grey): median, 90% interval; truth dashed red", fontsize=9)
    return _save(fig, out_dir, "forest.png")


def _pairs(names: list[str], post: Draws, truth: dict[str, float], out_dir: Path) -> str:
    """Scatter matrix of posterior draws (lower), marginals (diagonal), correlations (upper)."""
    k = len(names)
    draws = np.stack([post[n].ravel() for n in names])
    rng = np.random.default_rng(0)
    pick = rng.choice(draws.shape[1], size=min(draws.shape[1], 1500), replace=False)
    fig = Figure(figsize=(1.9 * k + 0.5, 1.9 * k + 0.5), layout="constrained")
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            ax.tick_params(labelsize=6)
            if i == j:
                ax.hist(draws[i], bins=30, color=_POST, alpha=0.7)
                if names[i] in truth:
                    ax.axvline(truth[names[i]], color=_TRUTH, ls="--")
            elif i > j:
                ax.plot(draws[j, pick], draws[i, pick], ".", ms=1.5, alpha=0.4, color=_POST)
                if names[i] in truth and names[j] in truth:
                    ax.plot(truth[names[j]], truth[names[i]], "x", color=_TRUTH, ms=7)
            else:
                r = np.corrcoef(draws[i], draws[j])[0, 1]
                ax.text(0.5, 0.5, f"r = {r:.2f}", ha="center", va="center", fontsize=10)
                ax.set_axis_off()
            if i == k - 1:
                ax.set_xlabel(_label(names[j]), fontsize=7)
            if j == 0 and i > 0:
                ax.set_ylabel(_label(names[i]), fontsize=7)
    return _save(fig, out_dir, "pairs.png")


def _mixing(names: list[str], post: Draws, n_chains: int, out_dir: Path) -> str:
    """Rank plots with >= 2 chains, else trace plots, via ArviZ onto our own axes."""
    data = az.convert_to_dataset({n: post[n] for n in names})
    rows = (len(names) + 1) // 2 if n_chains >= 2 else len(names)
    fig = Figure(figsize=(9, 1.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    with warnings.catch_warnings():  # ArviZ's own use of deprecated matplotlib helpers
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
        if n_chains < 2:
            az.plot_trace(data, var_names=names, axes=axes, show=False)
            return _save(fig, out_dir, "trace.png")
        flat = axes.ravel()
        for ax in flat[len(names):]:
            ax.set_axis_off()
        az.plot_rank(data, var_names=names, ax=flat[: len(names)], show=False)
    return _save(fig, out_dir, "rank.png")


def _band_pairs(bands: Mapping[float, np.ndarray]) -> tuple[list[tuple[float, float]], float | None]:
    """Symmetric (lower, upper) quantile pairs, outermost first, and the middle quantile if any."""
    qs = sorted(bands)
    pairs = [(qs[i], qs[-1 - i]) for i in range(len(qs) // 2)]
    return pairs, qs[len(qs) // 2] if len(qs) % 2 else None


def _predictive(index: int, pred: Mapping[str, Any], out_dir: Path) -> tuple[str, str]:
    """Bands over the measured data, one row per channel; returns (png, coverage text)."""
    t = np.asarray(pred["t"], dtype=float)
    obs = np.asarray(pred["observed"], dtype=float)
    bands = {float(q): np.asarray(b, dtype=float) for q, b in pred["bands"].items()}
    channels = list(pred.get("channel_names") or [f"channel {c}" for c in range(obs.shape[1])])
    pairs, mid = _band_pairs(bands)
    fig = Figure(figsize=(9, 1.9 * obs.shape[1] + 0.6), layout="constrained")
    axes = fig.subplots(obs.shape[1], 1, sharex=True, squeeze=False)[:, 0]
    for c, ax in enumerate(axes):
        for n, (lo, hi) in enumerate(pairs):
            ax.fill_between(t, bands[lo][:, c], bands[hi][:, c], color=_POST,
                            alpha=0.2 + 0.5 * n / max(len(pairs), 1), lw=0,
                            label=f"{hi - lo:.0%} band")
        if mid is not None:
            ax.plot(t, bands[mid][:, c], color=_POST, lw=1, label=f"q{mid:g}")
        ax.plot(t, obs[:, c], "k.", ms=2, label="measured")
        ax.set_ylabel(_label(channels[c]), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set_title(_label(pred["name"]), fontsize=9)
    axes[-1].set_xlabel("time [s]", fontsize=8)
    coverage = ", ".join(
        f"{hi - lo:.0%} band covers {interval_coverage_of_truth(bands[lo], bands[hi], obs):.1%}"
        for lo, hi in pairs
    )
    return _save(fig, out_dir, f"predictive_{index}.png"), coverage


def _fmt(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _table(
    stats: dict[str, dict[str, float]], contr: dict[str, float], truth: dict[str, float]
) -> str:
    cols = ["mean", "sd", "q05", "q95", "r_hat", "ess_bulk", "ess_tail"]
    head = ["parameter"] + (["truth"] if truth else []) + cols + ["contraction"]
    rows = []
    for name, s in stats.items():
        cells = [f"<td class='name'>{html.escape(name)}</td>"]
        if truth:
            value = truth.get(name)
            missed = value is not None and not s["q05"] <= value <= s["q95"]
            cells.append(f"<td{' class=warn' if missed else ''}>{_fmt(value)}</td>")
        for col in cols:
            bad = col == "r_hat" and s[col] > 1.01
            cells.append(f"<td{' class=warn' if bad else ''}>{_fmt(s[col])}</td>")
        cells.append(f"<td>{_fmt(contr.get(name))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>\n" + "\n".join(rows) + "</table>"


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td.name{text-align:left;font-family:monospace}.warn{background:#fdd}img{max-width:100%}
figure{margin:1em 0}figcaption{color:#555;font-size:13px}"""


def write_report(
    idata: az.InferenceData,
    out_dir: str | Path,
    *,
    title: str = "twin-bayes posterior report",
    predictive: Sequence[Mapping[str, Any]] | None = None,
    truth: Mapping[str, float] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and its PNGs (relative links); returns the HTML path.

    Contents: forest of posterior vs prior (truth marked when given), pair plot of
    the 6 most contracted parameters, rank plots (>= 2 chains) or traces, predictive
    bands over the measured data, the summary table and the confounded pairs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = {k: float(v) for k, v in (truth or {}).items()}
    post = scalar_draws(idata.posterior)
    prior = scalar_draws(idata.prior) if "prior" in idata.groups() else {}
    stats = summarize(idata)
    contr = contraction(prior, post)
    names = list(post)
    _, corr = correlations(post)
    pairs = confounded_pairs(names, corr)
    n_chains, n_draws = next(iter(post.values())).shape

    figures = [(_forest(names, post, prior, truth, out), "Parameters")]
    by_contraction = sorted(names, key=lambda n: -np.nan_to_num(contr.get(n, np.nan), nan=-np.inf))
    if len(names) >= 2:
        figures.append((_pairs(by_contraction[:MAX_PAIR], post, truth, out),
                        f"Pair plot of the {min(len(names), MAX_PAIR)} most contracted parameters"))
    if n_chains >= 2:
        worst = sorted(names, key=lambda n: -np.nan_to_num(stats[n]["r_hat"], nan=np.inf))[:MAX_RANK]
        figures.append((_mixing(worst, post, n_chains, out), "Rank plots (highest R-hat first)"))
    else:
        figures.append((_mixing(names[:MAX_RANK], post, n_chains, out), "Traces (one chain)"))
    for i, pred in enumerate(predictive or []):
        png, coverage = _predictive(i, pred, out)
        figures.append((png, f"Predictive: {pred['name']}" + (f" — {coverage}" if coverage else "")))

    facts = {"chains": n_chains, "draws": n_draws, "divergences": divergences(idata)}
    if "weights_ess" in idata.posterior.attrs:
        facts["particle ESS (Kish)"] = f"{float(idata.posterior.attrs['weights_ess']):.1f}"
    facts.update(idata.attrs)
    fact_html = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in facts.items())
    pair_html = "".join(
        f"<li><code>{html.escape(a)}</code> ~ <code>{html.escape(b)}</code>: r = {r:.2f}</li>" for a, b, r in pairs
    ) or "<li>none (all |r| &lt; 0.8)</li>"
    fig_html = "\n".join(
        f"<figure><img src='{png}' alt='{html.escape(cap, quote=True)}'>"
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for png, cap in figures
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{fact_html}</ul>
<h2>Summary</h2>
{_table(stats, contr, truth)}
<h2>Confounded pairs (|r| &ge; 0.8: the data cannot tell them apart)</h2>
<ul>{pair_html}</ul>
<h2>Plots</h2>
{fig_html}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
