"""Twin configuration: one TOML file per twin, validated on load.

Errors name the offending key and say why (`ConfigError`). See the README for
a full example; shipped configs live next to each robot in
`twin_bayes/robots/<robot>/*.toml`.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twin_bayes.sim import Robot, load_robot


class ConfigError(ValueError):
    """A twin config that cannot be used: names the file, the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriorSpec(_Strict):
    """Prior of one estimated parameter.

    lognormal: median `loc` (default: nominal), `scale` = sd of log (positive quantities).
    normal: mean `loc` (default: nominal), sd `scale`.
    truncnormal: normal restricted to [low, high] (physics bounds).
    uniform: on [low, high].
    `healthy` is the band a maintenance alert watches; `drift` is the sd of a
    random walk per window in unconstrained units (0: the quantity does not wear).
    """

    dist: Literal["lognormal", "normal", "truncnormal", "uniform"] = "lognormal"
    loc: float | None = None
    scale: float = Field(0.3, gt=0)
    low: float | None = None
    high: float | None = None
    healthy: tuple[float, float] | None = None
    drift: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.dist in ("truncnormal", "uniform"):
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.dist} needs low < high")
        if self.dist == "lognormal" and self.loc is not None and self.loc <= 0:
            raise ValueError("lognormal needs a positive loc (the median)")
        return self

    def draw(self, nominal: float, rng: np.random.Generator) -> float:
        """One draw of this prior (`loc` defaulting to `nominal`), with NumPy: what an emulated robot's
        hidden truth is drawn from (truncnormal by the inverse CDF, so any bounds work)."""
        loc = nominal if self.loc is None else self.loc
        if self.dist == "lognormal":
            return float(math.exp(math.log(loc) + self.scale * rng.standard_normal()))
        if self.dist == "normal":
            return float(loc + self.scale * rng.standard_normal())
        if self.dist == "truncnormal":
            d = NormalDist(loc, self.scale)
            return float(d.inv_cdf(rng.uniform(d.cdf(self.low), d.cdf(self.high))))
        return float(rng.uniform(self.low, self.high))


class RobotSection(_Strict):
    name: str
    actuator: str | None = None


class ObservationSection(_Strict):
    """Observed channels and the noise model (Student-t with learned per-channel scales).

    `channels`: the joint states observed; `sensors`: names of MJCF sensors observed besides
    (docs/SENSORS.md), each with its own noise scale `noise_scale[<sensor>]` in its unit, estimated
    as `noise:<sensor>`.
    """

    channels: tuple[Literal["q", "qd"], ...] = ("q", "qd")
    sensors: tuple[str, ...] = ()
    noise: Literal["student_t", "normal"] = "student_t"
    df: float = Field(4.0, gt=0)
    noise_scale: dict[str, float] = {"q": 0.01, "qd": 0.1}
    noise_prior_scale: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _scales(self):
        missing = [c for c in self.channels + self.sensors if c not in self.noise_scale]
        if missing:
            raise ValueError(f"noise_scale needs a value for channel(s) {missing}")
        repeated = sorted({n for n in self.sensors if self.sensors.count(n) > 1})
        if repeated:
            raise ValueError(f"sensors {repeated} named more than once")
        if any(v <= 0 for v in self.noise_scale.values()):
            raise ValueError("noise_scale values must be positive")
        return self


