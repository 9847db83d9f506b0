"""Sensor fusion calibrated by the twin: the humanoid's torso tilt filter before and after calibration.

    .venv/bin/python experiments/imu_fusion.py            # 3 hidden IMU truths
    .venv/bin/python experiments/imu_fusion.py --quick    # 1 truth, the push telemetry only

The estimator is `policy.fusion`'s complementary (Mahony) filter on the gravity direction; why that one:
its docstring. The real humanoid is native MuJoCo running the shipped `humanoid` MJCF (its physics as the
twin models it) with hidden truths of its torso IMU (`torso_gyro`, `torso_accel` on the site `imu`): gyro
bias, accelerometer bias and misalignment, drawn per seed from the twin's prior (`SENSOR_PRIOR`). The IMU
reads through those sensor models (`sim.sensors`, as the emulator's readings do) with white noise
(`NOISE`), as `closed_loop.real_rollout` hands them to its estimator hook.

1. Balance reflex: augmented random search (`policy.ars`) tunes the tilt reflex (base_gain's tilt columns,
   17 × 2) of the push task on the nominal humanoid with the exact base reading; every task runs with it.
2. Telemetry: per truth the real humanoid stands, squats and is pushed (reflex on the exact reading),
   recorded as twin windows of joint states, commands and IMU readings.
3. Calibration: a humanoid twin that observes joint states and the IMU and has the filter's nine sensor
   parameters (`Twin.update`, window by window; the floating base with its contacts, so that the
   accelerometer is predicted from the torso's motion). Its posterior mean corrects the filter.
4. Gains: kp and the gate are chosen on a grid by the filter's tilt RMSE averaged over posterior draws:
   each draw's sensor model is applied to readings the twin's humanoid (native) gives on the same tasks,
   and the filter corrects them with the posterior mean; so the gains fit the calibration's remaining
   uncertainty (a low kp lets a gyro bias uncertain by σ drift the tilt by up to σ / kp, a high one lets
   the torso's accelerations through), with the truth never seen.
5. Real: fresh runs of the three tasks (other noise seeds); the filter's torso tilt RMSE against the true
   orientation before calibration (zero biases, nominal gains) and after; then the push task's real cost
   with the reflex on the exact reading, on the calibrated filter's and on the uncalibrated one's.

Writes experiments/results/imu_fusion[_quick].json and .png.
"""
import json
import time
from pathlib import Path

from twin_bayes import _jax  # noqa: F401  (first: NPROC against the 2-core LAPACK deadlock, float64)
import numpy as np  # noqa: E402

from twin_bayes.config import parse_config  # noqa: E402
from twin_bayes.data import Trajectory, trajectory_windows  # noqa: E402
from twin_bayes.inference import Twin  # noqa: E402
from twin_bayes.models import TwinModel  # noqa: E402
from twin_bayes.policy import ars, experiment, fusion  # noqa: E402
from twin_bayes.policy.closed_loop import real_rollout, run_cost  # noqa: E402
from twin_bayes.policy.controller import Policy, Task, initial_policy  # noqa: E402
from twin_bayes.policy.tasks import humanoid_push_task, humanoid_squat_task  # noqa: E402
from twin_bayes.sim import Robot, load_robot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GYRO, ACCEL = "torso_gyro", "torso_accel"
# The twin's prior of the IMU's filter parameters, from which the hidden truths are drawn: an uncalibrated
# MEMS IMU (gyro bias 0.05 rad/s ≈ 3 °/s, accelerometer bias 0.5 m/s², mounting 0.03 rad ≈ 1.7°).
SENSOR_PRIOR = {f"{kind}_{a}:{sensor}": {"dist": "normal", "loc": 0.0, "scale": scale}
                for kind, sensor, scale in (("bias", GYRO, 0.05), ("bias", ACCEL, 0.5), ("misalign", ACCEL, 0.03))
                for a in "xyz"}
NOISE = {"q": 0.002, "qd": 0.02, GYRO: 0.005, ACCEL: 0.05}        # rad, rad/s, rad/s, m/s²
NOMINAL_GAINS = {"kp": 1.0, "gate": 1.0}                             # 1/s, m/s²
KP_GRID, GATE_GRID = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0, 100.0)
REFLEX = ars.Settings(directions=16, top=8, step_size=0.3, noise=0.3)
REFLEX_ITERATIONS, DRAWS, SEEDS = 15, 16, (0, 1, 2)
UP = np.array([0.0, 0.0, 1.0])          # every task starts upright: the filter's start


