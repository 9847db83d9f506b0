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
from twin_bayes.sim import Robot
from twin_bayes.sim.rollout import segment, shoot, simulate


class WindowError(ValueError):
    """Telemetry that cannot enter the posterior: names the problem; nothing is changed."""


class Window(NamedTuple):
    """A telemetry window padded to the twin's fixed length T (so updates never recompile).

    q (T, nq) rad, qd (T, nv) rad/s, ctrl (T, nu) commands (row k acts during step k),
    mask (T,) 1.0 for real samples, 0.0 for padding; settings (K,) per-recording
    actuator settings (e.g. firmware gain, supply voltage) in `TwinModel.setting_names` order;
    state_jac (S, L·C, nq + nv): sensitivity of each segment's predicted
    observations to its start state, at a reference parameter value
    (`TwinModel.with_state_jacobian`), used to account for the noise of the
    measured start states; start (S, nq + nv): where each segment's start state
    is linearised, as an offset from the measured start (rad, m, rad/s; zeros
    from `TwinModel.window`, each segment's estimate after the window's Newton
    search, `inference.laplace`); weight () the power of the window's likelihood (1 for
    telemetry; the streaming engine sets 1/κ, κ the residuals' autocorrelation
    time, `inference.engine`); sensors (T, R) the observed MJCF sensors' readings (`TwinModel.sensors`
    in order, each its sensordata columns; row k read at state k under command k, docs/SENSORS.md).
    """

    q: jnp.ndarray
    qd: jnp.ndarray
    ctrl: jnp.ndarray
    mask: jnp.ndarray
    settings: jnp.ndarray
    state_jac: jnp.ndarray
    start: jnp.ndarray
    weight: jnp.ndarray
    sensors: jnp.ndarray


@jax.jit
def state_jacobian_jit(model: "TwinModel", z, w: Window):
    return model.state_jacobian(z, w)


def map_rows(f, shared: tuple, *rows):
    """f(*shared, *row) for each row of rows (arrays or pytrees with a leading axis R), stacked: `jax.vmap`,
    except that for R = 1 f is called once on the row itself, which spares tracing a batching pass
    over the simulator (a streaming update holds one window of one robot)."""
    if jax.tree.leaves(rows)[0].shape[0] == 1:
        return jax.tree.map(lambda x: x[None], f(*shared, *jax.tree.map(lambda x: x[0], rows)))
    return jax.vmap(lambda *row: f(*shared, *row))(*rows)


def batch_log_lik(model: "TwinModel", z, windows: Window):
    """Summed log-likelihood of windows stacked on a leading axis (B, ...) at z (D,)."""
    return jnp.sum(map_rows(model.log_lik, (z,), windows))


# One executable, also where NumPyro runs a model outside jit (an autoguide's set-up, initialisation).
batch_log_lik_jit = jax.jit(batch_log_lik)


def prior_distribution(spec: PriorSpec, nominal: float) -> dist.Distribution:
    loc = nominal if spec.loc is None else spec.loc
    if spec.dist == "lognormal":
        return dist.LogNormal(math.log(loc), spec.scale)
    if spec.dist == "normal":
        return dist.Normal(loc, spec.scale)
    if spec.dist == "truncnormal":
        return dist.TruncatedNormal(loc, spec.scale, low=spec.low, high=spec.high)
    return dist.Uniform(spec.low, spec.high)


class Design(NamedTuple):
    """What a twin's compiled code depends on: the robot, names, shapes and model kinds.

    Hashed by value (the robot by identity: `load_robot` returns one object per MJCF and
    actuator model), so two configs of one robot whose numbers differ share executables.
    """

    robot: Robot
    param_names: tuple[str, ...]
    noise_names: tuple[str, ...]
    prior_kinds: tuple[str, ...]          # per name: lognormal | normal | truncnormal | uniform
    free_idx: tuple[int, ...]
    setting_names: tuple[str, ...]
    setting_idx: tuple[int, ...]
    window_samples: int
    segment_steps: int
    history: int
    channels: tuple[str, ...]
    sensors: tuple[str, ...]
    readings: tuple[int, ...]
    unscored_rows: tuple[int, ...]        # per reading column: rows at each segment's start not scored
    student_t: bool
    particles: int


