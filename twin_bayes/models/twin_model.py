"""The NumPyro model of a twin: priors on named parameters and a multiple-shooting likelihood.

Inference works in unconstrained space: a flat vector z (D,) holds the
estimated parameters (in config order) followed by one noise scale per
observed channel. `TwinModel` gives the pure pieces the engines compose:
`log_prior(z)`, `log_lik(z, window)`, `constrain(z)`, and `numpyro_model`
built from the same pieces for NumPyro's NUTS and SVI.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from twin_bayes.config import PriorSpec, TwinConfig
from twin_bayes.sim import Robot, segment, shoot
from twin_bayes.sim.rollout import rollout


class WindowError(ValueError):
    """Telemetry that cannot enter the posterior: names the problem; nothing is changed."""


class Window(NamedTuple):
    """A telemetry window padded to the twin's fixed length T (so updates never recompile).

    q (T, nq) rad, qd (T, nv) rad/s, ctrl (T, nu) commands (row k acts during step k),
    mask (T,) 1.0 for real samples, 0.0 for padding; settings (K,) per-recording
    actuator settings (e.g. firmware gain, supply voltage) in `TwinModel.setting_names` order.
    """

    q: jnp.ndarray
    qd: jnp.ndarray
    ctrl: jnp.ndarray
    mask: jnp.ndarray
    settings: jnp.ndarray


def prior_distribution(spec: PriorSpec, nominal: float) -> dist.Distribution:
    loc = nominal if spec.loc is None else spec.loc
    if spec.dist == "lognormal":
        return dist.LogNormal(math.log(loc), spec.scale)
    if spec.dist == "normal":
        return dist.Normal(loc, spec.scale)
    if spec.dist == "truncnormal":
        return dist.TruncatedNormal(loc, spec.scale, low=spec.low, high=spec.high)
    return dist.Uniform(spec.low, spec.high)


class TwinModel:
    """Priors, transforms and the multiple-shooting Student-t likelihood of one twin config."""

    def __init__(self, cfg: TwinConfig, robot: Robot | None = None):
        self.cfg = cfg
        self.robot = robot or cfg.load_robot()
        r, obs, inf = self.robot, cfg.observation, cfg.inference
        nominal = r.nominal()
        self.param_names = tuple(cfg.parameters)
        self.noise_names = tuple(f"noise:{c}" for c in obs.channels)
        self.names = self.param_names + self.noise_names
        self.priors = tuple(prior_distribution(cfg.parameters[n], nominal[n]) for n in self.param_names) + tuple(
            dist.LogNormal(math.log(obs.noise_scale[c]), obs.noise_prior_scale) for c in obs.channels)
        self.transforms = tuple(biject_to(d.support) for d in self.priors)
        self.free_idx = tuple(r.layout.index[n] for n in self.param_names)
        # Settings known per recording: every actuator's kinds listed by the actuator model.
        self.setting_names = tuple(s.name for s in r.specs if s.kind in r.actuator.settings)
        self.setting_idx = np.array([r.layout.index[n] for n in self.setting_names], dtype=np.int64)
        base = dict(nominal)
        base.update(cfg.settings)
        self.base_theta = r.to_vector(base)
        self.default_settings = np.array([base[n] for n in self.setting_names], dtype=np.float64)
        self.window_samples = int(round(inf.window_s / r.dt)) + 1
        self.segment_steps = inf.segment_steps
        if self.window_samples - 1 < self.segment_steps:
            raise ValueError(f"{cfg.name}: window_s = {inf.window_s} s is shorter than one segment "
                             f"({self.segment_steps} steps of {r.dt} s)")
        self.history = int(math.ceil(inf.max_latency_s / r.dt)) + 1
        self.channels = obs.channels
        self.df = obs.df if obs.noise == "student_t" else None

    @property
    def dim(self) -> int:
        return len(self.names)

    # --- unconstrained <-> constrained -------------------------------------------------
    def constrain(self, z: jnp.ndarray) -> jnp.ndarray:
        """Constrained values (D,) of unconstrained z (D,)."""
        return jnp.stack([t(z[i]) for i, t in enumerate(self.transforms)])

    def unconstrain(self, values: jnp.ndarray) -> jnp.ndarray:
        return jnp.stack([t.inv(values[i]) for i, t in enumerate(self.transforms)])

    def log_prior(self, z: jnp.ndarray) -> jnp.ndarray:
        """log p(z): prior densities of the constrained values plus the log-Jacobians."""
        total = 0.0
        for i, (d, t) in enumerate(zip(self.priors, self.transforms)):
            x = t(z[i])
            total = total + d.log_prob(x) + t.log_abs_det_jacobian(z[i], x)
        return total

    def sample_prior(self, key: jax.Array, n: int) -> jnp.ndarray:
        """n prior draws in unconstrained space (n, D)."""
        keys = jax.random.split(key, len(self.priors))
        cols = [t.inv(d.sample(k, (n,))) for k, d, t in zip(keys, self.priors, self.transforms)]
        return jnp.stack(cols, axis=-1)

    def theta(self, values: jnp.ndarray, settings: jnp.ndarray) -> jnp.ndarray:
        """Full robot parameter vector (P,) from constrained values (D,) and settings (K,)."""
        th = self.base_theta.at[np.asarray(self.free_idx)].set(values[: len(self.free_idx)])
        return th.at[self.setting_idx].set(settings)

    def noise(self, values: jnp.ndarray) -> dict[str, jnp.ndarray]:
        return {c: values[len(self.free_idx) + i] for i, c in enumerate(self.channels)}

    # --- likelihood -----------------------------------------------------------------------
    def _obs_logpdf(self, pred, obs, scale):
        if self.df is None:
            return dist.Normal(pred, scale).log_prob(obs)
        return dist.StudentT(self.df, pred, scale).log_prob(obs)

    def log_lik(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        """Multiple-shooting log-likelihood of window w: segments from their observed start states."""
        values = self.constrain(z)
        theta = self.theta(values, w.settings)
        L = self.segment_steps
        q0, qd0, u, q_tgt, qd_tgt = segment(w.q, w.qd, w.ctrl, L, self.history)
        q, qd = shoot(self.robot, theta, q0, qd0, u, self.history, free=self.free_idx, state_grad=False)
        n = q.shape[0]
        mask = w.mask[1: 1 + n * L].reshape(n, L)
        noise = self.noise(values)
        total = 0.0
        for c, pred, obs in (("q", q, q_tgt), ("qd", qd, qd_tgt)):
            if c in self.channels:
                total = total + jnp.sum(mask * self._obs_logpdf(pred, obs, noise[c]).sum(-1))
        return total

    def log_density(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        return self.log_prior(z) + self.log_lik(z, w)

    def numpyro_model(self, windows: Window):
        """NumPyro model over a batch of windows (leading axis B): priors + summed likelihood."""
        values = jnp.stack([numpyro.sample(n, d) for n, d in zip(self.names, self.priors)])
        z = self.unconstrain(values)
        numpyro.factor("log_lik", jnp.sum(jax.vmap(lambda w: self.log_lik(z, w))(windows)))

    # --- prediction -----------------------------------------------------------------------
    def predict_clean(self, z: jnp.ndarray, q0, qd0, commands, settings) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Noise-free rollout (T, nq), (T, nv) of one particle from a measured state."""
        theta = self.theta(self.constrain(z), settings)
        return rollout(self.robot, theta, q0, qd0, commands)

    # --- windows --------------------------------------------------------------------------
    def window(self, q, qd, ctrl, settings: dict[str, float] | None = None) -> Window:
        """Validate telemetry arrays and pad them to the fixed window length.

        Raises WindowError (nothing changes) for wrong shapes, non-finite values,
        too few samples for one segment, or more samples than a window holds.
        """
        r, T = self.robot, self.window_samples
        arrays = {"q": (q, r.nq), "qd": (qd, r.nv), "ctrl": (ctrl, r.nu)}
        out = {}
        for name, (a, width) in arrays.items():
            try:
                a = np.asarray(a, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise WindowError(f"{name}: not a numeric array ({err})") from None
            if a.ndim != 2 or a.shape[1] != width:
                raise WindowError(f"{name}: expected shape (T, {width}), got {a.shape}")
            bad = np.nonzero(~np.isfinite(a).all(axis=1))[0]
            if len(bad):
                raise WindowError(f"{name}: non-finite values at rows {bad[:10].tolist()}")
            out[name] = a
        n = {len(a) for a in out.values()}
        if len(n) != 1:
            raise WindowError(f"q, qd and ctrl disagree in length: {[len(a) for a in out.values()]}")
        n = n.pop()
        if n < self.segment_steps + 1:
            raise WindowError(f"window has {n} samples; at least {self.segment_steps + 1} needed (one segment)")
        if n > T:
            raise WindowError(f"window has {n} samples; this twin's windows hold {T} "
                              f"(inference.window_s = {self.cfg.inference.window_s} s): split it")
        pad = T - n
        padded = {k: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for k, a in out.items()}
        mask = np.concatenate([np.ones(n), np.zeros(pad)])
        return Window(jnp.asarray(padded["q"]), jnp.asarray(padded["qd"]), jnp.asarray(padded["ctrl"]),
                      jnp.asarray(mask), jnp.asarray(self.settings_vector(settings)))

    def settings_vector(self, settings: dict[str, float] | None) -> np.ndarray:
        """Settings (K,) from a recording's settings: keys are kinds ('servo_kp') or full names."""
        vec = self.default_settings.copy()
        for i, name in enumerate(self.setting_names):
            kind = name.split(":")[0]
            for key in (name, kind):
                if settings and key in settings:
                    vec[i] = float(settings[key])
                    break
        return vec
