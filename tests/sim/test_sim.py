"""The Brax twin against truth: native MuJoCo, physical direction, finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin_bayes.sim import checks, load_robot
from twin_bayes.sim.rollout import rollout, segment, shoot
from twin_bayes.sim.robot import rollout_jit


@pytest.mark.parametrize("name", ["arm2", "servo_pendulum", "humanoid_fixed", "humanoid"])
def test_agrees_with_native_mujoco(name):
    robot = load_robot(name)
    fig = checks.agreement(robot)
    assert fig["max_abs_err"] < fig["tolerance_rad"], fig
    assert min(v for k, v in fig.items() if k.startswith("motion_range_")) > 0.05  # the check moved the robot


def test_humanoid_check_has_contacts():
    import mujoco
    robot = load_robot("humanoid")
    q0, qd0 = checks.start_state(robot)
    d = mujoco.MjData(robot.mj_model)
    d.qpos[:] = q0
    mujoco.mj_forward(robot.mj_model, d)
    assert d.ncon >= 2


def test_parameter_names_and_vectors_round_trip():
    robot = load_robot("arm2")
    assert robot.mjcf_path.name == "arm2.xml"
    for name in ("body_mass:upper_arm", "dof_damping:elbow", "dof_armature:shoulder",
                 "actuator_gain:elbow", "body_com_x:forearm",
                 "body_inertia_scale:forearm", "latency_s", "sensor_bias:shoulder"):
        assert name in robot.param_names
    theta = robot.nominal()
    assert theta["body_mass:upper_arm"] == pytest.approx(1.0)
    theta["dof_damping:elbow"] = 0.7
    assert robot.to_dict(robot.to_vector(theta)) == pytest.approx(theta)
    with pytest.raises(KeyError, match="body_mass:uper_arm"):
        robot.to_vector({"body_mass:uper_arm": 1.0})
    servo = load_robot("servo_pendulum")
    for kind in ("servo_kt", "servo_R", "servo_armature", "servo_friction_coulomb", "servo_friction_viscous"):
        assert f"{kind}:servo" in servo.param_names
    # the servo's friction and armature live in its own parameters, not twice
    assert "dof_damping:servo" not in servo.param_names
    # friction loss is a parameter only where MuJoCo's friction constraint exists
    assert "dof_frictionloss:elbow" not in robot.param_names


@pytest.mark.parametrize("name", ["arm2", "servo_pendulum", "panda"])
def test_the_numpy_formulas_of_the_emulator_are_the_twins(name):
    """The parameter map, the actuator model and command latency run on NumPy in the emulator (no
    JAX) and under jit in the twin: the same numbers, full inertials (panda) included."""
    from twin_bayes.sim import delay_commands, model_fields
    robot = load_robot(name)
    theta = robot.to_vector(checks.perturbed(robot, 1))
    fields = model_fields(robot.layout, theta)
    traced = jax.jit(lambda th: model_fields(robot.layout, th))(jnp.asarray(theta))
    assert all(isinstance(v, np.ndarray) for v in fields.values())
    for k, v in fields.items():
        np.testing.assert_allclose(v, traced[k], rtol=1e-12, atol=1e-15, err_msg=k)
    rng = np.random.default_rng(0)
    u, q, qd = (rng.normal(size=(6, robot.nu)) for _ in range(3))
    act = robot.layout.actuator_params(theta)
    torque = robot.actuator.torque(u, q, qd, act)
    np.testing.assert_allclose(torque, jax.jit(robot.actuator.torque)(u, q, qd, act), rtol=1e-12, atol=1e-15)
    assert isinstance(torque, np.ndarray)
    delayed = delay_commands(u, 1.6 * robot.dt, robot.dt)
    np.testing.assert_allclose(delayed, jax.jit(delay_commands, static_argnums=2)(u, 1.6 * robot.dt, robot.dt),
                               rtol=1e-12)
    np.testing.assert_allclose(delayed[2:], 0.4 * u[1:-1] + 0.6 * u[:-2], rtol=1e-12)   # 1.6 steps late


def test_body_mass_scales_inertia_and_writes_native_model():
    robot = load_robot("arm2")
    m = robot.model_with({"body_mass:forearm": 1.2, "body_inertia_scale:upper_arm": 2.0})
    b_fore, b_up = robot.mj_model.body("forearm").id, robot.mj_model.body("upper_arm").id
    assert m.body_mass[b_fore] == pytest.approx(1.2)
    np.testing.assert_allclose(m.body_inertia[b_fore], robot.mj_model.body_inertia[b_fore] * 2.0)
    np.testing.assert_allclose(m.body_inertia[b_up], robot.mj_model.body_inertia[b_up] * 2.0)
    assert m.body_mass[b_up] == pytest.approx(robot.mj_model.body_mass[b_up])


def test_unknown_robot_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown robot"):
        load_robot("no_such_robot")
    robot = load_robot("arm2")
    with pytest.raises(ValueError, match="commands must have shape"):
        robot.rollout(robot.nominal(), np.zeros(2), np.zeros(2), np.zeros((10, 3)))


@pytest.mark.parametrize("name", ["arm2", "servo_pendulum"])
def test_physical_directions(name):
    for check, fig in checks.directions(load_robot(name)).items():
        assert fig["ok"], (check, fig)


@pytest.mark.parametrize("name", ["arm2", "servo_pendulum"])
def test_gradients_match_finite_differences(name):
    robot = load_robot(name)
    grads = checks.gradient_check(robot)
    kinds = {robot.specs[robot.layout.index[n]].kind for n in grads}
    assert len(kinds) >= 9  # every parameter kind the robot has (settings excepted)
    for param, g in grads.items():
        if abs(g["fd"]) < 1e-6 and abs(g["ad"]) < 1e-6:
            continue  # no effect in a planar motion (e.g. body_com_y)
        assert g["rel_err"] < 1e-3, (param, g)


@pytest.mark.slow   # forward sensitivities through the contact solver: minutes of compile on 2 cores
def test_humanoid_gradients_finite_and_close():
    robot = load_robot("humanoid")
    names = ["body_mass:torso", "dof_damping:right_knee", "dof_armature:left_hip_y",
             "geom_friction:right_foot", "actuator_gain:left_knee"]
    grads = checks.gradient_check(robot, names=names, steps=40, rel_step=1e-5)
    for param, g in grads.items():
        assert np.isfinite(g["ad"]), (param, g)
        assert g["rel_err"] < 0.05 or abs(g["ad"] - g["fd"]) < 1e-6, (param, g)


def test_one_solver_iteration_makes_contact_gradients_reverse_mode():
    accurate, one = load_robot("humanoid"), load_robot("humanoid", solver_iterations=1)
    assert accurate.grad_mode == "forward" and accurate.mj_model.opt.iterations == 8
    assert one.grad_mode == "reverse" and one.mj_model.opt.iterations == one.sys.opt.iterations == 1
    assert load_robot("humanoid", solver_iterations=1) is one      # cached: shares compiled kernels
    assert load_robot("humanoid_fixed", solver_iterations=3).grad_mode == "forward"
    with pytest.raises(ValueError, match="at least 1"):
        load_robot("humanoid", solver_iterations=0)


def test_commands_are_not_silently_differentiated_through_the_solver():
    robot = load_robot("servo_pendulum")  # friction loss: constraint solver, forward sensitivities
    assert robot.grad_mode == "forward"
    theta = robot.to_vector(robot.nominal())
    f = lambda u: rollout(robot, theta, jnp.zeros(1), jnp.zeros(1), u)[0].sum()  # noqa: E731
    with pytest.raises(TypeError, match="not in commands"):
        jax.grad(f)(jnp.ones((5, 1)))


def test_new_parameters_or_data_never_recompile():
    robot = load_robot("servo_pendulum")
    rng = np.random.default_rng(0)
    robot.rollout(robot.nominal(), np.zeros(1), np.zeros(1), rng.normal(size=(50, 1)))
    before = rollout_jit()._cache_size()
    for seed in range(3):
        theta = checks.perturbed(robot, seed)
        robot.rollout(theta, rng.normal(size=1), rng.normal(size=1), rng.normal(size=(50, 1)))
    assert rollout_jit()._cache_size() == before


def test_multiple_shooting_segments_match_single_rollouts():
    robot = load_robot("arm2")
    theta = robot.to_vector(checks.perturbed(robot, 0))
    q0, qd0 = checks.start_state(robot)
    u = checks.random_commands(robot, 101, 0)
    q, qd = robot.rollout(theta, q0, qd0, u)
    q_obs = np.vstack([q0, q]), np.vstack([qd0, qd])
    # the truth's own states as observations: every segment reproduces them exactly
    q_start, qd_start, u_seg, q_tgt, qd_tgt = segment(*q_obs, np.vstack([u, u[-1:]]), steps=20, history=3)
    assert u_seg.shape == (5, 23, 2) and q_tgt.shape == (5, 20, 2)
    qs, qds = shoot(robot, theta, q_start, qd_start, u_seg, history=3)
    np.testing.assert_allclose(qs, q_tgt, atol=1e-9)
    np.testing.assert_allclose(qds, qd_tgt, atol=1e-7)


def test_batch_of_particles_shares_one_compiled_rollout():
    robot = load_robot("servo_pendulum")
    thetas = jnp.stack([robot.to_vector(checks.perturbed(robot, s)) for s in range(4)])
    u = jnp.asarray(checks.random_commands(robot, 30, 0))
    batched = jax.jit(jax.vmap(lambda th: rollout(robot, th, jnp.zeros(1), jnp.zeros(1), u)[0]))
    qb = batched(thetas)
    for i in range(4):
        np.testing.assert_allclose(qb[i], robot.rollout(thetas[i], np.zeros(1), np.zeros(1), u)[0], atol=1e-12)


def test_joint_friction_loss_gradients_on_an_mjcf_path(tmp_path):
    """dof_frictionloss (MuJoCo's friction constraint, forward sensitivities) on a user MJCF file."""
    src = load_robot("arm2").mjcf_path.read_text()
    path = tmp_path / "arm2_friction.xml"
    path.write_text(src.replace('armature="0.01"', 'armature="0.01" frictionloss="0.05"')
                    .replace('armature="0.005"', 'armature="0.005" frictionloss="0.03"'))
    robot = load_robot(path)
    assert robot.mjcf_path == path.resolve() and robot.grad_mode == "forward"
    names = ["dof_frictionloss:shoulder", "dof_frictionloss:elbow", "body_mass:forearm"]
    for param, g in checks.gradient_check(robot, names=names, steps=60).items():
        assert g["rel_err"] < 1e-3, (param, g)


def test_mjx_kinematics_has_a_barrier_between_tree_levels():
    """`twin_bayes._jax` bars XLA from fusing MJX's body-tree levels into one loop that recomputes
    every parent per use (exponential in the tree's depth: docs/PANDA.md); each level of a 3-link
    chain ends in an optimization barrier, and the results are MuJoCo's."""
    import mujoco
    from mujoco import mjx
    from mujoco.mjx._src.smooth import kinematics

    body = "".join(f'<body pos="0 0 0.1" quat="1 1 0 0"><inertial mass="1" pos="0.01 0.02 0.03" '
                   f'diaginertia="0.02 0.025 0.03"/><joint name="j{i}" axis="0 0 1"/>' for i in range(3))
    m = mujoco.MjModel.from_xml_string(f"<mujoco><worldbody>{body}{'</body>' * 3}</worldbody></mujoco>")
    mx = mjx.put_model(m)
    dx = mjx.make_data(mx).replace(qpos=jnp.array([0.3, -0.7, 1.1]))
    assert jax.jit(kinematics).lower(mx, dx).as_text().count("optimization_barrier") >= 3
    d = mujoco.MjData(m)
    d.qpos[:] = [0.3, -0.7, 1.1]
    mujoco.mj_kinematics(m, d)
    np.testing.assert_allclose(jax.jit(kinematics)(mx, dx).xpos, d.xpos, atol=1e-12)


@pytest.mark.parametrize("friction", [0.6, 1.4])
def test_a_foot_sets_its_contacts_friction(friction):
    """The feet outrank the floor (`priority`): a contact's friction is the foot's, in native MuJoCo and in MJX,
    also below the floor's 1.0, where MuJoCo's default (the larger of the two geoms') would ignore it."""
    import mujoco
    from mujoco import mjx
    robot = load_robot("humanoid")
    m = robot.model_with(robot.nominal() | {"geom_friction:right_foot": friction})
    d = mujoco.MjData(m)
    d.qpos[:] = checks.start_state(robot)[0]
    mujoco.mj_forward(m, d)
    foot = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "right_foot")
    native = [c.friction[0] for c in d.contact[:d.ncon] if foot in (c.geom1, c.geom2)]
    mx = mjx.collision(mjx.put_model(m), mjx.put_data(m, d))     # MJX's contacts at the same kinematics
    touching = (np.asarray(mx._impl.contact.dist) < 0) & np.any(np.asarray(mx._impl.contact.geom) == foot, axis=1)
    assert native and np.allclose(native, friction)
    assert touching.any() and np.allclose(np.asarray(mx._impl.contact.friction)[touching, 0], friction)
