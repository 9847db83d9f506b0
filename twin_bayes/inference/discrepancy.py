"""Model error of open-loop predictions: an autocorrelated discrepancy added to the predictive.

Where the model class is wrong, parameter uncertainty and sensor noise do not explain how far an
open-loop prediction strays: the rest is model error, smooth in time. It is represented as an AR(1)
process on each measured position, started at zero at the measured start state,

    d_0 = 0,  d_t = φ d_{t−1} + s √(1 − φ²) η_t,  η_t ~ N(0, 1),  φ = exp(−dt / τ),

so that its sd after t steps is s √(1 − φ^{2t}) (rad): it grows from zero over the time constant τ (s)
to the stationary sd s. s may scale with the recording's settings (e.g. a firmware gain):
log s = log s_0 + Σ_k β_k log(setting_k / reference_k) over the settings that vary among the fit
recordings. s_0, τ and β are estimated from the residuals e_t of open-loop predictions of measured
recordings by the composite likelihood of their marginals e_t ~ N(0, v_t + s² (1 − φ^{2t})), where v_t
is the variance the predictive already has (parameters and sensor noise; 0 for the residuals of one
rollout at a mode), so that only what it leaves unexplained becomes model error (the innovations of
such bursty errors are far from Gaussian; the marginals are what a band must match), each β under a
prior N(0, GAIN_SD²): it is told only by how the recordings' errors differ, and a scale extrapolated to
settings beyond the fit's follows it.

Offline, `fit_model_error` learns it from whole recordings (`inference.whole_log`). Online, a twin
records the windows it sees (`record`) and learns it from the recent ones predicted again by its
posterior (`refit`; the windows and the fit are the `TwinState`'s `ModelErrorState`), and predicts
with it once MIN_WINDOWS are recorded.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.compiled import phase
from twin_bayes.inference.laplace import newton_mode
from twin_bayes.inference.predictive import Bands, sample_predictive
from twin_bayes.models import TwinModel

# Windows the online model error is learned from (the most recent), the fewest it is fitted on, and
# the posterior draws each is predicted with at a refit (the refit's cost: WINDOWS × REFIT_DRAWS rollouts).
WINDOWS = 32
MIN_WINDOWS = 4
REFIT_DRAWS = 8
# The prior sd of each settings exponent of the model error, and the Newton decrement (nats) at which
# its fit stops (`_log_target`, `_fit`).
GAIN_SD = 1.0
FIT_TOL = 1e-9


class ModelError(NamedTuple):
    """sd (nq,) stationary sd s_0 (rad) at `reference` settings (K,), time_const_s τ (s),
    gain (K,) exponents β of the settings (0 for settings that did not vary in the fit)."""

    sd: np.ndarray
    time_const_s: float
    reference: np.ndarray
    gain: np.ndarray

    def scale(self, settings) -> np.ndarray:
        """Stationary sd (nq,) for a recording's settings (K,)."""
        ratio = np.log(np.asarray(settings, np.float64) / self.reference)
        return self.sd * np.exp(float(self.gain @ ratio))

    def as_dict(self) -> dict:
        return {"sd_rad": self.sd.tolist(), "time_const_s": self.time_const_s,
                "reference_settings": self.reference.tolist(), "settings_exponents": self.gain.tolist()}

    @classmethod
    def from_dict(cls, d: dict, nq: int, n_settings: int) -> ModelError:
        """The inverse of `as_dict`, checked: ValueError names what is missing, misshapen or not positive."""
        try:
            me = cls(np.asarray(d["sd_rad"], np.float64), float(d["time_const_s"]),
                     np.asarray(d["reference_settings"], np.float64), np.asarray(d["settings_exponents"], np.float64))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"model error: missing or non-numeric field ({err})") from None
        if me.sd.shape != (nq,) or me.reference.shape != (n_settings,) or me.gain.shape != (n_settings,):
            raise ValueError(f"model error: expected sd_rad ({nq},) and settings ({n_settings},), got "
                             f"{me.sd.shape}, {me.reference.shape}, {me.gain.shape}")
        values = np.concatenate([me.sd, me.reference, me.gain, [me.time_const_s]])
        if not np.isfinite(values).all() or (me.sd <= 0).any() or (me.reference <= 0).any() or me.time_const_s <= 0:
            raise ValueError("model error: sd, time constant and reference settings must be finite and > 0")
        return me


