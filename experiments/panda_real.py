"""The real Franka Emika Panda: identify the reduced Panda twin on 0–10 s of the log, score 10–14 s
restarted from the measured state every 0.1 s, against the published identification.

    .venv/bin/python experiments/panda_real.py                 # ~10 min on 2 shared cores
    .venv/bin/python experiments/panda_real.py --gn-steps 2    # shorter

The fit is the evaluation's own objective (as the XL330 whole-log fit is): the 0–10 s log cut into
100 segments of 0.1 s, each simulated in native MuJoCo from its measured state under the measured
torques (the twin's `joint_torque_friction` actuator model); the position residuals at every
sample, with a per-joint sd profiled out and tempered by κ, their integrated autocorrelation time
(steps), plus the config's prior (`panda_reduced.toml`: link 6 and 7 inertials, friction, sensor
offsets). Gauss–Newton with forward-difference Jacobians from the published values, then the
Laplace approximation at the mode (working space: log for log-normal priors, the value otherwise).
The model error (`inference.discrepancy`) is learned from the mode's fit residuals. Held out: 10–14
s, scored by `twin_bayes.diagnostics.shooting` for the posterior (32 draws + model error) and the
published model, both simulated by the same native MuJoCo code. Why native MuJoCo and not the MJX
twin: docs/PANDA.md ("Simulator"). Writes experiments/results/panda_real.json and PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import mujoco
import numpy as np

from twin_bayes.config import load_config
from twin_bayes.data.panda import between, panda_log, read_panda
from twin_bayes.diagnostics import shooting
from twin_bayes.inference.discrepancy import fit_model_error
from twin_bayes.inference.whole_log import autocorrelation_time
from twin_bayes.sim import load_robot
from twin_bayes.sim.params import physical_margins

RESULTS = Path(__file__).resolve().parent / "results"
FIT_S, TEST_S, HORIZON_S = (0.0, 10.0), (10.0, 14.0), 0.1


class Prior:
    """The config's priors in working space: z = log(value) for log-normal priors, z = value otherwise
    (a truncated normal is approximated by its untruncated normal there and clipped at its bounds)."""

    def __init__(self, cfg, robot):
        self.names = list(cfg.parameters)
        nominal = robot.nominal()
        self.log = np.array([cfg.parameters[n].dist == "lognormal" for n in self.names])
        loc = np.array([cfg.parameters[n].loc if cfg.parameters[n].loc is not None else nominal[n] for n in self.names])
        self.mean = np.where(self.log, np.log(np.where(self.log, loc, 1.0)), loc)
        self.sd = np.array([cfg.parameters[n].scale for n in self.names])
        self.low = np.array([cfg.parameters[n].low if cfg.parameters[n].low is not None else -np.inf for n in self.names])
        self.high = np.array([cfg.parameters[n].high if cfg.parameters[n].high is not None else np.inf for n in self.names])

    def values(self, z: np.ndarray) -> np.ndarray:
        return np.clip(np.where(self.log, np.exp(z), z), self.low, self.high)

    def working(self, values: np.ndarray) -> np.ndarray:
        return np.where(self.log, np.log(np.maximum(values, 1e-300)), values)


class Segments:
    """A recording cut into H-step segments simulated natively from their measured states."""

    def __init__(self, robot, traj, steps: int):
        self.robot = robot
        self.q0, self.qd0, self.u, self.q = shooting.cut(traj, steps)
        self.evaluations = 0

    def predict(self, theta: dict) -> np.ndarray:
        """q (S, H, nq) of the parameters theta (one simulator evaluation: every segment)."""
        r = self.robot
        vec = r.to_vector(theta)
        m = r.model_with(vec)
        p = {k: np.asarray(v) for k, v in r.layout.actuator_params(vec).items()}
        d = mujoco.MjData(m)
        out = np.empty_like(self.q)
        tanh_phi = np.tanh(p["joint_friction_offset"] / p["joint_friction_width"])
        for k in range(len(self.q0)):
            d.qpos[:], d.qvel[:] = self.q0[k], self.qd0[k]
            for i, u in enumerate(self.u[k]):        # the joint_torque_friction model, in numpy
                v = d.qvel
                fric = p["joint_friction_coulomb"] * (np.tanh((v + p["joint_friction_offset"])
                                                              / p["joint_friction_width"]) - tanh_phi)
                d.ctrl[:] = u - p["torque_offset"] - fric - p["joint_friction_viscous"] * v
                mujoco.mj_step(m, d)
                out[k, i] = d.qpos
        self.evaluations += 1
        return out


def gauss_newton(prior: Prior, seg: Segments, steps: int, log=print):
    """Mode, Laplace covariance (working space), temper κ, per-joint sd and the mode's residuals."""
    def resid(z):
        return seg.predict(dict(zip(prior.names, prior.values(z)))) - seg.q

    def objective(r, z, sd, kappa):
        return 0.5 * np.sum((r / sd) ** 2) / kappa + 0.5 * np.sum(((z - prior.mean) / prior.sd) ** 2)

    z = prior.mean.copy()
    r = resid(z)
    for it in range(steps):
        sd = np.sqrt(np.mean(r ** 2, axis=(0, 1)))                     # profiled per joint
        kappa = autocorrelation_time(r, np.ones(r.shape[:2]))
        h = 1e-3 * prior.sd
        J = np.stack([(resid(z + np.eye(len(z))[i] * h[i]) - r).ravel() / h[i] for i in range(len(z))], axis=1)
        w = np.broadcast_to(1.0 / sd ** 2, r.shape).ravel()
        prec = (J.T * w) @ J / kappa + np.diag(1 / prior.sd ** 2)
        grad = (J.T * w) @ r.ravel() / kappa + (z - prior.mean) / prior.sd ** 2
        step = -np.linalg.solve(prec, grad)
        f0 = objective(r, z, sd, kappa)
        for scale in (1.0, 0.5, 0.25, 0.1):
            r_new = resid(z + scale * step)
            if objective(r_new, z + scale * step, sd, kappa) < f0:
                z, r = z + scale * step, r_new
                break
        log(f"  GN {it + 1}: objective {f0:.1f} -> {objective(r, z, sd, kappa):.1f}, step scale {scale}, "
            f"κ {kappa:.0f}, rmse end {np.sqrt(np.mean(r[:, -1] ** 2)):.4f} rad", flush=True)
    sd = np.sqrt(np.mean(r ** 2, axis=(0, 1)))
    return z, np.linalg.inv(prec), kappa, sd, r


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="panda_reduced")
    ap.add_argument("--gn-steps", type=int, default=3)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    log_path = panda_log()
    if log_path is None:
        print("no Panda log found (../shared/data/franka_panda or $TWIN_BAYES_DATA/franka_panda)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cfg = load_config(args.config)
    robot = cfg.load_robot()
    steps = shooting.horizon_steps(HORIZON_S, robot.dt)
    traj = read_panda(log_path, robot.dt)
    fit_traj, test = between(traj, *FIT_S), between(traj, *TEST_S)
    prior = Prior(cfg, robot)
    seg = Segments(robot, fit_traj, steps)
    print(f"fit: {len(seg.q0)} segments of {steps} steps, {len(prior.names)} parameters", flush=True)
    z, cov, kappa, sd, resid = gauss_newton(prior, seg, args.gn_steps)
    fit_wall = time.perf_counter() - start
    model_error = fit_model_error(resid, np.ones(resid.shape[:2]), np.ones((len(resid), 1)), robot.dt)
    rng = np.random.default_rng(0)
    zs = rng.multivariate_normal(z, cov, size=4000)
    values = prior.values(zs)
    thetas = np.stack([np.asarray(robot.to_vector(dict(zip(prior.names, v)))) for v in values[:args.draws]])
    checks = [physical_margins(robot.layout, th) for th in np.stack([np.asarray(robot.to_vector(dict(zip(prior.names, v))))
                                                       for v in values[:400]])]
    validity = {k: min(c[k] for c in checks) for k in checks[0]}
    published = np.asarray(robot.to_vector(robot.nominal()))
    predictors = {"posterior": shooting.native_predictor(robot, thetas, model_error),
                  "posterior_without_model_error": shooting.native_predictor(robot, thetas),
                  "published": shooting.native_predictor(robot, published[None])}
    scores = {k: shooting.evaluate(p, test, steps) for k, p in predictors.items()}
    prior_draws = prior.values(prior.mean + prior.sd * rng.standard_normal((4000, len(z))))
    post_sd_w, prior_sd_w = np.sqrt(np.diag(cov)), prior.sd
    corr = cov / np.outer(post_sd_w, post_sd_w)
    nominal = robot.nominal()
    table = {n: {"published": nominal[n], "mean": float(values[:, i].mean()), "sd": float(values[:, i].std()),
                 "q05": float(np.quantile(values[:, i], 0.05)), "q95": float(np.quantile(values[:, i], 0.95)),
                 "prior_q05": float(np.quantile(prior_draws[:, i], 0.05)),
                 "prior_q95": float(np.quantile(prior_draws[:, i], 0.95)),
                 "contraction": float(1 - (post_sd_w[i] / prior_sd_w[i]) ** 2)} for i, n in enumerate(prior.names)}
    pairs = [(prior.names[i], prior.names[j], float(corr[i, j])) for i in range(len(z)) for j in range(i)
             if abs(corr[i, j]) >= 0.8]
    args.out.mkdir(parents=True, exist_ok=True)
    plots = [plot_predictions(robot, test, predictors, steps, args.out),
             plot_parameters(table, corr, prior.names, args.out)]
    result = {
        "command": " ".join([".venv/bin/python", "experiments/panda_real.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "config": args.config, "fit_s": FIT_S, "test_s": TEST_S, "horizon_s": HORIZON_S,
        "fit": {"method": "native-MuJoCo multiple shooting, Gauss-Newton (forward differences) + Laplace",
                "gn_steps": args.gn_steps, "wall_time_s": fit_wall, "simulator_evaluations": seg.evaluations,
                "simulated_steps": seg.evaluations * seg.q.shape[0] * seg.q.shape[1],
                "temper_autocorrelation_steps": kappa, "residual_sd_rad": sd.tolist(),
                "model_error": model_error.as_dict()},
        "held_out": scores, "physical_validity_of_400_draws": validity,
        "identified": sorted(n for n, t in table.items() if t["contraction"] > 0.5),
        "not_identified": sorted(n for n, t in table.items() if t["contraction"] <= 0.5),
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
