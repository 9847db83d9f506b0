"""Short versions of the sim-to-real experiments on the small robots (0.3 s tasks, few particles and steps).

The real robot is native MuJoCo under a hidden truth the twin and the policy
optimiser never see; the twin is fitted on one window of emulated telemetry.
The full runs are `experiments/policy_arm2.py`, `policy_servo.py`, `readapt.py`. The servo's
real robot is the shipped MJCF (friction loss in MuJoCo's solver), its twin the smooth-friction
`servo_twin_config`.
"""
import json

import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.inference import Twin
from twin_bayes.models import TwinModel
from twin_bayes.policy import experiment
from twin_bayes.policy.controller import initial_policy
from twin_bayes.policy.optimize import Settings, optimize
from twin_bayes.policy.tasks import ARM2_TRUTHS, SERVO_TRUTHS, arm2_task, servo_task, servo_twin_config
from twin_bayes.sim import load_robot

SHORT = {"particles": 32, "window_s": 0.5, "mcmc_steps": 5}  # the inference tests' small arm2 twin
ARM2_SETTINGS = Settings(learning_rate=0.2, clip=5.0)
SERVO_SETTINGS = Settings(learning_rate=0.05, clip=5.0)


def small(cfg):
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update=SHORT)})
    return cfg, TwinModel(cfg)


@pytest.fixture(scope="module")
def arm2():
    cfg, model = small(load_config("arm2"))
    task = arm2_task(model.robot, seconds=0.3, knots=5, scale=0.3)
    return cfg, model, task


@pytest.fixture(scope="module")
def arm2_result(arm2):
    cfg, model, task = arm2
    return experiment.compare(lambda: Twin(cfg, model), task, initial_policy(task), ARM2_TRUTHS[2:3], [1],
                              fit_windows=1, train_particles=4, nominal_steps=150, adapt_steps=20,
                              settings=ARM2_SETTINGS, real_seeds=2)


@pytest.fixture(scope="module")
def servo_result():
    """The hidden servo with the weakest motor and most friction; a swing of 0.3 s (0 → 1.3 rad)."""
    cfg, model = small(servo_twin_config())
    task = servo_task(model.robot, seconds=0.3, knots=5)
    return experiment.compare(lambda: Twin(cfg, model), task, initial_policy(task, task.q_ref), SERVO_TRUTHS[2:3],
                              [1], fit_windows=1, train_particles=4, nominal_steps=100, adapt_steps=20,
                              settings=SERVO_SETTINGS, real_seeds=2, real_robot=load_robot("servo_pendulum"))


def check_result(result):
    json.dumps(result)  # the experiment's JSON output
    run, = result["runs"]
    assert all(run["updates_accepted"])
    for name, s in run["policies"].items():
        assert np.all(np.isfinite(s["real"])) and len(s["real"]) == 2, name
        assert s["predicted_q05"] <= s["predicted_mean"] <= s["predicted_q95"], name
    return run["policies"]


@pytest.mark.slow   # fits, trains and runs the arm2 comparison: 2-3 minutes on a cold cache
def test_arm2_posterior_policy_beats_nominal_on_the_real_arm(arm2_result):
    scores = check_result(arm2_result)
    print({k: (v["real_mean"], v["predicted_q05"], v["predicted_q95"]) for k, v in scores.items()})
    assert scores["posterior"]["real_mean"] < 0.5 * scores["nominal"]["real_mean"]
    # the fitted twin predicts the posterior policy's real cost to within 10 %
    post = scores["posterior"]
    assert abs(post["real_mean"] - post["predicted_mean"]) < 0.1 * post["real_mean"]
    # the nominal optimiser expected far less than the real arm with its payload gives
    assert scores["nominal"]["expected_by_its_optimiser"] < scores["nominal"]["real_mean"]


@pytest.mark.slow   # compiles the servo twin and its closed loop: 3-8 minutes on a cold cache
def test_servo_posterior_policy_beats_nominal_on_the_real_servo(servo_result):
    scores = check_result(servo_result)
    print({k: (v["real_mean"], v["predicted_q05"], v["predicted_q95"]) for k, v in scores.items()})
    assert scores["posterior"]["real_mean"] < 0.5 * min(scores["nominal"]["real_mean"],
                                                        scores["uniform_dr"]["real_mean"])
    # the smooth-friction twin predicts the posterior policy's cost on the real servo to within 20 %
    post = scores["posterior"]
    assert abs(post["real_mean"] - post["predicted_mean"]) < 0.2 * post["real_mean"]
    assert scores["nominal"]["expected_by_its_optimiser"] < scores["nominal"]["real_mean"]


def test_readaptation_recovers_after_the_payload_grows(arm2):
    cfg, model, task = arm2
    twin = Twin(cfg, model)
    truth = ARM2_TRUTHS[1]
    experiment.fit_twin(twin, truth, seed=1, windows=1)
    start, _ = optimize(model.robot, experiment.posterior_draws(twin, 4)[0], initial_policy(task), task, 150,
                        ARM2_SETTINGS)
    result = experiment.readapt(twin, task, start, truth, {"body_mass:forearm": 1.3}, episodes=5, change_at=2,
                                adapt_steps=10, train_particles=4, settings=ARM2_SETTINGS, seed=1)
    rows = result["rows"]
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    assert result["cost_increase"] > 0
    assert rows[-1]["posterior_mean"]["body_mass:forearm"] > 1.1 * rows[0]["posterior_mean"]["body_mass:forearm"]
    assert max(result["recovered_fraction"][-2:]) >= 0.5