class ModelErrorState(NamedTuple):
    """A twin's model error and the recent windows it learns it from (W = WINDOWS, the newest).

    Each window as measured: start state q0 (W, nq), qd0 (W, nv); the commands applied (W, T, nu);
    the positions after them, observed (W, T, nq) rad, with mask (W, T); settings (W, K); count ():
    windows recorded. The fit, as in `ModelError`: log_sd (nq,), log_time_const (), reference (K,),
    gain (K,); known (): there is one (learned here, or set from an offline fit); fitted_count ():
    windows recorded at its last refit here (0: none).
    """

    q0: jnp.ndarray
    qd0: jnp.ndarray
    commands: jnp.ndarray
    observed: jnp.ndarray
    mask: jnp.ndarray
    settings: jnp.ndarray
    count: jnp.ndarray
    log_sd: jnp.ndarray
    log_time_const: jnp.ndarray
    reference: jnp.ndarray
    gain: jnp.ndarray
    known: jnp.ndarray
    fitted_count: jnp.ndarray


def init_state(model: TwinModel) -> ModelErrorState:
    """No model error and no windows, for windows of the model's length (T = window samples − 1)."""
    r, T, K = model.robot, model.window_samples - 1, len(model.setting_names)
    z = lambda *shape: jnp.zeros(shape)  # noqa: E731
    return ModelErrorState(z(WINDOWS, r.nq), z(WINDOWS, r.nv), z(WINDOWS, T, r.nu), z(WINDOWS, T, r.nq),
                           z(WINDOWS, T), jnp.ones((WINDOWS, K)), jnp.asarray(0), z(r.nq), jnp.asarray(0.0),
                           jnp.ones(K), z(K), jnp.asarray(False), jnp.asarray(0))


def as_model_error(s: ModelErrorState) -> ModelError | None:
    """The state's fit (None: not known yet)."""
    if not bool(s.known):
        return None
    return ModelError(np.exp(np.asarray(s.log_sd)), float(np.exp(s.log_time_const)), np.asarray(s.reference),
                      np.asarray(s.gain))


def with_fit(s: ModelErrorState, me: ModelError | None) -> ModelErrorState:
    """The state with its fit replaced by me (None: forgotten); the recorded windows stay."""
    if me is None:
        return s._replace(known=jnp.asarray(False))
    f = lambda x: jnp.asarray(np.asarray(x, np.float64)).astype(s.log_sd.dtype)  # noqa: E731
    return s._replace(log_sd=f(np.log(me.sd)), log_time_const=f(np.log(me.time_const_s)), reference=f(me.reference),
                      gain=f(me.gain), known=jnp.asarray(True))


