"""The Franka Emika Panda: its twin's inertial parametrisation, the log reader, the multiple-shooting
evaluation, and the study. Tests that need `../shared/data/franka_panda` skip where it is absent."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from twin_bayes.config import load_config
from twin_bayes.data import Trajectory
from twin_bayes.data.panda import between, panda_dir, panda_log, read_panda, resample
from twin_bayes.diagnostics import shooting
from twin_bayes.sim import checks, load_robot
from twin_bayes.sim.params import INERTIAL_KINDS, physical_margins

REPO = Path(__file__).resolve().parents[2]
needs_log = pytest.mark.skipif(panda_log() is None, reason="no ../shared/data/franka_panda")
_spec = importlib.util.spec_from_file_location("panda_real", REPO / "experiments" / "panda_real.py")
experiment = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiment)


def inertia_tensors(m: mujoco.MjModel) -> np.ndarray:
    out = []
    for b in range(m.nbody):
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, m.body_iquat[b])
        rot = rot.reshape(3, 3)
        out.append(rot @ np.diag(m.body_inertia[b]) @ rot.T)
    return np.array(out)


def test_cholesky_inertials_write_the_published_bodies():
    robot = load_robot("panda")
    assert robot.grad_mode == "reverse" and robot.nu == 7 and robot.dt == 0.001
    for kind in INERTIAL_KINDS + ("torque_offset", "joint_friction_coulomb", "joint_friction_offset"):
        assert f"{kind}:{'link7' if kind.startswith('inertial') else 'joint7'}" in robot.param_names
    assert "body_mass:link7" not in robot.param_names                  # one name per quantity
    m = robot.model_with(robot.nominal())
    reference = mujoco.MjModel.from_xml_path(str(robot.mjcf_path))       # MuJoCo's own compile of the MJCF
    np.testing.assert_allclose(m.body_mass, reference.body_mass, rtol=1e-12)
    np.testing.assert_allclose(m.body_ipos, reference.body_ipos, atol=1e-12)
    np.testing.assert_allclose(inertia_tensors(m), inertia_tensors(reference), atol=1e-12)
    if panda_dir() is not None:                                         # and the shared reference file's
        shared = mujoco.MjModel.from_xml_path(str(panda_dir() / "menagerie_panda_inertials.xml"))
        np.testing.assert_allclose(inertia_tensors(m), inertia_tensors(shared), atol=1e-12)
        np.testing.assert_allclose(m.body_mass, shared.body_mass, rtol=1e-12)


def test_every_draw_is_a_physical_body():
    """Draws of the panda.toml prior (the twin's own, in its unconstrained space), and draws 10 prior
    sds out, all give positive masses, positive definite inertias and the triangle inequalities."""
    import jax

    from twin_bayes.models import TwinModel
    model = TwinModel(load_config("panda"))
    p = len(model.param_names)
    draws = np.asarray(model.sample_prior(jax.random.PRNGKey(0), 50))
    centre = np.median(draws, axis=0)
    settings = model.settings_vector(None)
    for spread in (1.0, 10.0):
        for z in centre + spread * (draws - centre):
            values = model.constrain(jax.numpy.asarray(z))
            fig = physical_margins(model.robot.layout, np.asarray(model.theta(values, settings)))
            assert fig["min_mass"] > 0 and fig["min_moment"] > 0 and fig["min_triangle"] >= 0, fig
    assert p == 105


def test_panda_agrees_with_native_mujoco():
    fig = checks.agreement(load_robot("panda"), seeds=(0,))
    assert fig["max_abs_err"] < 1e-9, fig
    assert fig["motion_range_nominal"] > 0.1


def test_resampling_onto_the_twin_grid():
    t = np.array([0.0, 0.0007, 0.0021, 0.003, 0.0088, 0.01])
    q = np.sin(t)[:, None] * np.ones((1, 2))
    traj = Trajectory(t=t, q=q, qd=np.cos(t)[:, None] * np.ones((1, 2)),
                                              ctrl=t[:, None] * np.ones((1, 2)))
    r = resample(traj, 0.001)
    np.testing.assert_allclose(r.t, np.arange(11) * 0.001)
    np.testing.assert_allclose(r.q[:, 0], np.sin(r.t), atol=1e-9)       # Hermite: exact to O(h⁴)
    np.testing.assert_allclose(r.ctrl[:, 1], r.t, atol=1e-15)           # linear: exact on a line
    assert float(r.meta["max_gap_s"]) == pytest.approx(0.0058)


@needs_log
def test_published_model_scores_as_measured_by_its_authors_data_card():
    """The log resampled to 1 kHz, the published inertials and friction simulated natively, restarted
    every 0.1 s over 0–14 s: the README of the shared data gives 0.0211 rad RMS at the segment ends."""
    robot = load_robot("panda")
    traj = read_panda(panda_log())
    assert len(traj.t) == 14000 and np.allclose(np.diff(traj.t), 1e-3)
    res = shooting.evaluate(shooting.native_predictor(robot, np.asarray(robot.to_vector(robot.nominal()))[None]),
                            traj, shooting.horizon_steps(0.1, robot.dt))
    assert res["segments"] == 139
    assert res["rmse_end_all"] == pytest.approx(0.0211, abs=5e-4)
    assert res["rmse_end"][6] == pytest.approx(0.0454, abs=1e-3)
    assert between(traj, 10.0, 14.0).t[0] == pytest.approx(10.0)


def test_scores_of_a_calibrated_ensemble():
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((20, 10, 3))
    draws = rng.standard_normal((20, 400, 10, 3))
    s = shooting.score(draws, np.zeros((20, 10, 3)), obs)
    assert s["coverage90_all"] == pytest.approx(0.9, abs=0.03) and s["coverage50_all"] == pytest.approx(0.5, abs=0.04)
    assert s["rmse_end_all"] == pytest.approx(np.sqrt(np.mean(obs[:, -1] ** 2)))
    assert s["crps_all"] == pytest.approx(1 / np.sqrt(np.pi), abs=0.05)   # a standard normal's mean CRPS: 1/√π
    with pytest.raises(ValueError, match="whole number"):
        shooting.horizon_steps(0.1005, 0.001)


@needs_log
@pytest.mark.slow     # ~15 min on 2 shared cores: 20 Newton steps of 48 forward tangents through 100 segments
def test_panda_study_beats_the_published_model(tmp_path):
    subprocess.run([sys.executable, str(REPO / "experiments" / "panda_real.py"), "--out",
                    str(tmp_path)], check=True, cwd=REPO)
    res = json.loads((tmp_path / "panda_real.json").read_text())
    post, pub = res["held_out"]["posterior"], res["held_out"]["published"]
    assert post["rmse_end_all"] < pub["rmse_end_all"]
    assert 0.8 <= post["coverage90_all"] <= 0.97
    v = res["physical_validity_of_400_draws"]
    assert v["min_mass"] > 0 and v["min_moment"] > 0 and v["min_triangle"] >= 0


def test_horizon_report_restarts_a_twin_from_the_measured_state(tmp_path):
    """`evaluate --horizon`'s report on an arm2 twin (its prior) and 1 s of emulated telemetry: 10
    segments of 50 steps, joints named, and restarting every 0.1 s keeps the errors far below those
    of the whole-recording prediction."""
    from twin_bayes import Twin
    from twin_bayes.cli import evaluate_trajectory
    from twin_bayes.sim.emulator import emulate
    twin = Twin.from_config("arm2")
    truth = {"body_mass:upper_arm": 1.1, "body_mass:forearm": 0.55}
    rec = emulate(twin.model.robot, truth, 1.0, seed=2)
    out, rows, columns = shooting.horizon_report(twin, [rec], 0.1)
    assert out["horizon_steps"] == 50 and out["files"][0]["segments"] == 10
    assert out["joints"] == ["shoulder", "elbow"] and [r[0] for r in rows] == ["shoulder", "elbow", "all"]
    assert all(0.0 <= c <= 1.0 for c in out["overall"]["coverage90"])
    whole = evaluate_trajectory(twin, rec)
    assert out["overall"]["rmse_end_all"] < 0.5 * whole["mae_q"]
    with pytest.raises(ValueError, match="whole number"):
        shooting.horizon_report(twin, [rec], 0.0031)


@pytest.mark.slow     # 81 s, most of it the MJX compile of the 7-dof arm's gradient
def test_full_inertial_and_friction_gradients_match_finite_differences():
    """Reverse mode through eigh (principal axes) and the friction against central differences."""
    robot = load_robot("panda")
    names = ["inertial_mass:link7", "inertial_com_y:link6", "inertial_chol_zz:link7", "inertial_chol_xy:link6",
             "joint_friction_coulomb:joint7", "joint_friction_offset:joint5", "torque_offset:joint6"]
    for param, g in checks.gradient_check(robot, names=names, steps=30).items():
        assert abs(g["ad"]) > 1e-8 and g["rel_err"] < 1e-4, (param, g)
