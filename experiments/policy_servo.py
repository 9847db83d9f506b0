"""Servo pendulum swing at the torque limit: nominal vs uniform-DR vs posterior policies on the real servo.

    .venv/bin/python experiments/policy_servo.py            # 3 hidden truths x 1 seed
    .venv/bin/python experiments/policy_servo.py --quick    # 1 truth x 1 seed

The real servo is the shipped `servo_pendulum` (native MuJoCo, Coulomb friction as the joint's
friction loss); its twin models that friction inside the actuator torque (`servo_twin_config`).

Writes experiments/results/policy_servo[_quick].json and .png.
"""
import json
from pathlib import Path

from twin_bayes.policy import experiment
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.optimize import Settings
from twin_bayes.policy.tasks import SERVO_TRUTHS, servo_task, servo_twin_config

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    quick = args.quick
    cfg = servo_twin_config()
    task = servo_task(cfg.load_robot())
    truths, seeds = (SERVO_TRUTHS[2:3], [1]) if quick else (SERVO_TRUTHS, [1])
    result = experiment.run_compare(cfg, task, initial_policy(task, task.q_ref), truths, seeds,
                                    "policy_servo" + ("_quick" if quick else ""),
                                    "servo pendulum: swing at the torque limit", args.out,
                                    fit_windows=1, train_particles=4, nominal_steps=100, adapt_steps=20,
                                    uniform_steps=100,
                                    settings=Settings(learning_rate=0.05, clip=5.0))
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