def twin_config():
    """A humanoid twin of the IMU: observes joint states and the torso IMU, estimates the IMU's nine filter
    parameters and takes the physics as the MJCF's (the real humanoid's: its hidden truths are the IMU's)."""
    return parse_config({
        "name": "humanoid_imu", "robot": {"name": "humanoid"}, "parameters": SENSOR_PRIOR,
        "observation": {"channels": ["q", "qd"], "sensors": [GYRO, ACCEL],
                        "noise_scale": {"q": 0.002, "qd": 0.05, GYRO: 0.01, ACCEL: 0.1}},
        "inference": {"particles": 16, "window_s": 0.3, "segment_steps": 10}})


def sensor_truth(model: TwinModel, seed: int) -> dict[str, float]:
    """A hidden IMU truth: the sensor parameters drawn from the twin's prior (seeded)."""
    rng = np.random.default_rng(seed)
    nominal = model.robot.nominal()
    return {n: float(model.cfg.parameters[n].draw(nominal[n], rng)) for n in SENSOR_PRIOR}


def reflex(robot: Robot, task: Task, seed: int, iterations: int) -> tuple[Policy, list[float]]:
    """The initial policy with a tilt reflex (base_gain's tilt columns; its rate columns 0) tuned by ARS on
    the nominal humanoid (exact reading) for `task`: the policy and the real cost after each iteration.

    Tilt only: a rate reflex at the gains ARS finds turns unstable when it acts on an IMU sample one control
    step old, as the filter's is; a tilt reflex does not notice that step."""
    policy, truth = initial_policy(task), robot.nominal()
    shape, rng = (policy.base_gain.shape[0], 2), np.random.default_rng(seed)
    zero = np.zeros(shape)
    with_gain = lambda th: policy._replace(base_gain=np.concatenate([th.reshape(shape), zero], 1))  # noqa: E731
    cost = lambda th: run_cost(real_rollout(robot, truth, with_gain(th), task, seed=seed), task)  # noqa: E731
    theta, history = np.zeros(np.prod(shape)), []
    for _ in range(iterations):
        delta, candidates = ars.perturbations(theta, rng, REFLEX)
        theta = ars.ars_update(theta, delta, -np.array([cost(c) for c in candidates]), REFLEX)
        history.append(cost(theta))
    return with_gain(theta), history


def record(robot: Robot, truth: dict, policy: Policy, task: Task, seed: int, estimator=None):
    """One real run and the IMU readings its estimator hook got, (T, nsensordata): row 0 at the start state,
    row t ≥ 1 step t − 1's. Without `estimator` the reflex acts on the exact reading."""
    rows = []

    def hook(sensors, exact):
        rows.append(sensors.copy())
        return exact if estimator is None else estimator(sensors, exact)
    run = real_rollout(robot, truth, policy, task, seed=seed, noise=NOISE, estimator=hook)
    return run, np.array(rows)


def windows(robot: Robot, run, readings, samples: int) -> list[dict]:
    """A run as whole twin windows of `samples` rows cut by the shared cutter (`data.trajectory_windows`):
    row k the state before command k, the command, and the IMU's reading at that state (hook row k + 1;
    the last state's reading is never taken, so its row is left out)."""
    cols = {n: robot.layout.sensors.columns([n]) for n in (GYRO, ACCEL)}
    n = len(readings) - 1
    traj = Trajectory(t=np.arange(n) * robot.dt, q=run.q_meas[:n], qd=run.qd_meas[:n], ctrl=run.u[:n],
                      sensors={name: readings[1:, c] for name, c in cols.items()})
    return trajectory_windows([traj], samples, samples, robot.dt, final=False)


def up_axis(base: np.ndarray) -> np.ndarray:
    """The true up axis (..., 3) in the torso frame from exact base readings (..., 4) (torso not inverted)."""
    xy = base[..., :2]
    return np.concatenate([xy, np.sqrt(1.0 - np.sum(xy ** 2, -1, keepdims=True))], -1)


def tilt_rmse(robot: Robot, params: fusion.FilterParams, run, readings) -> np.ndarray:
    """The filter's torso tilt RMSE (rad) over a run, against the true up axis at each step (shape of the
    params' batch; readings (T, nsensordata) or with a batch (T, ..., nsensordata))."""
    L = robot.layout.sensors
    gyro, accel = readings[1:, ..., L.columns([GYRO])], readings[1:, ..., L.columns([ACCEL])]
    up = fusion.run(params, gyro, accel, robot.dt, UP)
    true = up_axis(run.base[:-1]).reshape((len(up),) + (1,) * (up.ndim - 2) + (3,))
    return np.sqrt(np.mean(fusion.tilt_error(up, true) ** 2, axis=0))