class InferenceSection(_Strict):
    """Inference settings. Windows are `window_s` long and cut into segments of `segment_steps`.

    `engine` is what `twin-bayes fit` uses by default: stream (the service's online engine, window by
    window), smc, nuts or svi (one batch fit of all windows), or whole-log (each recording open loop,
    with a learned model error: the honest choice for a rig whose model class is known to be wrong).
    The service always streams. `autocorrelation`: streaming windows' likelihoods are tempered by
    their residuals' autocorrelation time κ (`inference.engine`), which keeps a twin whose model
    class is wrong from growing over-confident window after window; false counts every sample as
    independent (κ = 1). `start_search`: each streamed window's segments start from their start states'
    mode given the parameters, not from the measured states (`inference.laplace.find_starts`): for robots
    whose predictions are far from linear over the sensor noise of a start, such as a floating base whose
    feet touch the floor; it costs some forward-mode passes per window. The whole-log engine's segments
    (`fit --engine whole-log --horizon`) then start from latent states estimated with the parameters
    (`inference.whole_log`). `consolidate_after_s` > 0: once a robot's stream has paused that long (s),
    the service refits the newest `consolidate_s` seconds it has stored with the whole-log engine and the
    live posterior continues from that fit (`service.consolidate`; for robots whose model class is
    known to be wrong); 0: never.
    """

    engine: Literal["stream", "smc", "nuts", "svi", "whole-log"] = "stream"
    particles: int = Field(32, ge=4)
    window_s: float = Field(1.0, gt=0)
    segment_steps: int = Field(25, ge=1)
    update_every_s: float = Field(1.0, gt=0)
    float64: bool = True
    laplace: bool = True
    autocorrelation: bool = True
    start_search: bool = False
    mcmc_steps: int = Field(1, ge=1)
    max_mcmc_steps: int = Field(10, ge=1)
    move_correlation: float = Field(0.1, ge=0, lt=1)
    target_ess: float = Field(0.5, gt=0, lt=1)
    max_stages: int = Field(30, ge=1)
    max_latency_s: float = Field(0.02, ge=0)
    min_ess: float = Field(0.1, gt=0, le=1)
    max_divergent: float = Field(0.25, ge=0, le=1)
    max_rhat: float = Field(1.05, gt=1)
    drift_sigma: float = Field(4.0, gt=0)
    drift_windows: int = Field(2, ge=1)
    consolidate_after_s: float = Field(0.0, ge=0)
    consolidate_s: float = Field(120.0, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _dtype(self):
        if self.max_mcmc_steps < self.mcmc_steps:
            raise ValueError(f"max_mcmc_steps = {self.max_mcmc_steps} is below mcmc_steps = {self.mcmc_steps}")
        if not self.float64:
            raise ValueError("float64 = false is not available: MJX rollouts under float32 lose the "
                             "gradient accuracy identification needs (see README, 'Precision')")
        return self


class FleetSection(_Strict):
    """Hierarchical priors for a fleet of robots of this design (`twin_bayes.models.fleet`).

    `hierarchical`: estimated parameters that differ from robot to robot around a
    population location (which keeps the parameter's own prior); `spread_scale`:
    scale of the half-normal prior on each population spread, in the parameter's
    unconstrained units (for a lognormal prior the sd of log(value) across robots:
    0.1 ≈ robots differ by about 10 %). Other parameters and the noise scales are
    shared by the fleet.
    """

    hierarchical: tuple[str, ...] = Field(min_length=1)
    spread_scale: float = Field(0.1, gt=0)


class TwinConfig(_Strict):
    name: str
    robot: RobotSection
    parameters: dict[str, PriorSpec]
    settings: dict[str, float] = {}
    observation: ObservationSection = ObservationSection()
    inference: InferenceSection = InferenceSection()
    fleet: FleetSection | None = None
    source: Path | None = None

    def load_robot(self) -> Robot:
        name = self.robot.name
        if self.source is not None and name.endswith((".xml", ".urdf")) and not Path(name).is_absolute():
            name = str((self.source.parent / name).resolve())
        return load_robot(name, actuator=self.robot.actuator)


def _where(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_config(data: dict, source: Path | None = None) -> TwinConfig:
    """Validate a config dict against the schema and against its robot's parameter names."""
    where = str(source) if source else "<config>"
    try:
        cfg = TwinConfig.model_validate({**data, "source": source})
    except ValidationError as err:
        raise ConfigError(f"{where}: {_where(err)}") from None
    try:
        robot = cfg.load_robot()
    except ValueError as err:
        raise ConfigError(f"{where}: robot.name: {err}") from None
    for section in ("parameters", "settings"):
        names = list(getattr(cfg, section))
        try:
            robot.check_names(names)
        except KeyError as err:
            raise ConfigError(f"{where}: {section}: {err.args[0]}") from None
    if not cfg.parameters:
        raise ConfigError(f"{where}: parameters: name at least one parameter to estimate")
    both = set(cfg.parameters) & set(cfg.settings)
    if both:
        raise ConfigError(f"{where}: {sorted(both)} are both estimated (parameters) and fixed (settings)")
    for name, spec in cfg.parameters.items():
        nominal = robot.nominal()[name]
        positive = robot.specs[robot.layout.index[name]].positive
        if spec.dist == "lognormal" and spec.loc is None and nominal <= 0:
            raise ConfigError(f"{where}: parameters.{name}: nominal value {nominal} is not positive; "
                              "give loc (the median) or use a normal/truncnormal prior")
        if spec.dist == "normal" and positive:
            raise ConfigError(f"{where}: parameters.{name}: a positive quantity needs lognormal, "
                              "truncnormal (low >= 0) or uniform, not normal")
        if spec.dist in ("truncnormal", "uniform") and positive and spec.low < 0:
            raise ConfigError(f"{where}: parameters.{name}: a positive quantity needs low >= 0, got {spec.low}")
    _check_delays(cfg, where)
    _check_sensors(cfg.observation, robot, where)
    inf = cfg.inference
    if cfg.observation.sensors and (inf.engine == "whole-log" or inf.consolidate_after_s > 0):
        key = "engine" if inf.engine == "whole-log" else "consolidate_after_s"
        raise ConfigError(f"{where}: inference.{key}: the whole-log engine observes joint positions only, and "
                          f"this twin observes sensors {list(cfg.observation.sensors)}; use the stream, smc, nuts "
                          "or svi engine, and consolidate_after_s = 0")
    if cfg.fleet is not None:
        _check_fleet(cfg.fleet, list(cfg.parameters), where)
    steps = cfg.inference.window_s / robot.dt
    if steps < cfg.inference.segment_steps:
        raise ConfigError(f"{where}: inference.window_s: {cfg.inference.window_s} s holds {steps:.0f} steps of "
                          f"{robot.dt} s, fewer than one segment (inference.segment_steps = "
                          f"{cfg.inference.segment_steps})")
    return cfg


def is_delay(name: str) -> bool:
    """Whether the parameter `name` is a delay (s): the commands' `latency_s` or a sensor's `delay_s`."""
    return name == "latency_s" or name.startswith("delay_s:")


def _check_delays(cfg: TwinConfig, where: str) -> None:
    """Command latency and sensor delays stay within `inference.max_latency_s`: the commands sent that
    long before a segment are what it carries, and a delayed sensor's rows that reach back that far
    are what its segments leave unscored (`models.twin_model`)."""
    bound = cfg.inference.max_latency_s
    for name, spec in cfg.parameters.items():
        if is_delay(name):
            high = spec.high if spec.dist in ("truncnormal", "uniform") else math.inf
            if high > bound:
                raise ConfigError(f"{where}: parameters.{name}: its prior reaches {high} s, beyond "
                                  f"inference.max_latency_s = {bound} s; bound it (truncnormal or uniform, "
                                  "high) or raise max_latency_s")
    for name, value in cfg.settings.items():
        if is_delay(name) and value > bound:
            raise ConfigError(f"{where}: settings.{name} = {value} s exceeds inference.max_latency_s = {bound} s")


def _check_sensors(obs: ObservationSection, robot: Robot, where: str) -> None:
    """Observed sensors must be MJCF sensors of a modelled type; noise scales name observed channels."""
    known = robot.layout.sensors.by_name
    unknown = [n for n in obs.sensors if n not in known]
    if unknown:
        have = ", ".join(f"{s.name} ({s.type})" for s in known.values()) or "none"
        raise ConfigError(f"{where}: observation.sensors: {unknown} are not sensors of {robot.name} "
                          f"(its MJCF sensors of the types twin-bayes models: {have})")
    stray = [k for k in obs.noise_scale if k not in ("q", "qd") + obs.sensors]
    if stray:
        raise ConfigError(f"{where}: observation.noise_scale: {stray} are neither q, qd nor an observed sensor "
                          f"(observation.sensors = {list(obs.sensors)})")


def _check_fleet(fleet: FleetSection, estimated: list[str], where: str) -> None:
    """Hierarchical names must be estimated parameters, each named once."""
    unknown = [n for n in fleet.hierarchical if n not in estimated]
    if unknown:
        raise ConfigError(f"{where}: fleet.hierarchical: {unknown} are not estimated parameters "
                          f"(the [parameters] section estimates {estimated})")
    repeated = sorted({n for n in fleet.hierarchical if fleet.hierarchical.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: fleet.hierarchical: {repeated} named more than once")


def load_config(path: str | Path) -> TwinConfig:
    """Read and validate a twin config TOML file (a shipped name like 'arm2' also works)."""
    path = resolve_config_path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, source=path)


def resolve_config_path(path: str | Path) -> Path:
    """An existing file, or a shipped config by its bare name ('arm2'); a path that is not a file is an
    error, never a shipped config of the same file name."""
    p = Path(path)
    if p.is_file():
        return p.resolve()
    robots = Path(__file__).resolve().parent / "robots"
    names = sorted(x.stem for x in robots.glob("*/*.toml"))
    bare = len(p.parts) == 1 and not p.suffix
    shipped = sorted(robots.glob(f"*/{p.name}.toml")) if bare else []
    if shipped:
        return shipped[0]
    if not bare:
        raise ConfigError(f"{path}: no such config file")
    raise ConfigError(f"{path}: no such config file, nor a shipped config ({', '.join(names)})")
