"""The Panda's published identification as the peer: scored by the twin's multiple-shooting evaluation.

The published model (Gaz et al., RA-L 2019: the inertials of `twin_bayes/robots/panda/panda.xml` and
their sigmoid joint friction, i.e. the `panda` robot's nominal parameters) simulated in native
MuJoCo at 1 ms from the measured state every 0.1 s under the measured torques, scored by
`twin_bayes.diagnostics.shooting.evaluate`, the code that scores the identified twin
(`experiments/panda_real.py`), on the same resampled log: the held-out 10–14 s, the fit span 0–10 s
and the whole 0–14 s (the last is the figure of the data's README: 0.0211 rad). Also scored: the
published model with the model error (`inference.discrepancy`) learned from its own 0–10 s
residuals, so that its bands can be compared with the twin's.

    .venv/bin/python benchmarks/panda.py          # ~1 min -> benchmarks/results/panda.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import command, machine
from twin_bayes.data.panda import between, panda_log, read_panda
from twin_bayes.diagnostics import shooting
from twin_bayes.inference.discrepancy import fit_model_error
from twin_bayes.sim import load_robot

RESULTS = Path(__file__).resolve().parent / "results"
SPANS = {"held_out_10_14s": (10.0, 14.0), "fit_0_10s": (0.0, 10.0), "whole_0_14s": (0.0, 14.0)}
HORIZON_S = 0.1


def main() -> int:
    path = panda_log()
    if path is None:
        print("no Panda log found (../shared/data/franka_panda or $TWIN_BAYES_DATA/franka_panda)", file=sys.stderr)
        return 2
    robot = load_robot("panda")
    steps = shooting.horizon_steps(HORIZON_S, robot.dt)
    traj = read_panda(path, robot.dt)
    published = np.asarray(robot.to_vector(robot.nominal()))[None]
    point = shooting.native_predictor(robot, published)
    scores = {span: shooting.evaluate(point, between(traj, *bounds), steps) for span, bounds in SPANS.items()}
    fit_q0, fit_qd0, fit_u, observed = shooting.cut(between(traj, *SPANS["fit_0_10s"]), steps)
    resid = np.stack([point(a, b, c, {})[1] for a, b, c in zip(fit_q0, fit_qd0, fit_u)]) - observed
    model_error = fit_model_error(resid, np.ones(resid.shape[:2]), np.ones((len(resid), 1)), robot.dt)
    banded = shooting.native_predictor(robot, np.repeat(published, 32, axis=0), model_error)
    scores["held_out_10_14s_with_model_error"] = shooting.evaluate(banded, between(traj, *SPANS["held_out_10_14s"]),
                                                                   steps)
    out = {"benchmark": "panda", "command": command(), "machine": machine(), "horizon_s": HORIZON_S,
           "peer": "published identification (Gaz et al., RA-L 2019): inertials and sigmoid friction",
           "model_error_of_published": model_error.as_dict(), "scores": scores}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "panda.json").write_text(json.dumps(out, indent=2, default=float))
    for span, s in scores.items():
        cov = "" if s["coverage90_all"] is None else f"  cov90 {s['coverage90_all']:.2f}"
        print(f"{span:34s} rmse end {s['rmse_end_all']:.4f} rad  {np.round(s['rmse_end'], 4).tolist()}{cov}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