def tune_gains(robot: Robot, twin: Twin, policies: dict, tasks: dict, seed: int) -> dict:
    """kp and gate by the mean tilt RMSE over DRAWS posterior draws: each draw's sensor model on IMU readings
    of the twin's humanoid (its physics, zero sensor parameters, native, noise seed `seed`), filtered with
    the posterior mean's calibration. Returns the choice and the grid's scores."""
    post, mean = twin.posterior, twin.posterior.mean()
    draws = post.values[post.resample(np.random.default_rng(seed), DRAWS)]
    model_truth = robot.nominal()
    kp, gate = (g.ravel() for g in np.meshgrid(KP_GRID, GATE_GRID, indexing="ij"))
    calib = fusion.from_values(mean, GYRO, ACCEL, kp, gate)
    vecs = [robot.to_vector({**model_truth, **{n: v for n, v in zip(post.names, d) if n in SENSOR_PRIOR}})
            for d in draws]
    scores = []
    for name, task in tasks.items():
        run, raw = record(robot, model_truth, policies[name], task, seed)
        readings = np.stack([robot.layout.sensors.apply(v, raw, robot.dt) for v in vecs], 1)   # (T, D, nsd)
        scores.append(tilt_rmse(robot, calib, run, readings[:, :, None]))                       # (D, G)
    score = np.mean(scores, axis=(0, 1))
    best = int(np.argmin(score))
    grid = [{"kp": float(k), "gate": float(g), "mean_tilt_rmse": float(s)} for k, g, s in zip(kp, gate, score)]
    return {"kp": float(kp[best]), "gate": float(gate[best]), "grid": grid}


def study_truth(robot, cfg, model, policies, tasks, seed, quick) -> dict:
    """Calibrate on one hidden IMU truth and score the filter and the reflex on it."""
    imu = sensor_truth(model, seed)
    truth = {**robot.nominal(), **imu}
    twin = Twin(cfg, model)
    reports = []
    for name, task in tasks.items():
        if quick and name != "push":
            continue
        run, readings = record(robot, truth, policies[name], task, seed)
        reports += [twin.update(w) for w in windows(robot, run, readings, model.window_samples)]
        experiment.log.info("seed %d: %s telemetry in, %d windows so far", seed, name, len(reports))
    summary = twin.posterior.summary()
    gains = tune_gains(robot, twin, policies, tasks, seed + 100)
    mean = twin.posterior.mean()
    before = fusion.from_values({}, GYRO, ACCEL, **NOMINAL_GAINS)
    after = fusion.from_values(mean, GYRO, ACCEL, gains["kp"], gains["gate"])
    calibrated_nominal_gains = fusion.from_values(mean, GYRO, ACCEL, **NOMINAL_GAINS)
    tilt, traces = {}, {}
    for name, task in tasks.items():
        run, readings = record(robot, truth, policies[name], task, seed + 1000)
        tilt[name] = {label: float(tilt_rmse(robot, p, run, readings)) for label, p in
                      (("before", before), ("after", after), ("after_nominal_gains", calibrated_nominal_gains))}
        if name == "push":
            L = robot.layout.sensors
            g, a = readings[1:, L.columns([GYRO])], readings[1:, L.columns([ACCEL])]
            traces = {"true": up_axis(run.base[:-1])[:, 0].tolist(),
                      **{label: fusion.run(p, g, a, robot.dt, UP)[:, 0].tolist()
                         for label, p in (("before", before), ("after", after))}}
    overall = {label: float(np.sqrt(np.mean([t[label] ** 2 for t in tilt.values()]))) for label in tilt["push"]}
    push = tasks["push"]
    cols = robot.layout.sensors.columns([GYRO]), robot.layout.sensors.columns([ACCEL])
    cost = {"exact": run_cost(real_rollout(robot, truth, policies["push"], push, seed=seed + 2000, noise=NOISE),
                              push)}
    for label, p in (("estimated_after", after), ("estimated_before", before)):
        est = fusion.Estimator(p, *cols, robot.dt, UP)
        cost[label] = run_cost(real_rollout(robot, truth, policies["push"], push, seed=seed + 2000, noise=NOISE,
                                            estimator=est), push)
    return {
        "seed": seed, "imu_truth": imu,
        "updates": [{"accepted": r.accepted, "reason": r.reason, "ess": r.ess} for r in reports],
        "posterior": {n: {**summary[n], "truth": imu[n], "covered": summary[n]["q05"] <= imu[n] <= summary[n]["q95"]}
                      for n in SENSOR_PRIOR},
        "gains": gains, "tilt_rmse_rad": {"tasks": tilt, "all": overall,
                                          "after_over_before": overall["after"] / overall["before"]},
        "push_cost": {**cost, "estimated_over_exact": cost["estimated_after"] / cost["exact"]},
        "push_trace_tilt_x": traces,
    }


