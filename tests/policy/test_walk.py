"""The humanoid walking controller (`policy.walk`), its trainer (`policy.ars`), its file and its CLI.

The real humanoid of these tests is native MuJoCo under a truth file; `policy run`'s figures are
checked against an independent replay of the recorded commands through `sim.native.NativeRobot`
(mj_step, its own latency), not against the batched simulator that produced them.
"""
import json
from pathlib import Path

import mujoco
import numpy as np
import pytest

from twin_bayes import cli
from twin_bayes.policy import ars, walk
from twin_bayes.sim import load_robot
from twin_bayes.sim.native import NativeRobot

TRUTHS = Path(walk.__file__).resolve().parents[1] / "robots" / "humanoid" / "truths"


@pytest.fixture(scope="module")
def robot():
    return load_robot("humanoid")


@pytest.fixture(scope="module")
def prior(robot):
    return walk.designed_gait()


def test_ars_update_is_the_v1t_step():
    """Two directions, the better one kept: theta moves by alpha / (b·sigma) · (r+ − r−)·delta."""
    settings = ars.Settings(directions=2, top=1, step_size=0.1, noise=0.5)
    theta, delta = np.array([1.0, -1.0]), np.array([[1.0, 0.0], [0.0, 1.0]])
    returns = np.array([3.0, 0.5, 1.0, 0.4])        # r+ (2,), then r− (2,)
    sigma = np.std([3.0, 1.0])
    np.testing.assert_allclose(ars.ars_update(theta, delta, returns, settings),
                               theta + 0.1 / sigma * (3.0 - 1.0) * delta[0])


def test_ars_climbs_a_quadratic():
    """ARS on r(theta) = −|theta − 1|² (20 parameters) closes most of the distance in 200 iterations."""
    settings = ars.Settings(directions=8, top=4, step_size=0.1, noise=0.1)
    theta = np.zeros(20)
    for it in range(200):
        delta, candidates = ars.perturbations(theta, np.random.default_rng(it), settings)
        theta = ars.ars_update(theta, delta, -((candidates - 1.0) ** 2).sum(axis=1), settings)
    assert np.linalg.norm(theta - 1.0) < 0.2 * np.linalg.norm(np.ones(20))


def test_returns_are_fixed_by_the_seed(robot, prior):
    a = walk.simulate(robot, [robot.mj_model] * 3, prior.controller(robot, 3), 0.6, [1, 1, 2])
    b = walk.simulate(robot, [robot.mj_model] * 3, prior.controller(robot, 3), 0.6, [1, 1, 2])
    np.testing.assert_array_equal(a.reward, b.reward)
    assert a.reward[0] == a.reward[1] != a.reward[2]      # the sensor noise follows the seed
    assert a.steps == 3 * 200


def _rot(quat):
    out = np.zeros(9)
    mujoco.mju_quat2Mat(out, quat)
    return out.reshape(3, 3)


def test_the_balance_law(robot, prior):
    """At a tilted, moving state, right leg standing: the commands are SIMBICON's law, computed here from
    MuJoCo's own kinematics (mj_forward's centre of mass, the pelvis frame, the quaternion's matrix): the two
    hips' pitch and roll torques on the pelvis sum to the torso's PD torque; the swing hip tracks the foot
    placement φ = swing_flex + cd·(c − p) + cv·v (sagittal) less the pelvis's pitch; the knees their targets."""
    m, d = robot.mj_model, mujoco.MjData(robot.mj_model)
    body = walk.Body.of(robot)
    rng = np.random.default_rng(0)
    q = walk.start_state(robot)[0]
    q[body.qadr] = body.stand + rng.normal(0, 0.05, robot.nu)
    tilt = np.array([np.cos(0.05), 0.02, np.sin(0.05), 0.0])                # pitched forward, a little roll
    q[3:7] = tilt / np.linalg.norm(tilt)
    qd = rng.normal(0, 0.2, robot.nv)
    gains = np.array([n.endswith(("_kp", "_kd")) for n in walk.NAMES])
    values = np.where(gains, 0.2 * prior.values, prior.values)          # soft enough that nothing saturates
    p = dict(zip(walk.NAMES, values))
    u = walk.commands(body, values[None], np.array([0]), np.array([0.05]), q[None], qd[None])[0]
    assert np.abs(u).max() < 0.4                                           # no command clipped
    tau = u * body.gear
    d.qpos[:] = q
    mujoco.mj_forward(m, d)
    rot, pelvis = _rot(q[3:7]), d.xmat[m.body("pelvis").id].reshape(3, 3)
    omega = rot @ qd[3:6]
    pitch, roll = np.arctan2(rot[0, 2], rot[2, 2]), -np.arctan2(rot[1, 2], rot[2, 2])
    torso_y = p["torso_kp"] * (p["lean"] - pitch) - p["torso_kd"] * omega[1]
    torso_x = p["torso_kp"] * -roll - p["torso_kd"] * omega[0]
    (r_x, _, r_y, r_knee), (l_x, _, l_y, l_knee) = body.leg_act
    assert tau[r_y] + tau[l_y] == pytest.approx(-torso_y, abs=1e-9)      # hip y axes: +y on both legs
    assert tau[r_x] - tau[l_x] == pytest.approx(-torso_x, abs=1e-9)      # hip x axes: +x right, −x left
    foot = d.xpos[m.body("right_foot").id]
    flex = p["swing_flex"] + p["cd"] * (d.subtree_com[0][0] - foot[0]) + p["cv"] * qd[0]
    target = -flex - np.arctan2(pelvis[0, 2], pelvis[2, 2])
    j = body.leg_act[1, 2]
    assert tau[l_y] == pytest.approx(p["swing_kp"] * (target - q[body.qadr[j]]) - p["swing_kd"] * qd[body.dofadr[j]])
    for k, goal in ((l_knee, p["swing_knee"]), (r_knee, p["stance_knee"])):   # lifting: 0.05 s into the step
        assert tau[k] == pytest.approx(p["knee_kp"] * (goal - q[body.qadr[k]]) - p["knee_kd"] * qd[body.dofadr[k]])