class Numbers(NamedTuple):
    """Every number of a config that compiled code reads, as traced arrays (D names, P robot parameters).

    prior_loc, prior_scale (D,): log-median and log-sd (lognormal) or mean and sd (normal, truncnormal);
    prior_low, prior_high (D,): bounds (truncnormal, uniform; ±inf elsewhere); base_theta (P,): the
    robot's parameter vector with the config's fixed settings; default_settings (K,); drift (D,):
    random-walk sd per window (unconstrained units); df: Student-t degrees of freedom; the rest are
    the update gate's and drift detector's thresholds, whether Laplace proposals are used,
    whether streaming windows are tempered by their residuals' autocorrelation and whether their start
    states are searched (`InferenceSection`).
    """

    prior_loc: jnp.ndarray
    prior_scale: jnp.ndarray
    prior_low: jnp.ndarray
    prior_high: jnp.ndarray
    base_theta: jnp.ndarray
    default_settings: jnp.ndarray
    drift: jnp.ndarray
    df: jnp.ndarray
    target_ess: jnp.ndarray
    min_ess: jnp.ndarray
    max_divergent: jnp.ndarray
    drift_sigma: jnp.ndarray
    drift_windows: jnp.ndarray
    max_stages: jnp.ndarray
    min_moves: jnp.ndarray
    max_moves: jnp.ndarray
    move_correlation: jnp.ndarray
    laplace: jnp.ndarray
    temper: jnp.ndarray
    start_search: jnp.ndarray


def _prior_numbers(spec: PriorSpec, nominal: float) -> tuple[str, float, float, float, float]:
    loc = nominal if spec.loc is None else spec.loc
    low = -math.inf if spec.low is None else spec.low
    high = math.inf if spec.high is None else spec.high
    if spec.dist == "lognormal":
        return spec.dist, math.log(loc), spec.scale, -math.inf, math.inf
    return spec.dist, loc, spec.scale, low, high


def _steps(seconds: float, dt: float) -> int:
    """Whole steps of dt that a delay of `seconds` reaches back over, ⌈seconds / dt⌉."""
    return int(math.ceil(seconds / dt - 1e-9))


def _unscored_rows(cfg: TwinConfig, robot: Robot, base: dict) -> tuple[int, ...]:
    """Per observed sensordata column, how many rows at each segment's start go unscored.

    A sensor delayed by τ reports at row k the reading of time k·dt − τ; for k·dt < τ that time
    precedes the segment's start, where the segment has no simulation (its start state is measured,
    its past is not), so those rows cannot be predicted. They are left out for every value the delay
    may take: ⌈max_latency_s / dt⌉ rows where the delay is estimated (its prior lies within
    `inference.max_latency_s`, `config`), ⌈τ / dt⌉ where it is fixed at τ, none for an undelayed sensor.
    """
    rows = []
    for name in cfg.observation.sensors:
        delay = f"delay_s:{name}"
        bound = cfg.inference.max_latency_s if delay in cfg.parameters else base[delay]
        rows += [_steps(bound, robot.dt)] * robot.layout.sensors.by_name[name].dim
    return tuple(rows)