def plot(result: dict, path) -> None:
    """Tilt RMSE before/after per truth, and the push's tilt toward x (true and estimated) for the first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["truths"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(runs))
    for k, (label, colour) in enumerate((("before", "tab:red"), ("after", "tab:green"))):
        ax0.bar(x + 0.38 * (k - 0.5), [np.degrees(r["tilt_rmse_rad"]["all"][label]) for r in runs], 0.38,
                label=label, color=colour)
    ax0.set_xticks(x, [f"truth {r['seed']}" for r in runs])
    ax0.set_ylabel("torso tilt RMSE (deg)")
    ax0.set_title("filter on the real humanoid (stand, squat, push)")
    ax0.legend()
    trace = runs[0]["push_trace_tilt_x"]
    t = np.arange(1, len(trace["true"]) + 1) * result["dt"]
    for label, style in (("true", "k-"), ("before", "r--"), ("after", "g-")):
        ax1.plot(t, np.degrees(np.arcsin(trace[label])), style, label=label)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("tilt toward x (deg)")
    c = runs[0]["push_cost"]
    ax1.set_title(f"push, truth {runs[0]['seed']}: cost exact {c['exact']:.3f}, filter {c['estimated_after']:.3f}")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = experiment.script_args(__doc__.splitlines()[0], RESULTS, argv)
    started = time.time()
    robot = load_robot("humanoid")
    cfg = twin_config()
    model = TwinModel(cfg)
    tasks = {"stand": humanoid_push_task(robot, force_n=0.0), "squat": humanoid_squat_task(robot),
             "push": humanoid_push_task(robot)}
    push_policy, history = reflex(robot, tasks["push"], 0, REFLEX_ITERATIONS)
    experiment.log.info("reflex: push cost %.3g -> %.3g on the nominal humanoid", history[0], history[-1])
    policies = {n: initial_policy(t)._replace(base_gain=push_policy.base_gain) for n, t in tasks.items()}
    policies["push"] = push_policy
    seeds = SEEDS[:1] if args.quick else SEEDS
    result = {"dt": robot.dt, "noise": NOISE, "sensor_prior": SENSOR_PRIOR, "nominal_gains": NOMINAL_GAINS,
              "reflex_cost_history": history, "truths": []}
    for seed in seeds:
        result["truths"].append(study_truth(robot, cfg, model, policies, tasks, seed, args.quick))
        r = result["truths"][-1]
        experiment.log.info("seed %d: tilt RMSE %.4f -> %.4f rad; push cost exact %.4g, filter %.4g", seed,
                            r["tilt_rmse_rad"]["all"]["before"], r["tilt_rmse_rad"]["all"]["after"],
                            r["push_cost"]["exact"], r["push_cost"]["estimated_after"])
        result["summary"] = summarise(result["truths"], time.time() - started)
        stem = experiment.write_result(result, "imu_fusion" + ("_quick" if args.quick else ""), args.out)
        plot(result, f"{stem}.png")
    print(json.dumps(result["summary"], indent=1))
    return result


def summarise(runs: list[dict], wall_s: float) -> dict:
    """The figures of the truths done so far, and whether the issue's bounds hold on them."""
    return {
        "truths": len(runs),
        "tilt_rmse_before_rad": [r["tilt_rmse_rad"]["all"]["before"] for r in runs],
        "tilt_rmse_after_rad": [r["tilt_rmse_rad"]["all"]["after"] for r in runs],
        "after_at_most_a_third_of_before": all(r["tilt_rmse_rad"]["after_over_before"] <= 1 / 3 for r in runs),
        "push_cost_exact": [r["push_cost"]["exact"] for r in runs],
        "push_cost_estimated": [r["push_cost"]["estimated_after"] for r in runs],
        "push_cost_within_20_percent": all(abs(r["push_cost"]["estimated_over_exact"] - 1) <= 0.2 for r in runs),
        "wall_s": wall_s,
    }


if __name__ == "__main__":
    main()
