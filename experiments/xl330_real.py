"""The real XL330 servo pendulum: fit friction model classes on the kp = 100/200 logs, score them on kp = 400.

Reproduces the study of README "A real robot: the XL330 servo":

    .venv/bin/python experiments/xl330_real.py                      # all classes, a few minutes each on 2 cores
    .venv/bin/python experiments/xl330_real.py --configs xl330_coulomb --adam-steps 100

Per model class (config): the whole-recording fit of `twin_bayes.inference.whole_log` on the eight
kp = 100 and kp = 200 logs (each simulated open loop from its first state, as the evaluation does; wall
time, simulator evaluations), the model error of `twin_bayes.inference.discrepancy` learned from those
logs' cross-validated residuals (each log predicted by the mode refitted without it), then the published
evaluation on the four kp = 400 logs: each log simulated whole from its first entry's position and speed
under its recorded goals, no resets; MAE of the posterior-mean prediction, coverage of the 50 % / 90 %
predictive bands (with and without the model error), CRPS.
Writes `experiments/results/xl330_real.json` and PNG plots next to it. Logs are read from
`../shared/data/bam_xl330` (see `twin_bayes.data.shared`); nothing from there is written here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

from twin_bayes import Twin
from twin_bayes.cli import evaluate_recordings
from twin_bayes.config import load_config
from twin_bayes.data import read_trajectory
from twin_bayes.data.shared import bam_logs
from twin_bayes.diagnostics import identification_table
from twin_bayes.inference import whole_log
from twin_bayes.inference.store import save_posterior
from twin_bayes.sim.actuators import SERVO_TORQUE_OFF

CLASSES = ("xl330", "xl330_coulomb", "xl330_stribeck", "xl330_load")
FIT_KP, TEST_KP = (100, 200), 400
# The published identification (Rhoban bam) on the four kp = 400 logs, and its optimiser budget.
PUBLISHED = {"coulomb_viscous_mae": 0.0631, "richest_mae": 0.0266, "cmaes_trials": 100_000,
             "s_per_trial": 0.08}
RESULTS = Path(__file__).resolve().parent / "results"


def held_out(twin: Twin, logs) -> tuple[dict, list]:
    scores = evaluate_recordings(twin, logs)
    for row in scores["files"]:
        row["file"] = Path(row["file"]).name
    return scores["overall"], scores["files"]


def parameter_table(twin: Twin) -> tuple[dict, np.ndarray, dict]:
    """Posterior mean, 90 % interval, contraction against the prior, strongly correlated pairs; and the
    prior (4000, P) and posterior {name: (4000,)} draws behind them."""
    post = twin.posterior
    prior_z = twin.model.sample_prior(jax.random.PRNGKey(1), 4000)
    prior = np.asarray(jax.vmap(twin.model.constrain)(prior_z))
    idx = post.resample(np.random.default_rng(0), 4000)
    draws = {n: post.values[idx, i] for i, n in enumerate(post.names)}
    return identification_table(post.names, prior, draws, post.summary()), prior, draws


def plot_predictions(config: str, twin: Twin, logs, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(logs), 1, figsize=(10, 2.4 * len(logs)), squeeze=False)
    for ax, tr in zip(axes[:, 0], logs):
        b = twin.predict(tr.q[0], tr.qd[0], tr.ctrl[:-1], quantiles=(0.05, 0.25, 0.75, 0.95),
                         settings=tr.settings, key=jax.random.PRNGKey(0))
        t = tr.t[1:] - tr.t[0]
        ax.fill_between(t, b.q[0, :, 0], b.q[3, :, 0], color="C0", alpha=0.2, label="90 % band")
        ax.fill_between(t, b.q[1, :, 0], b.q[2, :, 0], color="C0", alpha=0.35, label="50 % band")
        ax.plot(t, b.mean_q[:, 0], "C0", lw=1, label="posterior mean")
        ax.plot(t, tr.q[1:, 0], "k", lw=0.8, label="measured")
        goal = np.where(tr.ctrl[:-1, 0] >= SERVO_TORQUE_OFF, np.nan, tr.ctrl[:-1, 0])   # gap: torque off
        ax.plot(t, goal, "C3--", lw=0.6, label="goal")
        ax.set_title(f"{config}: {Path(tr.source).name} (kp = {tr.settings['servo_kp']:.0f})", fontsize=9)
        ax.set_ylabel("q (rad)")
    axes[0, 0].legend(fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("t (s)")
    fig.tight_layout()
    path = out / f"xl330_real_{config}_predictions.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_posteriors(config: str, names, prior: np.ndarray, draws: dict, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for ax, (i, n) in zip(axes.ravel(), enumerate(names)):
        lo, hi = np.quantile(np.concatenate([prior[:, i], draws[n]]), [0.005, 0.995])
        bins = np.linspace(lo, hi, 50)
        ax.hist(prior[:, i], bins, density=True, color="0.7", label="prior")
        ax.hist(draws[n], bins, density=True, color="C0", alpha=0.8, label="posterior")
        ax.set_title(n, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path = out / f"xl330_real_{config}_posterior.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def study(config: str, fit_logs, test_logs, adam_steps: int, out: Path) -> dict:
    twin = Twin(load_config(config))
    fit = whole_log.fit_twin(twin, fit_logs, adam_steps=adam_steps)
    if fit["refused"]:
        raise SystemExit(f"{config}: fit refused: {fit['refused'][0]}: {fit['refused'][1]}")
    model_error, twin.model_error = twin.model_error, None
    without, _ = held_out(twin, test_logs)                # parameter uncertainty and sensor noise only
    twin.model_error = model_error
    summary, per_log = held_out(twin, test_logs)
    summary["without_model_error"] = without
    save_posterior(twin, out / f"xl330_real_{config}_fit")    # for `twin-bayes evaluate --posterior`
    params, prior, draws = parameter_table(twin)
    plots = [plot_predictions(config, twin, test_logs, out),
             plot_posteriors(config, twin.model.names, prior, draws, out)]
    return {"fit": fit, "held_out": summary, "per_log": per_log, **params, "plots": plots}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CLASSES))
    ap.add_argument("--adam-steps", type=int, default=50, help="Adam steps before the Newton polish")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    fit_paths = [p for kp in FIT_KP for p in bam_logs(kp=kp)]
    test_paths = bam_logs(kp=TEST_KP)
    if not fit_paths or not test_paths:
        print("no XL330 logs found (../shared/data/bam_xl330 or $TWIN_BAYES_DATA/bam_xl330)", file=sys.stderr)
        return 2
    fit_logs = [read_trajectory(p) for p in fit_paths]
    test_logs = [read_trajectory(p) for p in test_paths]
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", "experiments/xl330_real.py", *(argv or sys.argv[1:])])
    for config in args.configs:
        result = study(config, fit_logs, test_logs, args.adam_steps, args.out)
        result["command"] = command
        (args.out / f"xl330_real_{config}.json").write_text(json.dumps(result, indent=2, default=float))
        h = result["held_out"]
        print(f"{config:16s} MAE {h['mae_q']:.4f} rad  cov50 {h['coverage50']:.2f}  cov90 {h['coverage90']:.2f}  "
              f"(without model error {h['without_model_error']['coverage90']:.2f})  "
              f"fit {result['fit']['wall_time_s']:.0f} s", flush=True)
    # The table gathers every class studied so far (classes may run as separate processes).
    classes = {p.stem.removeprefix("xl330_real_"): json.loads(p.read_text())
               for p in sorted(args.out.glob("xl330_real_*.json"))}
    report = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__},
              "fit_logs": [p.name for p in fit_paths], "test_logs": [p.name for p in test_paths],
              "published": PUBLISHED, "classes": classes}
    path = args.out / "xl330_real.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
