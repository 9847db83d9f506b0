"""Multiple-shooting evaluation: restart from the measured state every horizon, score the horizon.

A recording is cut into consecutive segments of H = round(horizon / dt) steps; each is predicted
from its measured start state under its recorded commands (row k acting during step k), as a
robot's planner would use the twin. Scores, per joint: the position RMSE and MAE of the mean
prediction at each segment's end (the horizon), the coverage of the central 50 % and 90 %
predictive bands over every predicted sample (and at the horizon's end), and the fair ensemble
CRPS over every predicted sample. Any predictor (a `Twin`, or a fixed published model) is scored by
the same code: `predict(q0 (nq,), qd0 (nv,), commands (H, nu), settings) -> (draws (S, H, nq), mean (H, nq))`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from twin_bayes.diagnostics.calibration import band_coverage, crps_ensemble

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, dict], tuple[np.ndarray, np.ndarray]]


def horizon_steps(horizon_s: float, dt: float) -> int:
    steps = int(round(horizon_s / dt))
    if steps < 1 or abs(steps * dt - horizon_s) > 1e-6 * max(horizon_s, dt):
        raise ValueError(f"--horizon {horizon_s} s is not a whole number (≥ 1) of the twin's {dt} s steps")
    return steps


def cut(traj, steps: int):
    """Segment starts q0 (S, nq), qd0 (S, nv), commands (S, H, nu), observed q (S, H, nq)."""
    n = (len(traj.t) - 1) // steps
    if n < 1:
        raise ValueError(f"{traj.source}: {len(traj.t)} samples hold no segment of {steps} steps")
    starts = np.arange(n) * steps
    rows = starts[:, None] + np.arange(steps)[None, :]
    return traj.q[starts], traj.qd[starts], traj.ctrl[rows], traj.q[rows + 1]


def score(draws: np.ndarray, mean: np.ndarray, observed: np.ndarray) -> dict:
    """Scores of draws (S, D, H, nq), mean (S, H, nq) against observed (S, H, nq): per joint lists.
    A point prediction (D = 1) has no band coverage (None); its CRPS is its absolute error."""
    end = mean[:, -1] - observed[:, -1]
    per_draw = np.moveaxis(draws, 1, 0)                         # (D, S, H, nq)
    joints = range(observed.shape[-1])
    if per_draw.shape[0] < 2:      # a point prediction: no bands; its CRPS is its absolute error
        abs_err = np.abs(per_draw[0] - observed)
        return {"segments": int(observed.shape[0]), "steps": int(observed.shape[1]),
                "rmse_end": np.sqrt(np.mean(end ** 2, axis=0)).tolist(),
                "mae_end": np.mean(np.abs(end), axis=0).tolist(),
                "coverage50": None, "coverage90": None, "coverage90_end": None,
                "crps": np.mean(abs_err, axis=(0, 1)).tolist(), "rmse_end_all": float(np.sqrt(np.mean(end ** 2))),
                "coverage50_all": None, "coverage90_all": None, "crps_all": float(np.mean(abs_err))}
    return {
        "segments": int(observed.shape[0]), "steps": int(observed.shape[1]),
        "rmse_end": np.sqrt(np.mean(end ** 2, axis=0)).tolist(),
        "mae_end": np.mean(np.abs(end), axis=0).tolist(),
        "coverage50": [band_coverage(per_draw[..., j], observed[..., j], 0.5) for j in joints],
        "coverage90": [band_coverage(per_draw[..., j], observed[..., j], 0.9) for j in joints],
        "coverage90_end": [band_coverage(per_draw[:, :, -1, j], observed[:, -1, j], 0.9) for j in joints],
        "crps": np.mean(crps_ensemble(per_draw, observed), axis=(0, 1)).tolist(),
        "rmse_end_all": float(np.sqrt(np.mean(end ** 2))),
        "coverage50_all": band_coverage(per_draw, observed, 0.5),
        "coverage90_all": band_coverage(per_draw, observed, 0.9),
        "crps_all": float(np.mean(crps_ensemble(per_draw, observed))),
    }


def evaluate(predict: Predictor, traj, steps: int) -> dict:
    """Score `predict` on a recording restarted from its measured state every `steps` steps."""
    q0, qd0, commands, observed = cut(traj, steps)
    out = [predict(q0[k], qd0[k], commands[k], traj.settings) for k in range(len(q0))]
    result = score(np.stack([d for d, _ in out]), np.stack([m for _, m in out]), observed)
    return {"file": traj.source, **result}


def twin_predictor(twin, draws_per_particle: int = 8, seed: int = 0, model_error: bool = True) -> Predictor:
    """A `Twin`'s predictive (parameter uncertainty, sensor noise, its model error if learned and
    `model_error`)."""
    import jax
    key = jax.random.PRNGKey(seed)

    def predict(q0, qd0, commands, settings):
        nonlocal key
        key, sub = jax.random.split(key)
        b = twin.predict(q0, qd0, commands, settings=settings, draws_per_particle=draws_per_particle, key=sub,
                         model_error=model_error)
        return b.samples_q, b.mean_q

    return predict


def overall(per_file: list[dict]) -> dict:
    """Per-joint figures pooled over files, weighted by their segment counts."""
    w = np.array([f["segments"] for f in per_file], float)
    keys = [k for k in per_file[0] if k not in ("file", "segments", "steps")]
    out = {}
    for k in keys:
        v = np.array([f[k] for f in per_file], float)
        if k.startswith("rmse"):
            out[k] = np.sqrt(np.tensordot(w, v ** 2, 1) / w.sum()).tolist()
        else:
            out[k] = (np.tensordot(w, v, 1) / w.sum()).tolist()
    return out


def on_grid(traj, dt: float):
    """The recording as is where it is stamped every dt, else resampled onto that grid
    (`twin_bayes.data.panda.resample`: positions cubic Hermite, velocities and commands linear)."""
    steps = np.diff(traj.t)
    if np.all(np.abs(steps - dt) <= 1e-6 * dt):
        return traj
    from twin_bayes.data.panda import resample
    return resample(traj, dt)


def horizon_report(twin, trajectories, horizon_s: float) -> tuple[dict, list, list]:
    """`twin-bayes evaluate --horizon`: the JSON result, the table's rows and its columns."""
    steps = horizon_steps(horizon_s, twin.model.robot.dt)
    predict = twin_predictor(twin)
    per_file = [evaluate(predict, on_grid(tr, twin.model.robot.dt), steps) for tr in trajectories]
    pooled = overall(per_file)
    out = {"horizon_s": horizon_s, "horizon_steps": steps, "files": per_file, "overall": pooled}
    robot = twin.model.robot
    named = [sp.element for sp in robot.specs if sp.kind == "sensor_bias"]     # one per hinge/slide joint
    joints = named if len(named) == len(pooled["rmse_end"]) else [f"q[{j}]" for j in range(len(pooled["rmse_end"]))]
    out["joints"] = joints
    rows = [(j, pooled["rmse_end"][i], pooled["mae_end"][i], pooled["coverage50"][i], pooled["coverage90"][i],
             pooled["crps"][i]) for i, j in enumerate(joints)]
    rows.append(("all", pooled["rmse_end_all"], float(np.mean(pooled["mae_end"])), pooled["coverage50_all"],
                 pooled["coverage90_all"], pooled["crps_all"]))
    return out, rows, ["parameter", "RMSE end (rad)", "MAE end (rad)", "cov 50%", "cov 90%", "CRPS"]


def native_predictor(robot, thetas, model_error=None, seed: int = 0) -> Predictor:
    """Native-MuJoCo rollouts of parameter draws `thetas` (D, P) (`sim.native.NativeRobot`), plus the
    model error (`inference.discrepancy.ModelError`, its `ar1_paths` from zero at the start) when given."""
    import jax
    from twin_bayes.inference.discrepancy import ar1_paths
    from twin_bayes.sim.native import NativeRobot
    thetas = np.atleast_2d(np.asarray(thetas, np.float64))
    models = [robot.model_with(th) for th in thetas]
    key = jax.random.PRNGKey(seed)

    def predict(q0, qd0, commands, settings):
        nonlocal key
        clean = np.stack([NativeRobot(robot, th, q0, qd0, m).step(commands)[0] for th, m in zip(thetas, models)])
        draws = clean
        if model_error is not None:
            key, sub = jax.random.split(key)
            phi = float(np.exp(-robot.dt / model_error.time_const_s))
            draws = clean + np.asarray(ar1_paths(sub, model_error.sd, phi, clean.shape))
        return draws, clean.mean(0)

    return predict