def test_a_short_training_run_improves_the_return(robot, prior):
    """20 ARS iterations (8 directions, 4 s episodes) on the nominal model: the mean return of 32 held-out
    episodes (command latency 0-8 ms) rises by at least 2 (the designed gait runs at 1.5 m/s, the reward
    pays most at 0.8, and 4 of 32 fall). Measured from 10.91: 13.71, 13.98, 14.26, 14.40 for training
    seeds 0-3."""
    def held_out(policy):
        out = walk.simulate(robot, [robot.mj_model] * 32, policy.controller(robot, 32), 4.0, range(100, 132),
                            latency_s=np.linspace(0.0, 0.008, 32))
        return out.reward.mean()
    trained, history = walk.train(robot, [robot.mj_model], prior, 20, 4.0, 0,
                                  ars.Settings(directions=8, top=4, step_size=0.1, noise=0.3))
    assert len(history) == 20
    assert held_out(trained) > held_out(prior) + 2.0


def test_training_episodes_run_at_their_models_latency(robot, prior):
    """A training distribution is models with latencies: the trainer's episodes equal `simulate`'s at the
    drawn model's latency (one iteration, two models of different latency, the returns recomputed)."""
    settings = ars.Settings(directions=2, top=1, step_size=0.1, noise=0.3)
    logged = []
    walk.train(robot, [robot.mj_model] * 2, prior, 1, 0.3, 5, settings, [0.0, 0.006], log=logged.append)
    rng = np.random.default_rng([5, 0])
    _, candidates = ars.perturbations(prior.flat(), rng, settings)
    pick = np.tile(rng.integers(2, size=2), 2)
    seeds = np.tile(rng.integers(2 ** 31, size=2), 2)
    candidates = walk.Gait(walk.Body.of(robot), walk.bounded(candidates * walk.SCALES))
    again = walk.simulate(robot, [robot.mj_model] * 4, candidates, 0.3, seeds, np.array([0.0, 0.006])[pick])
    assert logged[0]["mean_return"] == pytest.approx(again.reward.mean(), abs=1e-12)
    unlagged = walk.simulate(robot, [robot.mj_model] * 4, candidates, 0.3, seeds)
    assert (pick == 1).any() and unlagged.reward.mean() != again.reward.mean()


def test_the_file_round_trips_and_bad_files_are_refused(tmp_path, prior):
    path = walk.save(prior, tmp_path / "w.json", "humanoid", {"trained_on": "nothing"})
    back = walk.load(path, "humanoid")
    np.testing.assert_array_equal(back.values, prior.values)
    with pytest.raises(ValueError, match="robot 'humanoid', not 'arm2'"):
        walk.load(path, "arm2")
    doc = json.loads(path.read_text())
    params = doc["parameters"]
    bad = {"version": {**doc, "version": 1}, "format": {**doc, "format": "other"},
           "nan": {**doc, "parameters": {**params, "lean": float("nan")}},
           "text": {**doc, "parameters": {**params, "lean": "forward"}},
           "unknown": {**doc, "parameters": {**params, "gait_hz": 1.5}},
           "missing": {**doc, "parameters": {k: v for k, v in params.items() if k != "cd"}},
           "steps": {**doc, "control_steps": 3}}
    for name, content in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError):
            walk.load(tmp_path / name, "humanoid")
    (tmp_path / "cut").write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match="not a readable walking controller"):
        walk.load(tmp_path / "cut", "humanoid")


