"""Twin configs: every shipped config loads; bad configs fail with a ConfigError that names the key.

Bad configs are written as TOML files under tmp_path and read with `load_config`,
the way a user's file would be. No JIT compilation here (robots load, nothing rolls out).
"""
import copy
import re
import tomllib
from pathlib import Path

import pytest

from twin_bayes.config import ConfigError, load_config, resolve_config_path
from twin_bayes.models import TwinModel

ROBOTS = Path(__file__).resolve().parents[2] / "twin_bayes" / "robots"
SHIPPED = sorted(p.stem for p in ROBOTS.glob("*/*.toml"))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def dump_toml(data: dict) -> str:
    """A minimal TOML writer for twin configs (top-level scalars, then one table per section)."""
    lines = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def arm2_data() -> dict:
    return tomllib.loads(resolve_config_path("arm2").read_text())


def write(tmp_path: Path, data: dict, name: str = "twin.toml") -> Path:
    path = tmp_path / name
    path.write_text(dump_toml(data))
    return path


def test_dump_round_trips_shipped_config(tmp_path):
    data = arm2_data()
    assert tomllib.loads(dump_toml(data)) == data
    cfg = load_config(write(tmp_path, data))
    assert cfg == load_config("arm2").model_copy(update={"source": cfg.source})


