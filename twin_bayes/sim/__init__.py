"""The twin's robots: descriptions, the parameter map and actuator models (MuJoCo and NumPy: loading
a robot imports no JAX); the differentiable rollouts are in `twin_bayes.sim.rollout` (JAX, MJX)."""
from twin_bayes.sim.actuators import ACTUATOR_MODELS, ActuatorModel, get_actuator_model
from twin_bayes.sim.latency import delay_commands
from twin_bayes.sim.params import ParamLayout, ParamSpec, model_fields
from twin_bayes.sim.robot import SHIPPED, Robot, load_robot

__all__ = [
    "ACTUATOR_MODELS", "ActuatorModel", "ParamLayout", "ParamSpec", "Robot", "SHIPPED",
    "delay_commands", "get_actuator_model", "load_robot", "model_fields",
]
