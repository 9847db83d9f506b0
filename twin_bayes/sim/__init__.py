"""The differentiable twin: robots, parameter map, actuator models, rollouts."""
from twin_bayes import _jax  # noqa: F401  (float64; first, before any array)
from twin_bayes.sim.actuators import ACTUATOR_MODELS, ActuatorModel, get_actuator_model
from twin_bayes.sim.params import ParamLayout, ParamSpec, model_fields
from twin_bayes.sim.robot import SHIPPED, Robot, load_robot
from twin_bayes.sim.rollout import delay_commands, rollout, segment, shoot, simulate, system

__all__ = [
    "ACTUATOR_MODELS", "ActuatorModel", "ParamLayout", "ParamSpec", "Robot", "SHIPPED",
    "delay_commands", "get_actuator_model", "load_robot", "model_fields", "rollout",
    "segment", "shoot", "simulate", "system",
]
