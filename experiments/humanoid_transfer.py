"""Humanoid controller transfer: balance under a push and a squat, optimised on the twin, run on the real humanoid.

    .venv/bin/python experiments/humanoid_transfer.py            # 2 hidden truths, the push and the squat
    .venv/bin/python experiments/humanoid_transfer.py --quick    # 1 truth, the push scored, fewer optax steps

The real humanoid is native MuJoCo running the shipped `humanoid` MJCF (floating base, sphere feet on the
floor, no ankles: it balances on two points) with a hidden truth from `policy.tasks.HUMANOID_TRUTHS`
(torso mass, hip damping, foot friction). The controller (`policy.controller`) is feedforward knots, PD on
the 17 joints and a balance reflex from the torso IMU (tilt and tilt rate); the tasks (`policy.tasks`):
stand through a 0.1 s forward push of 60 N, and squat and rise in 1.2 s, both with the torso upright.

1. The nominal squat policy is optimised on the nominal twin; the real humanoid runs it, and its telemetry
   (closed loop, 3 windows of 0.3 s) is the data of a `humanoid` twin (`Twin.update`, the shipped config:
   MJX with the MJCF's converged contact solver, forward-mode sensitivities in its 5 parameters).
2. Per task, policies are optimised through a twin taking one warm-started Newton iteration per contact
   solve (`sim.load_robot(..., solver_iterations=1)`: reverse-mode gradients for the 150-odd policy
   parameters): nominal (`NOMINAL_STEPS` from the initial PD policy), uniform domain randomisation and
   the posterior (`ADAPT_STEPS` each, warm started from the nominal one, 4 particles).
3. Every policy runs on the real humanoid (3 sensor-noise seeds); the fitted twin predicts its real cost.

Writes experiments/results/humanoid_transfer[_quick].json and _push.png / _squat.png.
"""
import json
from pathlib import Path

from twin_bayes import _jax  # noqa: F401  (first: NPROC against the 2-core LAPACK deadlock, float64)
from twin_bayes.compiled import release_compiled_code  # noqa: E402
from twin_bayes.config import load_config  # noqa: E402
from twin_bayes.inference import Twin  # noqa: E402
from twin_bayes.models import TwinModel  # noqa: E402
from twin_bayes.policy import experiment  # noqa: E402
from twin_bayes.policy.controller import initial_policy  # noqa: E402
from twin_bayes.policy.optimize import Settings, optimize  # noqa: E402
from twin_bayes.policy.tasks import HUMANOID_TRUTHS, humanoid_push_task, humanoid_squat_task  # noqa: E402
from twin_bayes.sim import load_robot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"squat": Settings(learning_rate=0.01, clip=1.0), "push": Settings(learning_rate=0.02, clip=1.0)}
NOMINAL_STEPS, ADAPT_STEPS, PARTICLES = 40, 15, 4


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    quick = args.quick
    cfg = load_config("humanoid")
    model = TwinModel(cfg)
    real = load_robot("humanoid")
    policy_twin = load_robot("humanoid", solver_iterations=1)
    tasks = {"squat": humanoid_squat_task(real), "push": humanoid_push_task(real)}
    truths, seeds = (HUMANOID_TRUTHS[:1], [1]) if quick else (HUMANOID_TRUTHS, [1])
    nominal_steps, adapt_steps = (10, 5) if quick else (NOMINAL_STEPS, ADAPT_STEPS)
    nominal_th = experiment.nominal_thetas(model)
    nominal = {}
    for name, task in tasks.items():        # the quick version trains the squat only for the identification
        nominal[name], hist = optimize(policy_twin, nominal_th, initial_policy(task), task, nominal_steps,
                                      SETTINGS[name])
        experiment.log.info("%s nominal policy: objective %.4g -> %.4g", name, hist[0], hist[-1])
    # The identification telemetry: the real humanoid doing its job (the nominal squat).
    ident_task = "squat"
    result = {"identification_task": ident_task, "policy_twin_solver_iterations": 1, "identification": [],
              "tasks": {}}
    fits = {}

    def fit(truth, seed):
        key = (json.dumps(truth, sort_keys=True), seed)
        if key not in fits:
            release_compiled_code()     # one process compiles past Linux's limit on memory mappings
            twin = Twin(cfg, model)
            reports, floor = experiment.fit_closed_loop(twin, truth, seed, nominal[ident_task], tasks[ident_task],
                                                        real)
            fits[key] = twin, reports
            summary = twin.posterior.summary()
            result["identification"].append({
                "truth": truth, "seed": seed, "updates": [r.as_dict() for r in reports], "segment_floor_qd": floor,
                "posterior": {n: {**summary[n], "truth": truth.get(n), "covered": summary[n]["q05"] <= truth[n]
                                  <= summary[n]["q95"] if n in truth else None} for n in summary}})
        return fits[key]

    for name, task in tasks.items():
        if quick and name != "push":
            continue
        out = experiment.compare(lambda: Twin(cfg, model), task, initial_policy(task), truths, seeds,
                                 train_particles=PARTICLES, adapt_steps=adapt_steps, settings=SETTINGS[name],
                                 cvar_alpha=None, real_robot=real, fit=fit, nominal=nominal[name],
                                 policy_robot=policy_twin)
        out["nominal_steps"] = nominal_steps
        result["tasks"][name] = out
        stem = experiment.write_result(result, "humanoid_transfer" + ("_quick" if quick else ""), args.out)
        experiment.plot_compare(out, f"humanoid: {name}", f"{stem}_{name}.png")
    print(json.dumps({n: t["summary"] for n, t in result["tasks"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
