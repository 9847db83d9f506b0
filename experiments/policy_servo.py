"""Servo pendulum swing at the torque limit: nominal vs uniform-DR vs posterior policies on the real servo.

    .venv/bin/python experiments/policy_servo.py            # 3 hidden truths x 1 seed (forward-mode gradients: slow)
    .venv/bin/python experiments/policy_servo.py --quick    # 1 truth x 1 seed

Writes experiments/results/policy_servo[_quick].json and .png.
"""
import json
from pathlib import Path

from twin_bayes.policy import experiment
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.optimize import Settings
from twin_bayes.policy.tasks import SERVO_TRUTHS, servo_task
from twin_bayes.sim import load_robot

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    quick = experiment.script_args(__doc__.splitlines()[0], argv)
    task = servo_task(load_robot("servo_pendulum"))
    truths, seeds = (SERVO_TRUTHS[2:3], [1]) if quick else (SERVO_TRUTHS, [1])
    result = experiment.run_compare("servo_pendulum", task, initial_policy(task, task.q_ref), truths, seeds,
                                    "policy_servo" + ("_quick" if quick else ""),
                                    "servo pendulum: swing at the torque limit", RESULTS,
                                    fit_windows=1, train_particles=4, adapt_steps=30,
                                    settings=Settings(learning_rate=0.05, clip=5.0))
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