def test_shipped_config_names_are_known():
    assert {"arm2", "servo_pendulum", "humanoid", "humanoid_fixed", "xl330"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_and_builds_a_model(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.source is not None and cfg.source.name == f"{name}.toml"
    assert cfg.parameters, "a twin estimates at least one parameter"
    robot = cfg.load_robot()
    for key in cfg.parameters:
        assert key in robot.param_names
    model = TwinModel(cfg, robot)
    observed = [*cfg.observation.channels, *cfg.observation.sensors]
    assert model.names == tuple(cfg.parameters) + tuple(f"noise:{c}" for c in observed)
    assert model.window_samples - 1 >= model.segment_steps
    # the same config loads by path too
    assert load_config(cfg.source) == cfg


def test_unknown_shipped_name_lists_the_shipped_configs():
    with pytest.raises(ConfigError, match="no_such_twin") as err:
        load_config("no_such_twin")
    assert "arm2" in str(err.value)


def test_relative_mjcf_path_resolves_next_to_the_config(tmp_path):
    (tmp_path / "my_arm.xml").write_text((ROBOTS / "arm2" / "arm2.xml").read_text())
    data = arm2_data()
    data["robot"]["name"] = "my_arm.xml"
    cfg = load_config(write(tmp_path, data))
    assert cfg.load_robot().mjcf_path == (tmp_path / "my_arm.xml").resolve()


def test_not_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "arm2"\n[robot\nname = "arm2"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


# --- parameters naming things the robot does not have --------------------------------------

def test_typo_in_a_body_name_names_the_key_and_suggests_the_right_one(tmp_path):
    data = arm2_data()
    data["parameters"]["body_mass:upper_amr"] = {"dist": "lognormal", "scale": 0.3}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    msg = str(err.value)
    assert str(tmp_path / "twin.toml") in msg
    assert "parameters" in msg and "body_mass:upper_amr" in msg
    assert "body_mass:upper_arm" in msg  # the close match


def test_body_that_does_not_exist_names_the_key_with_hints(tmp_path):
    """A body that is nowhere near an existing name still gets hints: the parameters of that kind."""
    data = arm2_data()
    data["parameters"]["body_mass:no_such_link"] = {"dist": "lognormal", "scale": 0.3}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    msg = str(err.value)
    assert "parameters" in msg and "body_mass:no_such_link" in msg
    assert "body_mass:upper_arm" in msg or "body_mass:forearm" in msg, msg


def test_unknown_setting_name_is_a_config_error(tmp_path):
    data = arm2_data()
    data["settings"] = {"dof_damping:wrist": 0.1}
    with pytest.raises(ConfigError, match=r"settings.*dof_damping:wrist"):
        load_config(write(tmp_path, data))


def test_unknown_robot_names_robot_name(tmp_path):
    data = arm2_data()
    data["robot"]["name"] = "arm9"     # arm3 is a shipped (URDF) robot
    with pytest.raises(ConfigError, match=r"robot\.name.*arm9"):
        load_config(write(tmp_path, data))


def test_parameter_both_estimated_and_fixed(tmp_path):
    data = arm2_data()
    data["settings"] = {"body_mass:upper_arm": 1.0}
    with pytest.raises(ConfigError, match=r"body_mass:upper_arm.*both estimated"):
        load_config(write(tmp_path, data))


def test_no_parameters_to_estimate(tmp_path):
    data = arm2_data()
    data["parameters"] = {}
    with pytest.raises(ConfigError, match="parameters"):
        load_config(write(tmp_path, data))


# --- schema errors: each names its key --------------------------------------------------------

def _set(path: str, value):
    def edit(d):
        *head, last = path.split("/")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value
    return edit


BAD = {
    # unknown keys
    "typo_top_level": (_set("infrence/particles", 16), r"infrence: Extra inputs are not permitted"),
    "typo_in_inference": (_set("inference/particle", 16), r"inference\.particle: Extra inputs are not permitted"),
    "typo_in_prior": (_set("parameters/body_mass:forearm", {"dist": "lognormal", "sacle": 0.3}),
                      r"parameters\.body_mass:forearm\.sacle: Extra inputs"),
    "typo_in_observation": (_set("observation/noise_scales", {"q": 0.01}), r"observation\.noise_scales"),
    "unknown_channel": (_set("observation/channels", ["q", "qdd"]), r"observation\.channels"),
    # bad prior bounds and scales
    "truncnormal_low_above_high": (
        _set("parameters/body_mass:upper_arm", {"dist": "truncnormal", "low": 2.0, "high": 1.0}),
        r"parameters\.body_mass:upper_arm.*low < high"),
    "truncnormal_no_bounds": (
        _set("parameters/body_mass:upper_arm", {"dist": "truncnormal", "scale": 0.3}),
        r"parameters\.body_mass:upper_arm.*low < high"),
    "uniform_equal_bounds": (
        _set("parameters/dof_damping:elbow", {"dist": "uniform", "low": 0.1, "high": 0.1}),
        r"parameters\.dof_damping:elbow.*low < high"),
    "negative_prior_scale": (
        _set("parameters/body_mass:upper_arm", {"dist": "lognormal", "scale": -0.3}),
        r"parameters\.body_mass:upper_arm\.scale: Input should be greater than 0"),
    "lognormal_negative_median": (
        _set("parameters/body_mass:upper_arm", {"dist": "lognormal", "loc": -1.0}),
        r"parameters\.body_mass:upper_arm.*positive loc"),
    "unknown_dist": (_set("parameters/body_mass:upper_arm", {"dist": "gamma"}),
                     r"parameters\.body_mass:upper_arm\.dist"),
    "normal_on_positive_quantity": (
        _set("parameters/body_mass:upper_arm", {"dist": "normal", "scale": 0.3}),
        r"parameters\.body_mass:upper_arm: a positive quantity needs"),
    "negative_drift": (_set("parameters/dof_damping:elbow", {"drift": -0.1}),
                       r"parameters\.dof_damping:elbow\.drift"),
    # noise
    "negative_noise_scale": (_set("observation/noise_scale", {"q": -0.002, "qd": 0.02}),
                             r"observation.*noise_scale values must be positive"),
    "zero_noise_scale": (_set("observation/noise_scale", {"q": 0.002, "qd": 0.0}),
                         r"observation.*noise_scale values must be positive"),
    "missing_noise_scale": (_set("observation/noise_scale", {"q": 0.002}),
                            r"observation.*noise_scale needs a value for channel.*qd"),
    "negative_noise_prior_scale": (_set("observation/noise_prior_scale", -1.0),
                                   r"observation\.noise_prior_scale"),
    "zero_df": (_set("observation/df", 0.0), r"observation\.df"),
    # inference
    "too_few_particles": (_set("inference/particles", 2), r"inference\.particles"),
    "non_integer_particles": (_set("inference/particles", "many"), r"inference\.particles"),
    "zero_window": (_set("inference/window_s", 0.0), r"inference\.window_s"),
    "unknown_engine": (_set("inference/engine", "mh"), r"inference\.engine"),
    "target_ess_one": (_set("inference/target_ess", 1.0), r"inference\.target_ess"),
    "float32": (_set("inference/float64", False), r"inference.*float64 = false"),
    "zero_max_stages": (_set("inference/max_stages", 0), r"inference\.max_stages"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_the_key(tmp_path, case):
    edit, pattern = BAD[case]
    data = copy.deepcopy(arm2_data())
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert re.search(pattern, msg), msg


@pytest.mark.parametrize("dist", ["truncnormal", "uniform"])
def test_bounded_prior_on_positive_quantity_must_not_reach_below_zero(tmp_path, dist):
    """A mass prior with support below zero lets particles hold negative masses."""
    data = arm2_data()
    data["parameters"]["body_mass:upper_arm"] = {"dist": dist, "loc": 1.0, "scale": 0.3, "low": -1.0, "high": 3.0}
    with pytest.raises(ConfigError, match=r"parameters\.body_mass:upper_arm"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize("prior", [{"dist": "lognormal", "loc": 0.004, "scale": 0.5},
                                   {"dist": "uniform", "low": 0.0, "high": 0.05}])
def test_a_latency_prior_beyond_max_latency_is_a_config_error(tmp_path, prior):
    """Segments carry the commands of max_latency_s before them: a latency prior reaching further
    (unbounded, or high above it) would make the twin hold the oldest command instead."""
    data = arm2_data()
    data["parameters"]["latency_s"] = prior
    with pytest.raises(ConfigError, match=r"parameters\.latency_s.*max_latency_s = 0\.02"):
        load_config(write(tmp_path, data))
    data["parameters"]["latency_s"] = {"dist": "uniform", "low": 0.0, "high": 0.02}
    assert "latency_s" in load_config(write(tmp_path, data)).parameters


@pytest.mark.parametrize("window_s, segment_steps", [(0.01, 25), (0.5, 600)])
def test_window_shorter_than_one_segment_is_a_config_error(tmp_path, window_s, segment_steps):
    """arm2 steps 2 ms: 0.01 s holds 5 steps (< 25); 0.5 s holds 250 (< 600)."""
    data = arm2_data()
    data["inference"]["window_s"] = window_s
    data["inference"]["segment_steps"] = segment_steps
    with pytest.raises(ConfigError, match=r"inference\.(window_s|segment_steps)"):
        load_config(write(tmp_path, data))


def test_window_shorter_than_one_segment_never_builds_a_model(tmp_path):
    """Whatever layer catches it, a twin with no complete segment per window is never built."""
    data = arm2_data()
    data["inference"]["window_s"] = 0.01
    with pytest.raises(ValueError, match="window_s"):  # ConfigError is a ValueError
        TwinModel(load_config(write(tmp_path, data)))


# --- observed MJCF sensors ---------------------------------------------------------------------

def humanoid_fixed_data() -> dict:
    return tomllib.loads(resolve_config_path("humanoid_fixed").read_text())


def test_observed_sensors_get_noise_scales_and_parameters(tmp_path):
    data = humanoid_fixed_data()
    data["observation"]["sensors"] = ["torso_gyro", "right_knee_torque"]
    data["observation"]["noise_scale"] |= {"torso_gyro": 0.01, "right_knee_torque": 0.5}
    data["parameters"]["bias_y:torso_gyro"] = {"dist": "normal", "loc": 0.0, "scale": 0.02}
    data["parameters"]["scale:right_knee_torque"] = {"dist": "lognormal", "scale": 0.05}
    model = TwinModel(load_config(write(tmp_path, data)))
    assert model.names[-2:] == ("noise:torso_gyro", "noise:right_knee_torque")
    assert "bias_y:torso_gyro" in model.param_names
    assert model.observed_width == model.robot.nq + model.robot.nv + 3 + 1
    gyro = model.robot.layout.sensors.by_name["torso_gyro"]
    assert model.readings[:3] == (gyro.adr, gyro.adr + 1, gyro.adr + 2)


SENSOR_BAD = {
    "unknown_sensor": (["torso_gyroscope"], {"torso_gyroscope": 0.01},
                       r"observation\.sensors: \['torso_gyroscope'\] are not sensors of humanoid_fixed "
                       r"\(its MJCF sensors .*torso_gyro \(gyro\), torso_accel \(accelerometer\)"),
    "missing_noise": (["torso_gyro"], {}, r"noise_scale needs a value for channel.*torso_gyro"),
    "stray_noise": ([], {"torso_accel": 0.1}, r"observation\.noise_scale: \['torso_accel'\] are neither q, qd nor"),
    "repeated": (["torso_gyro", "torso_gyro"], {"torso_gyro": 0.01}, r"sensors \['torso_gyro'\] named more than once"),
}


@pytest.mark.parametrize("case", sorted(SENSOR_BAD))
def test_bad_sensor_observation_names_the_key(tmp_path, case):
    sensors, noise, pattern = SENSOR_BAD[case]
    data = humanoid_fixed_data()
    data["observation"]["sensors"] = sensors
    data["observation"]["noise_scale"] |= noise
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and re.search(pattern, str(err.value)), str(err.value)


@pytest.mark.parametrize("inference", [{"engine": "whole-log"}, {"consolidate_after_s": 5.0}])
def test_a_twin_of_sensors_refuses_the_whole_log_engine_up_front(tmp_path, inference):
    """The whole-log engine (and the consolidation that runs it) observes joint positions only: a twin
    observing sensors would have its sensor models silently left at their priors."""
    data = humanoid_fixed_data()
    data["observation"]["sensors"] = ["torso_gyro"]
    data["observation"].setdefault("noise_scale", {})["torso_gyro"] = 0.01
    data["inference"].update(inference)
    key = next(iter(inference))
    with pytest.raises(ConfigError, match=rf"inference\.{key}: the whole-log engine observes joint positions only"):
        load_config(write(tmp_path, data))


def test_sensor_parameter_of_an_unknown_sensor_is_a_config_error(tmp_path):
    data = humanoid_fixed_data()
    data["parameters"]["bias_x:torso_gyr"] = {"dist": "normal", "loc": 0.0, "scale": 0.02}
    with pytest.raises(ConfigError, match=r"parameters: .*bias_x:torso_gyr.*bias_x:torso_gyro"):
        load_config(write(tmp_path, data))


def test_a_model_with_other_numbers_keeps_its_design_and_pytree_structure():
    """`with_numbers` replaces traced numbers only: the design (jit's static key) and the pytree
    structure stay, so compiled code takes the new model as it is."""
    import jax
    import numpy as np
    model = TwinModel(load_config("arm2"))
    one = model.with_numbers(max_stages=np.ones_like(model.numbers.max_stages))
    assert one.design is model.design and int(one.numbers.max_stages) == 1 < int(model.numbers.max_stages)
    assert jax.tree.structure(one) == jax.tree.structure(model)
    others = [f for f in model.numbers._fields if f != "max_stages"]
    assert all(getattr(one.numbers, f) is getattr(model.numbers, f) for f in others)
    with pytest.raises(ValueError):
        model.with_numbers(no_such_number=1)
