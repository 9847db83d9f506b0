"""arm2 tracking with an unknown payload: nominal vs uniform-DR vs posterior policies on the real arm.

    .venv/bin/python experiments/policy_arm2.py            # 3 hidden truths x 2 seeds
    .venv/bin/python experiments/policy_arm2.py --quick    # 1 truth x 1 seed

Writes experiments/results/policy_arm2[_quick].json and .png.
"""
import json
from pathlib import Path

from twin_bayes.policy import experiment
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.optimize import Settings
from twin_bayes.policy.tasks import ARM2_TRUTHS, arm2_task
from twin_bayes.sim import load_robot

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    quick = args.quick
    task = arm2_task(load_robot("arm2"))
    truths, seeds = (ARM2_TRUTHS[1:2], [1]) if quick else (ARM2_TRUTHS, [1, 2])
    result = experiment.run_compare("arm2", task, initial_policy(task), truths, seeds,
                                    "policy_arm2" + ("_quick" if quick else ""),
                                    "arm2: track a lift with an unknown payload", args.out,
                                    settings=Settings(learning_rate=0.2, clip=5.0))
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