def test_policy_run_prints_figures_that_native_mujoco_reproduces(tmp_path, robot, prior, capsys):
    """`policy run --json` on a truth with 6 ms latency; the recorded commands replayed through NativeRobot
    (mj_step, `delay_commands`) give the same torso displacement and energy Σ|τ·q̇|·dt."""
    path = walk.save(prior, tmp_path / "w.json", "humanoid")
    truth_file = TRUTHS / "slow_commands.toml"
    argv = ["policy", "run", "--policy", str(path), "--robot", "humanoid", "--truth", str(truth_file),
            "--seconds", "0.6", "--seed", "3", "--json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"distance_m", "falls", "mean_speed_m_s", "energy_j", "tracking_cost"} <= set(printed)
    truth, noise = walk.read_truth(truth_file, robot)
    run = walk.real_run(robot, truth, prior, 0.6, 3, noise)     # the commands it sent
    native = NativeRobot(robot, truth, run.qpos[0, 0], np.zeros(robot.nv))
    x0, energy, dof = native.data.qpos[0], 0.0, robot.layout.act_dofadr
    for u in run.sent[0]:
        native.step(u[None])
        energy += np.abs(native.data.qfrc_actuator[dof] * native.data.qvel[dof]).sum() * robot.dt
    assert printed["falls"] == 0 and printed["seconds"] == pytest.approx(0.6)
    assert printed["distance_m"] == pytest.approx(native.data.qpos[0] - x0, abs=1e-9)
    assert printed["mean_speed_m_s"] == pytest.approx(printed["distance_m"] / 0.6)
    assert printed["energy_j"] == pytest.approx(energy, rel=1e-9)
    assert printed["tracking_cost"] > 0
    with pytest.raises(ValueError, match="not 'arm2'"):
        walk.load(path, "arm2")
    assert cli.main(["policy", "run", "--policy", str(path), "--robot", "arm2", "--seconds", "0.1"]) != 0


def test_a_fall_ends_the_episode(robot, prior):
    """Standing still under PD alone, the humanoid topples: the run ends when the torso is below FALL_HEIGHT."""
    still = prior.with_flat(np.zeros_like(prior.flat()))
    run = walk.real_run(robot, robot.nominal(), still, 3.0, 0)
    assert run.fell[0] and run.seconds[0] < 3.0
    height = run.qpos[0, :, 2][~np.isnan(run.qpos[0, :, 2])]
    assert height[-walk.CONTROL_STEPS:].min() < walk.FALL_HEIGHT <= height[:-walk.CONTROL_STEPS].min()
    assert run.seconds[0] == pytest.approx((len(height) - 1) * robot.dt)


def test_telemetry_is_the_recorded_run_plus_seeded_sensor_noise_and_stops_at_a_fall(robot, prior):
    """`walk.telemetry`: the recorded run's states plus sensor noise of the given sd (its sample sd within 10 %),
    the same for the same seed; each sample's command the last one sent before it (the last sample's, the
    last sent); after a fall, only the states before it."""
    run = walk.real_run(robot, robot.nominal(), prior, 0.3, 2, (0.002, 0.02))
    q, qd, ctrl = walk.telemetry(robot, robot.nominal(), prior, 0.3, 2, (0.002, 0.02))
    assert len(q) == len(qd) == len(ctrl) == run.qpos.shape[1] == run.sent.shape[1] + 1
    assert np.std(q - run.qpos[0]) == pytest.approx(0.002, rel=0.1)
    assert np.std(qd - run.qvel[0]) == pytest.approx(0.02, rel=0.1)
    np.testing.assert_array_equal(ctrl[:-1], run.sent[0])
    np.testing.assert_array_equal(ctrl[-1], run.sent[0, -1])
    np.testing.assert_array_equal(q, walk.telemetry(robot, robot.nominal(), prior, 0.3, 2, (0.002, 0.02))[0])
    still = prior.with_flat(np.zeros_like(prior.flat()))
    fall = walk.real_run(robot, robot.nominal(), still, 3.0, 0)
    q, _, ctrl = walk.telemetry(robot, robot.nominal(), still, 3.0, 0)
    assert len(q) == len(ctrl) == np.sum(~np.isnan(fall.qpos[0, :, 0])) and np.all(np.isfinite(q))


def test_policy_predict_gives_intervals_from_a_posterior(tmp_path, prior, capsys):
    """`policy predict` from a saved `humanoid` twin (its prior particles, no update: nothing compiles the
    contact model; its config read from the saved summary): each figure's 5 % <= mean <= 95 %, over the
    requested draws."""
    from twin_bayes.inference import Twin
    from twin_bayes.inference.store import save_posterior
    posterior = save_posterior(Twin.from_config("humanoid"), tmp_path / "fit")
    path = walk.save(prior, tmp_path / "w.json", "humanoid")
    argv = ["policy", "predict", "--policy", str(path), "--posterior", str(posterior), "--draws", "4",
            "--seconds", "0.3", "--seed", "2", "--json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["draws"] == 4 and printed["level"] == 0.9
    for figure in ("distance_m", "falls", "mean_speed_m_s", "energy_j", "tracking_cost"):
        assert printed[figure]["q05"] <= printed[figure]["mean"] <= printed[figure]["q95"]
    assert printed["energy_j"]["q05"] > 0
