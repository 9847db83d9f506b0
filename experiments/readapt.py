"""Adaptation in the loop on arm2: the payload grows 30 % midway; the twin follows and the policy re-adapts.

    .venv/bin/python experiments/readapt.py            # 10 episodes, change before episode 4
    .venv/bin/python experiments/readapt.py --quick    # 6 episodes, change before episode 3

Each episode is one 1 s run of the tracking task on the real (native MuJoCo)
arm; its closed-loop telemetry is one twin window. Writes
experiments/results/readapt[_quick].json and .png.
"""
import json
from pathlib import Path

from twin_bayes.config import load_config
from twin_bayes.inference import Twin
from twin_bayes.policy import experiment
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.optimize import Settings, optimize
from twin_bayes.policy.tasks import ARM2_TRUTHS, arm2_task

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = Settings(learning_rate=0.2, clip=5.0)


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    quick = args.quick
    twin = Twin.from_config(load_config("arm2"))
    robot = twin.model.robot
    task = arm2_task(robot)
    truth = ARM2_TRUTHS[1]
    nominal, _ = optimize(robot, experiment.nominal_thetas(twin.model), initial_policy(task), task, 150, SETTINGS)
    experiment.fit_twin(twin, truth, seed=1, windows=2)
    start, _ = optimize(robot, experiment.posterior_draws(twin, 8)[0], nominal, task, 40, SETTINGS)
    episodes, change_at = (6, 3) if quick else (10, 4)
    result = experiment.readapt(twin, task, start, truth, {"body_mass:forearm": 1.3}, episodes, change_at,
                                adapt_steps=10, settings=SETTINGS, seed=1)
    stem = experiment.write_result(result, "readapt" + ("_quick" if quick else ""), args.out)
    experiment.plot_readapt(result, "arm2: payload +30 % before episode "
                            f"{change_at}; twin update + re-adaptation after each episode", stem.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    return result


if __name__ == "__main__":
    main()