def _log_target(residuals, variance, mask, settings, dt, tau_weight=0.0, gain_sd=GAIN_SD):
    """The log composite likelihood of the model error's parameters p = (log_sd (nq,), log_time_const (),
    gain (K,)) given residuals and variance (R, T, nq), mask (R, T), settings (R, K), with its priors,
    as a function of p; and the reference settings (K,) and which settings vary (K,) bool.

    The likelihood is that of the marginals e_t ~ N(0, v_t + s² (1 − φ^{2t})), averaged over the
    samples and scaled so that each recording and position counts as one observation (nats):
    recordings without a masked-in step are left out; gains of settings that do not vary do nothing.
    tau_weight > 0 adds a prior log τ ~ N(log(T dt), 1), τ about the recordings' span, weighted
    tau_weight × recordings × nq (1 / (recordings × nq): one observation): recordings much shorter than τ
    tell only s² / τ (a random walk), and the prior keeps τ, and with it the growth of the error beyond
    their span, near what they show. Each gain has the prior β ~ N(0, gain_sd²), one observation's
    worth: the marginals count every sample as independent, while a gain is told only by how the
    recordings' errors differ."""
    nq, steps = residuals.shape[2], jnp.arange(1, residuals.shape[1] + 1)
    used = jnp.any(mask > 0, axis=1)                                              # (R,)
    log_set = jnp.log(jnp.where(used[:, None], settings, 1.0))
    reference = jnp.exp(jnp.sum(log_set * used[:, None], 0) / jnp.maximum(jnp.sum(used), 1))
    x = log_set - jnp.log(reference)
    x = jnp.where(used[:, None], x, 0.0)
    spread = jnp.max(jnp.where(used[:, None], x, -jnp.inf), 0) - jnp.min(jnp.where(used[:, None], x, jnp.inf), 0)
    varies = spread > 1e-9
    m = mask[..., None]
    e2 = jnp.where(m > 0, residuals ** 2, 0.0)
    observations = jnp.maximum(jnp.sum(used), 1) * nq

    def log_target(p):
        log_s = p[:nq][None, :] + (x @ (p[nq + 1:] * varies))[:, None]          # (R, nq)
        phi = jnp.exp(-dt / jnp.exp(p[nq]))
        var = variance + jnp.exp(2 * log_s)[:, None, :] * (1 - phi ** (2 * steps))[None, :, None]
        var = jnp.where(m > 0, var, 1.0)
        nll = jnp.sum(m * (e2 / var + jnp.log(var))) / jnp.maximum(jnp.sum(m), 1.0)
        tau_prior = tau_weight * observations * (p[nq] - jnp.log(residuals.shape[1] * dt)) ** 2
        return -0.5 * (observations * nll + tau_prior + jnp.sum((p[nq + 1:] * varies / gain_sd) ** 2))

    return log_target, reference, varies


def _fit(residuals, variance, mask, settings, dt, start, tau_weight=0.0, gain_sd=GAIN_SD):
    """The maximum of `_log_target` (same arguments) by damped Newton (`laplace.newton_mode`, exact
    Hessian) from start (nq + 1 + K,): log_sd (nq,), log_time_const (), reference (K,), gain (K,)."""
    log_target, reference, varies = _log_target(residuals, variance, mask, settings, dt, tau_weight, gain_sd)

    def curvature_at(p):
        value, grad = jax.value_and_grad(log_target)(p)
        return value, grad, jax.hessian(log_target)(p), None

    p = newton_mode(curvature_at, lambda _, p: log_target(p), start, None, tol=FIT_TOL)[0].mean
    nq = residuals.shape[2]
    return p[:nq], p[nq], reference, p[nq + 1:] * varies


def _moment_start(residuals, mask, n_settings):
    """The fit's start: the residuals' rms as s, τ = 1 s, no gains."""
    m = mask[..., None]
    rms = jnp.sqrt(jnp.sum(m * residuals ** 2, (0, 1)) / jnp.maximum(jnp.sum(m), 1.0)) + 1e-9
    return jnp.concatenate([jnp.log(rms), jnp.zeros(1 + n_settings)])


@jax.jit
def _fit_jit(residuals, variance, mask, settings, dt, gain_sd):
    return _fit(residuals, variance, mask, settings, dt, _moment_start(residuals, mask, settings.shape[1]),
                gain_sd=gain_sd)


def fit_model_error(residuals: np.ndarray, mask: np.ndarray, settings: np.ndarray, dt: float,
                    variance: np.ndarray | None = None, gain_sd: float = GAIN_SD) -> ModelError:
    """Estimate the discrepancy from open-loop residuals (R, T, nq) with mask (R, T), settings (R, K)
    and the predictive's own variance (R, T, nq) rad² (None: 0); gain_sd as in `_log_target`."""
    residuals = jnp.asarray(np.asarray(residuals, np.float64))
    variance = jnp.zeros_like(residuals) if variance is None else jnp.asarray(np.asarray(variance, np.float64))
    log_sd, log_tau, reference, gain = _fit_jit(residuals, variance, jnp.asarray(np.asarray(mask, np.float64)),
                                                jnp.asarray(np.asarray(settings, np.float64)), float(dt),
                                                float(gain_sd))
    return ModelError(np.exp(np.asarray(log_sd)), float(np.exp(log_tau)), np.asarray(reference), np.asarray(gain))


