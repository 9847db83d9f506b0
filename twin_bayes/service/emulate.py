"""An emulated robot streaming telemetry: native MuJoCo with hidden true parameters, stepped in real time.

The robot is stepped chunk by chunk (`NativeRobot` keeps the MuJoCo state and command history), so it
never knows its own future; sensor noise is added per sample, commands act after the true command
latency, and parameters may drift mid-run. A truth file (docs/EMULATOR.md) may add physics and sensing
the twin's model class does not contain (twin_bayes.sim.truth). Chunks go out through a `RobotLink`
(resent until acked), optionally with the commands planned for the next seconds.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin_bayes.config import TwinConfig
from twin_bayes.service.robot_link import RobotLink
from twin_bayes.sim.emulator import excitation
from twin_bayes.sim.native import NativeRobot
from twin_bayes.sim.robot import Robot
from twin_bayes.sim.truth import Misspecification, Truth, colored_noise

_DRIFT = re.compile(r"(?P<name>[^=]+)=(?P<factor>[^@]+)@(?P<at>.+)\Z")


@dataclass(frozen=True)
class Drift:
    """At `at_s` seconds of robot time the true parameter `name` is multiplied by `factor`."""

    name: str
    factor: float
    at_s: float

    @classmethod
    def parse(cls, text: str) -> Drift:
        """'PARAM=FACTOR@SECONDS', e.g. 'body_mass:forearm=1.3@5'; ValueError on anything else."""
        m = _DRIFT.match(text.strip())
        try:
            drift = cls(m["name"].strip(), float(m["factor"]), float(m["at"])) if m else None
        except ValueError:
            drift = None
        if drift is None or not (np.isfinite(drift.factor) and drift.factor > 0 and drift.at_s >= 0):
            raise ValueError(f"drift {text!r}: expected PARAM=FACTOR@SECONDS with FACTOR > 0, SECONDS >= 0")
        return drift


def draw_truth(cfg: TwinConfig, robot: Robot, seed: int) -> dict[str, float]:
    """True parameters: the robot's nominal values with the config's estimated ones drawn from its prior
    (`PriorSpec.draw`, seeded by seed)."""
    rng = np.random.default_rng(seed)
    nominal = robot.nominal()
    truth = dict(nominal)
    truth.update(cfg.settings)
    truth.update({n: spec.draw(nominal[n], rng) for n, spec in cfg.parameters.items()})
    return {k: float(v) for k, v in truth.items()}


def write_truth(path: str | Path, truth: Truth | Mapping[str, float], drifts: tuple[Drift, ...] = ()) -> None:
    """Write the truth (or bare {parameter: value}) as TOML readable by `sim.truth.read_truth` (drifts as comments)."""
    truth = truth if isinstance(truth, Truth) else Truth(dict(truth))
    lines = ["# True parameters of an emulated robot (hidden from the twin)."]
    lines += [f"# drift: {d.name} x{d.factor} at {d.at_s} s" for d in drifts]
    lines += [f"{json.dumps(k)} = {float(v)!r}" for k, v in truth.params.items()]
    spec = truth.misspecified
    extra = {**{f"dof_frictionloss:{j}": v for j, v in spec.frictionloss.items()},
             **{f"backlash:{j}": v for j, v in spec.backlash.items()}}
    if extra:
        lines += ["", "[misspecified]", *(f"{json.dumps(k)} = {float(v)!r}" for k, v in extra.items())]
    sensor = {**{f"{ch}_sd": v for ch, v in truth.noise.items()},
              **({"ar1": spec.noise_ar1} if spec.noise_ar1 else {}),
              **({"q_resolution": spec.q_resolution} if spec.q_resolution else {})}
    if sensor:
        lines += ["", "[sensor]", *(f"{k} = {float(v)!r}" for k, v in sensor.items())]
    Path(path).write_text("\n".join(lines) + "\n")


class EmulatedRobot:
    """A robot producing telemetry chunks: rows k hold time k·dt, the noisy state before command k
    acts, and command k (the Trajectory convention).

    noise {"q": rad, "qd": rad/s, <MJCF sensor>: its unit}: sensor noise sds (white and Gaussian on
    the MJCF sensors' readings, which pass through the truth's sensor models). `misspecified` adds
    what the twin's model class lacks (twin_bayes.sim.truth): friction loss and backlash in the
    native robot, AR(1)-coloured noise (same marginal sds), and positions reported as
    round(q / Δ) · Δ after the noise.
    """

    def __init__(self, robot: Robot, truth: Mapping[str, float], seed: int = 0,
                 noise: Mapping[str, float] | None = None, drifts: tuple[Drift, ...] = (),
                 misspecified: Misspecification | None = None) -> None:
        for d in drifts:
            if d.name not in robot.param_names:
                raise ValueError(f"drift: {robot.name} has no parameter {d.name!r}")
        self.robot, self.seed = robot, seed
        self.truth = dict(truth)
        self.noise = {"q": 0.002, "qd": 0.02} if noise is None else dict(noise)
        self.misspecified = misspecified or Misspecification()
        self.drifts = sorted(drifts, key=lambda d: d.at_s)
        self.native = NativeRobot(robot, self.truth, np.array(robot.mj_model.qpos0), np.zeros(robot.nv),
                                  misspecified=self.misspecified)
        self.rng = np.random.default_rng(seed + 10_000)
        self.last_noise: dict[str, np.ndarray | None] = {"q": None, "qd": None}
        self.step_index = 0

    @property
    def settings(self) -> dict[str, float]:
        """The known constants the robot runs with (its actuator's settings, e.g. servo_kp), as told to the twin."""
        kinds = self.robot.actuator.settings
        return {s.name: self.truth[s.name] for s in self.robot.specs if s.kind in kinds}

    def _apply_due_drifts(self) -> None:
        while self.drifts and self.drifts[0].at_s <= self.step_index * self.robot.dt + 1e-12:
            d = self.drifts.pop(0)
            self.truth[d.name] *= d.factor
            self.native.set_params(self.truth)

    def _steps_before_drift(self, most: int) -> int:
        """Steps to take before the next drift is due: 1..most."""
        if not self.drifts:
            return most
        due = math.ceil(self.drifts[0].at_s / self.robot.dt - 1e-9)
        return min(most, max(1, due - self.step_index))

    def commands(self, start: int, n: int) -> np.ndarray:
        """The commands (n, nu) of steps start..start+n-1: the robot's excitation, known in advance."""
        return excitation(self.robot, n, self.seed, start=start)

    def chunk(self, n: int) -> dict:
        """The next n samples: t (n,) s, q (n, nq), qd (n, nv), ctrl (n, nu), and sensors {name: (n, dim)}
        for the MJCF's sensors (row k read at state k under command k, as `sim.emulator.emulate` reads them)."""
        r, k0 = self.robot, self.step_index
        u = self.commands(k0, n)
        q, qd = np.empty((n, r.nq)), np.empty((n, r.nv))
        readings = np.empty((n, r.mj_model.nsensordata))
        done = 0
        while done < n:  # in pieces that end where a drift is due
            self._apply_due_drifts()
            upto = done + self._steps_before_drift(n - done)
            q[done], qd[done] = self.native.measure()
            qa, qda = self.native.step(u[done:upto])
            q[done + 1:upto], qd[done + 1:upto] = qa[:-1], qda[:-1]
            readings[done:upto] = self.native.sensordata
            self.step_index += upto - done
            done = upto
        spec = self.misspecified
        for name, x in (("q", q), ("qd", qd)):
            e = colored_noise(self.rng, self.last_noise[name], n, x.shape[1], self.noise.get(name, 0.0),
                              spec.noise_ar1)
            x += e
            self.last_noise[name] = e[-1]
        if spec.q_resolution:
            q = np.round(q / spec.q_resolution) * spec.q_resolution
        sensors = {s.name: readings[:, s.adr:s.adr + s.dim] + self.noise.get(s.name, 0.0)
                   * self.rng.standard_normal((n, s.dim)) for s in r.layout.sensors.sensors}
        return {"t": (k0 + np.arange(n)) * r.dt, "q": q, "qd": qd, "ctrl": u, "sensors": sensors}


def stream(emulated: EmulatedRobot, link: RobotLink, seconds: float, chunk_samples: int,
           rate_hz: float | None = None, ack_timeout_s: float = 30.0, plan_steps: int = 0) -> int:
    """Step and send `seconds` of telemetry in chunks; returns the number of chunks sent.

    rate_hz: samples per wall-clock second (None: the robot's real time 1/dt; 0: as fast as acks
    allow). A chunk leaves once the wall clock has reached its last sample, as on a real robot.
    plan_steps > 0: each chunk carries the next plan_steps commands as its plan, starting one
    sample after the chunk's last (docs/PROTOCOL.md, "Plans").
    Waits up to `ack_timeout_s` at the end for the last acks (LinkTimeout if they do not come).
    """
    rate = 1.0 / emulated.robot.dt if rate_hz is None else rate_hz
    total = int(round(seconds / emulated.robot.dt))
    start, sent = None, 0
    while emulated.step_index < total:
        arrays = emulated.chunk(min(chunk_samples, total - emulated.step_index))
        if start is None:  # the clock starts once the first chunk is ready (the first steps compile)
            start = time.monotonic() - (emulated.step_index / rate if rate > 0 else 0.0)
        if rate > 0:
            link.wait_until(start + emulated.step_index / rate)
        k = emulated.step_index
        plan = {"plan": emulated.commands(k, plan_steps), "plan_t0": k * emulated.robot.dt} if plan_steps else {}
        link.send(**arrays, settings=emulated.settings, timeout_s=ack_timeout_s, **plan)
        link.poll()
        sent += 1
    link.drain(ack_timeout_s)
    return sent
