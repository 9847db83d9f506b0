"""The real Franka Emika Panda: identify the reduced Panda twin on 0–10 s of the log, score 10–14 s
restarted from the measured state every 0.1 s, against the published identification.

    .venv/bin/python experiments/panda_real.py                 # ~13 min on 2 shared cores
    .venv/bin/python experiments/panda_real.py --config panda --out out/panda_full   # all 105 parameters

The fit is the twin's own whole-log engine with a horizon (`twin_bayes.inference.whole_log`,
`twin-bayes fit --engine whole-log --horizon 0.1`): the 0–10 s log cut into 100 segments of 0.1 s by
the evaluation's own cutter, each simulated by the MJX twin from its measured state under the measured
torques (the `joint_torque_friction` actuator model); the position residuals at every sample with one
sd per joint profiled out, tempered by κ, their integrated autocorrelation time (steps), plus the
config's prior (`panda_reduced.toml`: link 6 and 7 inertials, friction, sensor offsets). Damped Newton
with the Gauss–Newton curvature from the prior mean (the published values; no Adam steps by default:
the start is already near the mode), then the Laplace approximation at the mode; the model error
(`inference.discrepancy`) is learned from cross-validated residuals (10 folds of 1 s, each predicted by
the mode refitted without it: `whole_log.held_out_residuals`). Held out: 10–14 s, scored by
`twin_bayes.diagnostics.shooting` for the twin's predictive (its posterior, sensor noise and model error)
and for the published model in native MuJoCo. The twin's posterior is saved for `twin-bayes evaluate
--horizon 0.1`. Writes experiments/results/panda_real.json and PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from twin_bayes import Twin
from twin_bayes.config import load_config
from twin_bayes.data.panda import between, panda_log, read_panda
from twin_bayes.diagnostics import correlations, identification_table, shooting
from twin_bayes.inference import whole_log
from twin_bayes.inference.store import save_posterior
from twin_bayes.inference.twin import constrain_all
from twin_bayes.sim.params import physical_margins

RESULTS = Path(__file__).resolve().parent / "results"
FIT_S, TEST_S, HORIZON_S = (0.0, 10.0), (10.0, 14.0), 0.1


def plot_predictions(robot, test, predictor, steps: int, out: Path, seconds: float = 1.0) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    q0, qd0, u, obs = shooting.cut(test, steps)
    n = int(round(seconds / (steps * robot.dt)))
    fig, axes = plt.subplots(7, 1, figsize=(10, 13), sharex=True)
    for k in range(n):
        draws, mean = predictor["posterior"](q0[k], qd0[k], u[k], {})
        _, pub = predictor["published"](q0[k], qd0[k], u[k], {})
        t = test.t[k * steps + 1: (k + 1) * steps + 1] - test.t[0] + TEST_S[0]
        lo, q25, q75, hi = np.quantile(draws, [0.05, 0.25, 0.75, 0.95], axis=0)
        for j, ax in enumerate(axes):
            ax.fill_between(t, lo[:, j], hi[:, j], color="C0", alpha=0.2, label="90 % band" if k == 0 else None)
            ax.fill_between(t, q25[:, j], q75[:, j], color="C0", alpha=0.35, label="50 % band" if k == 0 else None)
            ax.plot(t, mean[:, j], "C0", lw=1, label="posterior mean" if k == 0 else None)
            ax.plot(t, pub[:, j], "C3", lw=0.8, ls="--", label="published" if k == 0 else None)
            ax.plot(t, obs[k, :, j], "k", lw=0.7, label="measured" if k == 0 else None)
    for j, ax in enumerate(axes):
        ax.set_ylabel(f"q{j + 1} (rad)", fontsize=8)
    axes[0].legend(fontsize=7, ncol=5)
    axes[0].set_title(f"held out, restarted from the measured state every {steps * robot.dt:.1f} s", fontsize=9)
    axes[-1].set_xlabel("t (s)")
    fig.tight_layout()
    path = out / "panda_real_predictions.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def plot_parameters(table: dict, corr: np.ndarray, names: list[str], out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(16, 9), gridspec_kw={"width_ratios": [1, 1.1]})
    y = np.arange(len(names))
    pub = np.array([table[n]["published"] for n in names])
    scale = np.where(np.abs(pub) > 1e-9, np.abs(pub), 1.0)
    for i, n in enumerate(names):
        t = table[n]
        a.plot([t["q05"] / scale[i], t["q95"] / scale[i]], [i, i], "C0", lw=2)
        a.plot(t["mean"] / scale[i], i, "C0o", ms=3)
    a.plot(pub / scale, y, "C3|", ms=8, label="published")
    a.set_yticks(y, names, fontsize=6)
    a.set_xlabel("posterior mean and 90 % interval / |published| (published = ±1; offsets: absolute)", fontsize=8)
    a.legend(fontsize=7)
    im = b.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    b.set_xticks(y, names, rotation=90, fontsize=5)
    b.set_yticks(y, names, fontsize=5)
    b.set_title("posterior correlations", fontsize=9)
    fig.colorbar(im, ax=b, shrink=0.6)
    fig.tight_layout()
    path = out / "panda_real_parameters.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def parameter_table(twin, n: int = 4000, seed: int = 0):
    """`diagnostics.identification_table` of n draws of the Laplace posterior against n prior draws, each
    row with the published value and the posterior sd: means, sds and 90 % intervals of the values;
    contraction and correlations in the unconstrained space, where the prior is Gaussian (a log-scale
    parameter pinned far up its prior is wider there in value terms, not less identified). Returns
    the table (with the prior's 90 % interval), the correlations (P, P), the confounded pairs and the
    value draws (n, P)."""
    model, laplace = twin.model, twin.state.prior
    p, names = len(model.param_names), list(model.param_names)
    post_z = (laplace.mean + jax.random.normal(jax.random.PRNGKey(seed), (n, laplace.mean.shape[0])) @ laplace.chol.T)
    prior_z = model.sample_prior(jax.random.PRNGKey(seed + 1), n)
    post, prior = (np.asarray(constrain_all(model, z))[:, :p] for z in (post_z, prior_z))
    summary = {name: {"mean": float(post[:, i].mean()), "q05": float(np.quantile(post[:, i], 0.05)),
                      "q95": float(np.quantile(post[:, i], 0.95))} for i, name in enumerate(names)}
    unconstrained = {name: np.asarray(post_z)[:, i] for i, name in enumerate(names)}
    ident = identification_table(names, np.asarray(prior_z)[:, :p], unconstrained, summary)
    nominal = model.robot.nominal()
    table = {name: {"published": nominal[name], **row, "sd": float(post[:, i].std()),
                    "prior_q05": float(np.quantile(prior[:, i], 0.05)),
                    "prior_q95": float(np.quantile(prior[:, i], 0.95))}
             for i, (name, row) in enumerate(ident["parameters"].items())}
    return table, correlations(unconstrained)[1], ident["confounded_pairs"], post


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="panda_reduced")
    ap.add_argument("--adam-steps", type=int, default=0, help="Adam steps before the Newton polish")
    ap.add_argument("--newton-steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    log_path = panda_log()
    if log_path is None:
        print("no Panda log found (../shared/data/franka_panda or $TWIN_BAYES_DATA/franka_panda)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    twin = Twin(load_config(args.config))
    robot = twin.model.robot
    steps = shooting.horizon_steps(HORIZON_S, robot.dt)
    traj = read_panda(log_path, robot.dt)
    fit_traj, test = between(traj, *FIT_S), between(traj, *TEST_S)
    print(f"fit: {len(fit_traj.t) // steps} segments of {steps} steps, {len(twin.model.param_names)} parameters",
          flush=True)
    fit = whole_log.fit_twin(twin, [fit_traj], adam_steps=args.adam_steps, newton_steps=args.newton_steps,
                             horizon_s=HORIZON_S)
    if fit["refused"]:
        print(f"fit refused: {fit['refused'][0]}: {fit['refused'][1]}", file=sys.stderr)
        return 1
    print(f"fit: {fit['wall_time_s']:.0f} s, {fit['optimiser_steps']} Newton steps, "
          f"{fit['simulator_evaluations']} evaluations, κ {fit['temper_autocorrelation_steps']:.0f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    posterior_dir = args.out / f"panda_real_{args.config}_fit"
    save_posterior(twin, posterior_dir, engine="whole-log")      # for `twin-bayes evaluate --posterior`
    table, corr, pairs, values = parameter_table(twin)
    settings = twin.model.settings_vector(None)
    checks = [physical_margins(robot.layout, np.asarray(twin.model.theta(v, settings))) for v in values[:400]]
    published = np.asarray(robot.to_vector(robot.nominal()))
    predictors = {"posterior": shooting.twin_predictor(twin),
                  "posterior_without_model_error": shooting.twin_predictor(twin, model_error=False),
                  "published": shooting.native_predictor(robot, published[None])}
    scores = {k: shooting.evaluate(p, test, steps) for k, p in predictors.items()}
    names = list(twin.model.param_names)
    plots = [plot_predictions(robot, test, predictors, steps, args.out),
             plot_parameters(table, corr, names, args.out)]
    result = {
        "command": " ".join([".venv/bin/python", "experiments/panda_real.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "config": args.config, "fit_s": FIT_S, "test_s": TEST_S, "horizon_s": HORIZON_S,
        "fit": fit, "posterior": str(posterior_dir.relative_to(args.out)),
        "held_out": scores,
        "physical_validity_of_400_draws": {k: min(c[k] for c in checks) for k in checks[0]},
        "identified": sorted(n for n, t in table.items() if t["contraction"] > 0.5),
        "not_identified": sorted(n for n, t in table.items() if t["contraction"] <= 0.5),
        "outside_prior_90": sorted(n for n, t in table.items() if not t["prior_q05"] <= t["mean"] <= t["prior_q95"]),
        "correlated_pairs": pairs, "parameters": table, "plots": plots,
        "wall_time_s": time.perf_counter() - start,
    }
    (args.out / "panda_real.json").write_text(json.dumps(result, indent=2, default=float))
    for k, s in scores.items():
        cov = "" if s["coverage90_all"] is None else f"cov50 {s['coverage50_all']:.2f} cov90 {s['coverage90_all']:.2f} "
        print(f"{k:32s} rmse end {s['rmse_end_all']:.4f} rad  per joint {np.round(s['rmse_end'], 4).tolist()}  "
              f"{cov}crps {s['crps_all']:.4f}")
    print(f"-> {args.out / 'panda_real.json'} ({result['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