@jax.jit
def record(s: ModelErrorState, window) -> ModelErrorState:
    """A window (`models.Window`, T + 1 samples) in, over the oldest: its first measured state, the
    commands applied after it and the positions measured after them. The fit is unchanged (`refit`).
    Rows masked out are not looked at."""
    q0, qd0, commands, observed, mask = window.q[0], window.qd[0], window.ctrl[:-1], window.q[1:], window.mask[1:]
    settings = window.settings
    slot = s.count % WINDOWS
    put = lambda ring, x: ring.at[slot].set(x)  # noqa: E731
    return s._replace(q0=put(s.q0, q0), qd0=put(s.qd0, qd0), commands=put(s.commands, commands),
                      observed=put(s.observed, jnp.where(mask[:, None] > 0, observed, 0.0)), mask=put(s.mask, mask),
                      settings=put(s.settings, settings), count=s.count + 1)


def _smoothed(v, half: int = 5):
    """v (W, T, nq) averaged over ±half steps in time (fewer at the ends): the predictive variance of a
    few draws, steadied; it changes over many steps."""
    kernel = jnp.ones(2 * half + 1)
    conv = jax.vmap(jax.vmap(lambda x: jnp.convolve(x, kernel, mode="same"), in_axes=1, out_axes=1))
    return conv(v) / conv(jnp.ones_like(v))


def _refit(model: TwinModel, s: ModelErrorState, z) -> ModelErrorState:
    """Once MIN_WINDOWS are recorded: every recorded window predicted again open loop by REFIT_DRAWS
    of the equally weighted particles z (M, D) (the posterior now, every M / REFIT_DRAWS-th; sensor
    noise included), and the model error refitted on their residuals from the predictive mean
    above the predictive's own variance (from the last fit where known; τ under `_log_target`'s
    prior, since windows are short)."""
    z = z[::max(1, z.shape[0] // REFIT_DRAWS)][:REFIT_DRAWS]

    def fit(s):
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), s.count), WINDOWS)
        predict = lambda k, a, b, c, st: sample_predictive(model, 1, k, z, a, b, c, st)[2]  # noqa: E731
        q = jax.vmap(predict)(keys, s.q0, s.qd0, s.commands, s.settings)               # (W, M, T, nq)
        m = s.mask[..., None] > 0
        residuals = jnp.where(m, s.observed - q.mean(1), 0.0)
        variance = jnp.where(m, _smoothed(q.var(1, ddof=1)), 0.0)
        start = jnp.where(s.known, jnp.concatenate([s.log_sd, s.log_time_const[None], s.gain]),
                          _moment_start(residuals, s.mask, s.settings.shape[1]))
        weight = 1.0 / (jnp.minimum(s.count, WINDOWS) * residuals.shape[2])
        log_sd, log_tau, reference, gain = _fit(residuals, variance, s.mask, s.settings, model.robot.dt, start, weight)
        ok = jnp.all(jnp.isfinite(log_sd)) & jnp.isfinite(log_tau) & jnp.all(jnp.isfinite(gain))
        new = s._replace(log_sd=log_sd, log_time_const=log_tau, reference=reference, gain=gain, known=True,
                         fitted_count=s.count)
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, s)

    return jax.lax.cond(s.count >= MIN_WINDOWS, fit, lambda s: s, s)


refit = phase(_refit)


@partial(jax.jit, static_argnums=3)
def ar1_paths(key, sd, phi, noise_shape):
    """AR(1) paths (S, T, nq) from zero with stationary sd (nq,) and coefficient phi."""
    eta = jax.random.normal(key, noise_shape) * sd * jnp.sqrt(1 - phi ** 2)

    def step(d, e):
        d = phi * d + e
        return d, d

    _, d = jax.lax.scan(step, jnp.zeros(noise_shape[::2]), jnp.swapaxes(eta, 0, 1))
    return jnp.swapaxes(d, 0, 1)


def add_model_error(b: Bands, me: ModelError, key, settings, dt: float) -> Bands:
    """The bands with the model error added to every predictive draw of q (draws and quantiles)."""
    phi = float(np.exp(-dt / me.time_const_s))
    d = np.asarray(ar1_paths(key, jnp.asarray(me.scale(settings)), phi, b.samples_q.shape))
    samples = b.samples_q + d
    return b._replace(q=np.quantile(samples, np.asarray(b.quantiles), axis=0), samples_q=samples)