@jax.tree_util.register_pytree_node_class
class TwinModel:
    """Priors, transforms and the multiple-shooting Student-t likelihood of one twin config.

    A pytree: its leaves are the config's numbers (`Numbers`, traced under `jax.jit`), its
    static part the `Design`. Inside compiled code `cfg` is None: nothing there may read it.
    """

    def __init__(self, cfg: TwinConfig, robot: Robot | None = None):
        robot = robot or cfg.load_robot()
        r, obs, inf = robot, cfg.observation, cfg.inference
        nominal = r.nominal()
        param_names = tuple(cfg.parameters)
        priors = [_prior_numbers(cfg.parameters[n], nominal[n]) for n in param_names] + [
            ("lognormal", math.log(obs.noise_scale[c]), obs.noise_prior_scale, -math.inf, math.inf)
            for c in obs.channels + obs.sensors]
        # Settings known per recording: every actuator's kinds listed by the actuator model.
        setting_names = tuple(s.name for s in r.specs if s.kind in r.actuator.settings)
        base = dict(nominal)
        base.update(cfg.settings)
        window_samples = int(round(inf.window_s / r.dt)) + 1
        if window_samples - 1 < inf.segment_steps:
            raise ValueError(f"{cfg.name}: window_s = {inf.window_s} s is shorter than one segment "
                             f"({inf.segment_steps} steps of {r.dt} s)")
        self.cfg = cfg
        self.design = Design(
            r, param_names, tuple(f"noise:{c}" for c in obs.channels + obs.sensors), tuple(p[0] for p in priors),
            tuple(r.layout.index[n] for n in param_names), setting_names,
            tuple(r.layout.index[n] for n in setting_names), window_samples, inf.segment_steps,
            _steps(inf.max_latency_s, r.dt) + 1, tuple(obs.channels), tuple(obs.sensors),
            tuple(r.layout.sensors.columns(obs.sensors).tolist()), _unscored_rows(cfg, r, base),
            obs.noise == "student_t", inf.particles)
        f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
        drift = [cfg.parameters[n].drift for n in param_names] + [0.0] * len(obs.channels + obs.sensors)
        self.numbers = Numbers(
            *(f64([p[i] for p in priors]) for i in range(1, 5)), np.asarray(r.to_vector(base)),
            f64([base[n] for n in setting_names]), f64(drift), f64(obs.df), f64(inf.target_ess),
            f64(inf.min_ess), f64(inf.max_divergent), f64(inf.drift_sigma), np.int64(inf.drift_windows),
            np.int64(inf.max_stages), np.int64(inf.mcmc_steps), np.int64(inf.max_mcmc_steps),
            f64(inf.move_correlation), np.bool_(inf.laplace), np.bool_(inf.autocorrelation),
            np.bool_(inf.start_search))

    # --- pytree ------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.numbers,), self.design

    @classmethod
    def tree_unflatten(cls, design: Design, children) -> "TwinModel":
        m = object.__new__(cls)
        m.cfg, m.design, m.numbers = None, design, children[0]
        return m

    def with_numbers(self, **changes) -> "TwinModel":
        """The same design with some of its traced numbers (`Numbers` fields) replaced: jitted code runs it
        with the executables it compiled for this model."""
        return type(self).tree_unflatten(self.design, (self.numbers._replace(**changes),))

    def __getattr__(self, name):     # the design's fields read as the model's own
        if name in Design._fields:
            return getattr(self.__dict__["design"], name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return self.param_names + self.noise_names

    @property
    def base_theta(self) -> jnp.ndarray:
        return self.numbers.base_theta

    @property
    def default_settings(self) -> np.ndarray:
        return np.asarray(self.numbers.default_settings)

    @property
    def df(self):
        """Student-t degrees of freedom, None for normal noise."""
        return self.numbers.df if self.student_t else None

    @property
    def dim(self) -> int:
        return len(self.names)

    def prior(self, i: int) -> dist.Distribution:
        """The prior distribution of name i (constrained space), built from the traced numbers."""
        n, kind = self.numbers, self.prior_kinds[i]
        loc, scale, low, high = n.prior_loc[i], n.prior_scale[i], n.prior_low[i], n.prior_high[i]
        if kind == "lognormal":
            return dist.LogNormal(loc, scale)
        if kind == "normal":
            return dist.Normal(loc, scale)
        if kind == "truncnormal":
            return dist.TruncatedNormal(loc, scale, low=low, high=high)
        return dist.Uniform(low, high)

    @property
    def priors(self) -> tuple[dist.Distribution, ...]:
        return tuple(self.prior(i) for i in range(self.dim))

    @property
    def transforms(self):
        """Bijections from unconstrained space onto each prior's support."""
        return tuple(biject_to(d.support) for d in self.priors)

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
        th = jnp.asarray(self.base_theta).at[np.asarray(self.free_idx)].set(values[: len(self.free_idx)])
        return th.at[np.asarray(self.setting_idx, dtype=np.int64)].set(settings)

    def noise(self, values: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """{channel or sensor name: noise scale} from constrained values (D,)."""
        return {c: values[len(self.free_idx) + i] for i, c in enumerate(self.channels + self.sensors)}

    # --- likelihood -----------------------------------------------------------------------
    def _segments(self, w: Window):
        """`sim.rollout.segment`'s (q0, qd0, commands, q_target, qd_target), with each start state moved to
        its linearisation point (measured + `w.start`), and the sensor targets (S, L, R): rows
        k·steps … k·steps + L − 1, read on the segment's steps."""
        q0, qd0, *rest = segment(w.q, w.qd, w.ctrl, self.segment_steps, self.history)
        n, L, nq = q0.shape[0], self.segment_steps, self.robot.nq
        return (q0 + w.start[:, :nq], qd0 + w.start[:, nq:], *rest,
                w.sensors[(jnp.arange(n) * L)[:, None] + jnp.arange(L)[None, :]])

    def _shoot(self, theta, q0, qd0, u, state_grad: bool):
        """Segment predictions (q (S, L, nq), qd (S, L, nv), readings (S, L, R))."""
        return self._with_readings(shoot(self.robot, theta, q0, qd0, u, self.history, free=self.free_idx,
                                         state_grad=state_grad, readings=self.readings))

    def _with_readings(self, out: tuple) -> tuple:
        """A simulation's (q (..., nq), qd (..., nv), readings (..., R)): zero reading columns appended where the
        twin observes no sensor, so every twin's predictions have the same structure."""
        return out if self.readings else out + (jnp.zeros(out[0].shape[:-1] + (0,), out[0].dtype),)

    def _observed(self, q, qd, s, axis: int = -1):
        """Stack the observed channels along axis: (..., L, C) with C = nq and/or nv columns, then the R
        sensor columns (axis −2 for Jacobians (..., L, C, K))."""
        parts = {"q": q, "qd": qd}
        return jnp.concatenate([parts[c] for c in self.channels] + [s], axis=axis)

    def scored_readings(self, rows: int) -> np.ndarray:
        """(rows, R) bool: which reading rows of a prediction from a measured start are scored, row k of a
        column iff k ≥ its `unscored_rows` (a delayed sensor's earlier rows reach before the start)."""
        return np.arange(rows)[:, None] >= np.asarray(self.unscored_rows, np.int64).reshape(1, -1)

    @property
    def sensor_widths(self) -> tuple[int, ...]:
        """Columns per observed sensor."""
        return tuple(self.robot.layout.sensors.by_name[n].dim for n in self.sensors)

    @property
    def observed_width(self) -> int:
        """Observed columns per sample, C: the channels' and the sensors'."""
        return sum(self.robot.nq if c == "q" else self.robot.nv for c in self.channels) + len(self.readings)

    def state_jacobian(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        """d(observed segment predictions)/d(start state): (S, L·C, nq + nv), at parameters z
        (from `linearised_predictions`, the one forward-mode pass)."""
        return self.linearised_predictions(z, w)[2]

    def with_state_jacobian(self, w: Window, z_ref: jnp.ndarray) -> Window:
        return w._replace(state_jac=jax.lax.stop_gradient(state_jacobian_jit(self, z_ref, w)))

    def segment_predictions(self, z: jnp.ndarray, w: Window) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Multiple-shooting predictions q (S, L, nq), qd (S, L, nv), sensor readings (S, L, R): each
        segment simulated from its start state's linearisation point (`Window.start`) at parameters z (D,)."""
        theta = self.theta(self.constrain(z), w.settings)
        q0, qd0, u = self._segments(w)[:3]
        return self._shoot(theta, q0, qd0, u, state_grad=False)

    def linearised_predictions(self, z: jnp.ndarray, w: Window):
        """Segment predictions at z (D,) with their sensitivities, from one forward-mode pass.

        Returns (q (S, L, nq), qd (S, L, nv), readings (S, L, R)), their Jacobians in z ((S, L, nq, D),
        (S, L, nv, D), (S, L, R, D); zero in the noise scales), and the sensitivity of the observed
        predictions to each segment's start state (S, L·C, nq + nv), laid out as `Window.state_jac`. The
        start-state tangents shift every segment's start at once; segments are independent, so each sees
        only its own.
        """
        r, d, p = self.robot, z.shape[0], len(self.free_idx)
        q0, qd0, u = self._segments(w)[:3]

        def predict(x, dq0, dqd0):       # the noise scales (z[p:]) do not enter the predictions
            theta = self.theta(self.constrain(z.at[:p].set(x)), w.settings)
            return self._shoot(theta, q0 + dq0, qd0 + dqd0, u, state_grad=True)

        primal = (z[:p], jnp.zeros(r.nq, z.dtype), jnp.zeros(r.nv, z.dtype))
        eye = jnp.eye(p + r.nq + r.nv, dtype=z.dtype)
        pred, jac = jax.vmap(lambda e: jax.jvp(predict, primal, (e[:p], e[p:p + r.nq], e[p + r.nq:])),
                             out_axes=(None, -1))(eye)
        n, L = jac[0].shape[0], jac[0].shape[1]
        state_jac = self._observed(*(j[..., p:] for j in jac), axis=-2).reshape(n, L * self.observed_width, -1)
        in_z = lambda j: jnp.concatenate([j[..., :p], jnp.zeros(j.shape[:-1] + (d - p,), j.dtype)], -1)  # noqa: E731
        return pred, tuple(in_z(j) for j in jac), state_jac

    def log_lik(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        """Multiple-shooting log-likelihood of window w at parameters z (D,)."""
        return self.segment_log_lik(z, *self.segment_predictions(z, w), w)

    def _residuals(self, z: jnp.ndarray, q: jnp.ndarray, qd: jnp.ndarray, s: jnp.ndarray, w: Window):
        """Each segment's residuals from its predictions q (S, L, nq), qd (S, L, nv), readings (S, L, R):
        targets − predictions (S, L·C) (0 where masked), the mask (S, L·C), per-sample noise variances
        d (S, L·C) and the start-state variances Σ0 (nq + nv,) at z (D,)."""
        r = self.robot
        noise = self.noise(self.constrain(z))
        _, _, _, q_tgt, qd_tgt, s_tgt = self._segments(w)
        n, L = q.shape[0], self.segment_steps
        widths = [r.nq if c == "q" else r.nv for c in self.channels]
        var_col = jnp.concatenate([jnp.full(k, noise[c] ** 2) for c, k in zip(self.channels, widths)]
                                  + [jnp.full(k, noise[c] ** 2) for c, k in zip(self.sensors, self.sensor_widths)])
        state_rows = w.mask[1: 1 + n * L].reshape(n, L, 1)           # states k·steps + 1 …, readings k·steps …
        read_rows = w.mask[: n * L].reshape(n, L, 1) * self.scored_readings(L)      # (S, L, R): delayed rows out
        mask = jnp.concatenate([jnp.broadcast_to(state_rows, (n, L, sum(widths))), read_rows], -1).reshape(n, -1)
        resid = (self._observed(q_tgt, qd_tgt, s_tgt) - self._observed(q, qd, s)).reshape(n, -1) * mask
        d = jnp.where(mask > 0, jnp.tile(var_col, L)[None, :], 1.0)                       # (S, L·C)
        return resid, mask, d, self.start_variance(noise)

    def start_variance(self, noise) -> jnp.ndarray:
        """Σ0 (nq + nv,): the variance of a measured start state, from the noise scales {channel: scale}
        (rad, m; rad/s): the q channel's² on positions, the qd channel's² on velocities, 1e-12 where
        unobserved."""
        r = self.robot
        return jnp.concatenate([jnp.full(r.nq, noise["q"] ** 2 if "q" in noise else 1e-12),
                                jnp.full(r.nv, noise["qd"] ** 2 if "qd" in noise else 1e-12)])

    def _segment_noise(self, z: jnp.ndarray, q: jnp.ndarray, qd: jnp.ndarray, s: jnp.ndarray, w: Window):
        """The terms of each segment's joint noise model given its predictions q (S, L, nq), qd (S, L, nv),
        readings (S, L, R) from its start's linearisation point:
        residuals (S, L·C) (0 where masked) of the predictions linearised in the start offset e about
        w.start, y − f(start) + J·start, the mask (S, L·C), per-sample noise variances d (S, L·C), the
        start-state variances (nq + nv,), the masked start-state sensitivity J (S, L·C, nq + nv), the
        Cholesky factor of A = Σ0⁻¹ + Jᵀ D⁻¹ J (S, r, r) and Jᵀ D⁻¹ resid (S, r)."""
        resid, mask, d, start_var = self._residuals(z, q, qd, s, w)
        jac = w.state_jac * mask[..., None]                                              # (S, L·C, r)
        resid = resid + jnp.einsum("spi,si->sp", jac, w.start)
        jd = jac / d[..., None]
        a = jnp.diag(1.0 / start_var)[None] + jnp.einsum("spi,spj->sij", jac, jd)         # (S, r, r)
        return resid, mask, d, start_var, jac, jnp.linalg.cholesky(a), jnp.einsum("spi,sp->si", jd, resid)

    def _joint_log_density(self, delta: jnp.ndarray, logdet: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
        """Per segment (S,): the log density of its p scored observations, jointly normal (or Student-t) with
        squared Mahalanobis distance delta and log-determinant logdet of their scale; 0 where p = 0."""
        if self.df is None:
            ll = -0.5 * (delta + logdet + p * jnp.log(2 * jnp.pi))
        else:
            nu = self.df
            ll = (jax.scipy.special.gammaln((nu + p) / 2) - jax.scipy.special.gammaln(nu / 2)
                  - 0.5 * p * jnp.log(nu * jnp.pi) - 0.5 * logdet - 0.5 * (nu + p) * jnp.log1p(delta / nu))
        return jnp.where(p > 0, ll, 0.0)

    def segment_log_lik(self, z: jnp.ndarray, q: jnp.ndarray, qd: jnp.ndarray, s: jnp.ndarray,
                        w: Window) -> jnp.ndarray:
        """Log-likelihood of window w given its segment predictions q (S, L, nq), qd (S, L, nv), readings
        (S, L, R) from each start's linearisation point `w.start`, to the power w.weight.

        A segment's true start state is its measured one plus an offset e ~ N(0, Σ0) (the sensor
        noise of the observations). Its predictions f(e) are linearised about the offset `w.start`,
        f(e) ≈ f(start) + J (e − start), J = `w.state_jac`, so its observations y (L·C,) are jointly
        Student-t (or normal) about f(start) − J·start with scale D + J Σ0 Jᵀ: D the per-sample
        noise (Woodbury identities, so the cost stays O(L·C)). At start = 0 this linearises about
        the measured start; at the offset's mode (`inference.laplace.find_starts`) it is the Laplace
        approximation of the likelihood with each start state marginalised, which stays close where
        contacts make f far from linear over Σ0.
        """
        resid, mask, d, start_var, _, chol, b = self._segment_noise(z, q, qd, s, w)
        y = jax.scipy.linalg.solve_triangular(chol, b[..., None], lower=True)[..., 0]
        delta = jnp.sum(resid ** 2 / d, -1) - jnp.sum(y ** 2, -1)
        logdet = (jnp.sum(jnp.log(d), -1) + jnp.sum(jnp.log(start_var))
                  + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1))
        return w.weight * jnp.sum(self._joint_log_density(delta, logdet, jnp.sum(mask, -1)))

    def start_log_density(self, z: jnp.ndarray, q: jnp.ndarray, qd: jnp.ndarray, s: jnp.ndarray, w: Window,
                          step=None) -> jnp.ndarray:
        """Per segment (S,): log p(y | e, z) + log N(e; 0, Σ0) of its start offset e = w.start (+ step
        (S, nq + nv)) from its measured start, untempered, given its predictions from w.start
        (q (S, L, nq), qd (S, L, nv), readings (S, L, R)) at z (D,); with a step, the predictions moved
        to first order along `w.state_jac` (their sensitivity at w.start)."""
        resid, mask, d, start_var = self._residuals(z, q, qd, s, w)
        e = w.start
        if step is not None:
            resid, e = resid - jnp.einsum("spi,si->sp", w.state_jac * mask[..., None], step), e + step
        ll = self._joint_log_density(jnp.sum(resid ** 2 / d, -1), jnp.sum(jnp.log(d), -1), jnp.sum(mask, -1))
        return ll - 0.5 * jnp.sum(e ** 2 / start_var + jnp.log(2 * jnp.pi * start_var), -1)

    def standardised_residuals(self, z: jnp.ndarray, q: jnp.ndarray, qd: jnp.ndarray, s: jnp.ndarray,
                               w: Window) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Each segment's residuals at z (D,), given its predictions there (q (S, L, nq), qd (S, L, nv),
        readings (S, L, R)),
        with its start-state error removed (the start-state offset's conditional mean A⁻¹ Jᵀ D⁻¹ resid),
        in units of the noise sd: (S, L, C), and their mask (S, L, C). Under an exact model they are
        close to white noise; their autocorrelation measures how far the model is from the data."""
        resid, mask, d, _, jac, chol, b = self._segment_noise(z, q, qd, s, w)
        offset = jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]          # (S, r)
        e = (resid - jnp.einsum("spi,si->sp", jac, offset)) * mask / jnp.sqrt(d)
        n, L = resid.shape[0], self.segment_steps
        return e.reshape(n, L, -1), mask.reshape(n, L, -1)

    def log_density(self, z: jnp.ndarray, w: Window) -> jnp.ndarray:
        return self.log_prior(z) + self.log_lik(z, w)

    def numpyro_model(self, windows: Window):
        """NumPyro model over a batch of windows (leading axis B): priors + summed likelihood."""
        values = jnp.stack([numpyro.sample(n, d) for n, d in zip(self.names, self.priors)])
        z = self.unconstrain(values)
        numpyro.factor("log_lik", batch_log_lik_jit(self, z, windows))

    # --- prediction -----------------------------------------------------------------------
    def predict_clean(self, z: jnp.ndarray, q0, qd0, commands, settings) -> tuple[jnp.ndarray, ...]:
        """Noise-free rollout of particle z (D,) from a measured state q0 (nq,), qd0 (nv,) under commands (T, nu)
        (no earlier commands: the first is held before the start): q (T, nq), qd (T, nv) after each command, and
        the observed sensors' readings (T, R) in `readings` order through their sensor models at the particle's
        parameters, row k read at state k under command k (row 0 at the start state; docs/SENSORS.md).

        A sensor delayed by τ reads at row k the signal of time k·dt − τ, by the likelihood's own formula
        (`SensorLayout.apply`). For k·dt < τ that time precedes the start, where the rollout has no signal: those
        rows hold the start state's reading, as in the likelihood's segments, which leave them
        unscored (`unscored_rows`: ⌈max_latency_s / dt⌉ rows for an estimated delay)."""
        theta = self.theta(self.constrain(z), settings)
        return self._with_readings(simulate(self.robot, theta, q0, qd0, commands, readings=self.readings))

    # --- windows --------------------------------------------------------------------------
    def window(self, q, qd, ctrl, settings: dict[str, float] | None = None,
               sensors: dict | None = None) -> Window:
        """Validate telemetry arrays and pad them to the fixed window length.

        `sensors` {name: (T, dim) or (T,) readings} must hold every observed sensor (others are
        ignored). Raises WindowError (nothing changes) for wrong shapes, non-finite values, missing
        sensors, too few samples for one segment, or more samples than a window holds.
        """
        r, T = self.robot, self.window_samples
        missing = [n for n in self.sensors if n not in (sensors or {})]
        if missing:
            raise WindowError(f"sensors: no readings of observed sensor(s) {missing}")
        arrays = {"q": (q, r.nq), "qd": (qd, r.nv), "ctrl": (ctrl, r.nu)}
        for name, width in zip(self.sensors, self.sensor_widths):
            a = sensors[name]
            arrays[f"sensor {name}"] = (np.reshape(a, (-1, 1)) if width == 1 and np.ndim(a) == 1 else a, width)
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
            raise WindowError(f"{', '.join(out)} disagree in length: {[len(a) for a in out.values()]}")
        n = n.pop()
        if n < self.segment_steps + 1:
            raise WindowError(f"window has {n} samples; at least {self.segment_steps + 1} needed (one segment)")
        if n > T:
            raise WindowError(f"window has {n} samples; this twin's windows hold {T} "
                              f"(inference.window_s = {(T - 1) * r.dt:g} s): split it")
        pad = T - n
        padded = {k: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for k, a in out.items()}
        mask = np.concatenate([np.ones(n), np.zeros(pad)])
        n_seg = (T - 1) // self.segment_steps
        jac = np.zeros((n_seg, self.segment_steps * self.observed_width, r.nq + r.nv))
        readings = np.concatenate([padded[f"sensor {s}"] for s in self.sensors] + [np.zeros((T, 0))], axis=1)
        arrays = (padded["q"], padded["qd"], padded["ctrl"], mask, self.settings_vector(settings), jac,
                  np.zeros((n_seg, r.nq + r.nv)), np.asarray(1.0), readings)
        return Window(*jax.device_put([np.asarray(a, np.float64) for a in arrays]))

    def check_window(self, w: Window) -> None:
        """Raise WindowError unless a ready-made Window has this twin's shapes and finite values."""
        r, T = self.robot, self.window_samples
        expect = {"q": (T, r.nq), "qd": (T, r.nv), "ctrl": (T, r.nu), "mask": (T,),
                  "start": ((T - 1) // self.segment_steps, r.nq + r.nv),
                  "settings": (len(self.setting_names),), "weight": (), "sensors": (T, len(self.readings))}
        for name, shape in expect.items():
            a = np.asarray(getattr(w, name))
            if a.shape != shape:
                raise WindowError(f"{name}: expected shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise WindowError(f"{name}: non-finite values")
        if np.asarray(w.mask).sum() < self.segment_steps + 1:
            raise WindowError(f"window has {int(np.asarray(w.mask).sum())} samples; "
                              f"at least {self.segment_steps + 1} needed (one segment)")

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
