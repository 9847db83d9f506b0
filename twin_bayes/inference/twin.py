"""`Twin`: the online posterior of one robot, its update gate, drift handling and predictions."""
from __future__ import annotations

import time
from collections import deque
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.config import TwinConfig, load_config
from twin_bayes.inference import batch
from twin_bayes.inference.posterior import Particles, Posterior
from twin_bayes.inference.discrepancy import ModelError, add_model_error
from twin_bayes.inference.predictive import Bands, bands
from twin_bayes.inference.laplace import best_start, find_mode, importance_update
from twin_bayes.inference.smc import GaussianPrior, gaussian_prior, tempered_update
from twin_bayes.models import TwinModel, Window, WindowError

# Step size of the one-step HMC move, in units where the mass matrix whitens the cloud.
INITIAL_STEP = 0.5


@partial(jax.jit, static_argnums=0)
def constrain_all(model: TwinModel, z):
    """Physical values (N, D) of unconstrained particles z (N, D)."""
    return jax.vmap(model.constrain)(z)


@dataclass
class UpdateReport:
    """What one update did: accepted or not (and why), diagnostics, drift, what changed."""

    accepted: bool
    reason: str
    version: int
    engine: str
    stages: int = 0
    beta: float = 0.0
    acceptance: float = float("nan")
    divergent: float = 0.0
    ess: float = 0.0
    surprise: float = float("nan")
    newton_steps: int = 0
    drift: bool = False
    widened: bool = False
    latency_s: float = 0.0
    changed: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Surprise:
    """Running baseline of per-observation predictive surprise (negative log predictive density)."""

    history: deque = field(default_factory=lambda: deque(maxlen=20))
    run: int = 0

    def score(self, value: float, sigma: float) -> bool:
        """Record value; True when it is sigma robust-sds above the baseline."""
        base = np.asarray(self.history)
        high = False
        if len(base) >= 3:
            med = np.median(base)
            mad = 1.4826 * np.median(np.abs(base - med)) + 0.05 * abs(med) + 1e-6
            high = value > med + sigma * mad
        self.run = self.run + 1 if high else 0
        if not high:
            self.history.append(value)
        return high


class Twin:
    """The Bayesian twin of one robot: `update(window)`, `posterior`, `predict(...)`.

    Streaming is an assumed-density filter: each window's prior is a Gaussian of
    the posterior so far, its posterior weighted particles from Laplace
    importance sampling (`inference.laplace`) or tempered SMC
    (`inference.smc`). `fit(windows, engine)` refits over many windows with
    NUTS, SVI or SMC from the prior.
    """

    def __init__(self, cfg: TwinConfig, model: TwinModel | None = None):
        self.cfg = cfg
        self.model = model or TwinModel(cfg)
        inf = cfg.inference
        self.key = jax.random.PRNGKey(inf.seed)
        self.key, sub = jax.random.split(self.key)
        n = inf.particles
        self._particles = Particles(self.model.sample_prior(sub, n), jnp.full(n, -jnp.log(n)))
        self._exact_prior = True
        self._step = INITIAL_STEP
        self._surprise = _Surprise()
        self._gauss: GaussianPrior | None = None
        self._warm: batch.WarmStart | None = None
        self.pending: deque[Window] = deque(maxlen=8)
        self.last_batch: batch.BatchResult | None = None
        self.model_error: ModelError | None = None     # added to predictions where set (inference.discrepancy)
        drift = [cfg.parameters[n].drift for n in self.model.param_names] + [0.0] * len(self.model.noise_names)
        self._drift = jnp.asarray(drift)
        self.posterior = self._posterior(self._particles, version=0)

    @classmethod
    def from_config(cls, config: str | Path | TwinConfig) -> "Twin":
        return cls(config if isinstance(config, TwinConfig) else load_config(config))

    # --- posterior --------------------------------------------------------------------
    def _posterior(self, p: Particles, version: int, stale=False, reason="") -> Posterior:
        values = np.asarray(constrain_all(self.model, p.z))
        return Posterior(self.model.names, p, values, version, stale, reason)

    def _next_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    def window(self, q, qd, ctrl, settings=None) -> Window:
        return self.model.window(q, qd, ctrl, settings)

    # --- streaming update -------------------------------------------------------------
    def update(self, window: Window | dict, settings=None) -> UpdateReport:
        """Bring one telemetry window into the posterior.

        `window` is a `Window` or a dict with q (T, nq), qd (T, nv), ctrl (T, nu).
        Bad input raises `WindowError` before anything changes. The window's
        posterior is found by Laplace importance sampling (`inference.laplace`);
        where the importance weights degenerate (a far from Gaussian posterior)
        or the config sets `laplace = false`, tempered SMC from draws of the
        window's prior takes over (the Laplace step still gives the surprise
        and the start-state linearisation). A new posterior is accepted only if it is
        finite, reached the full likelihood (β = 1), has few divergent moves and
        enough effective samples; otherwise the previous one stays, flagged
        stale with the reason, and the window is kept in `pending` for `retry()`.
        """
        if isinstance(window, Window):
            self.model.check_window(window)
        else:
            missing = [k for k in ("q", "qd", "ctrl") if k not in window]
            if missing:
                raise WindowError(f"telemetry is missing {missing}")
            window = self.window(window["q"], window["qd"], window["ctrl"], settings or window.get("settings"))
        start = time.perf_counter()
        old, inf, n = self.posterior, self.cfg.inference, self.cfg.inference.particles
        g = self._window_prior()
        new, lap, windows, ess, log_evidence = self._laplace_update(window, g, self._reference())
        # Predictive surprise of the new data under the posterior so far, per observation.
        n_obs = float(jnp.sum(window.mask)) * sum(
            {"q": self.model.robot.nq, "qd": self.model.robot.nv}[c] for c in self.model.channels)
        surprise = -log_evidence / n_obs
        high = self._surprise.score(surprise, inf.drift_sigma) if np.isfinite(surprise) else False
        drift = high and self._surprise.run >= inf.drift_windows
        if drift:   # a change point: the old evidence no longer describes the robot; forget it
            g = g._replace(exact=jnp.asarray(True))
            new, lap, windows, ess, _ = self._laplace_update(window, g, lap.mean)
            self._surprise = _Surprise()
        report = UpdateReport(False, "", old.version, "laplace-is", stages=1, beta=1.0, ess=ess, surprise=surprise,
                              newton_steps=lap.iterations, drift=drift, widened=drift)
        gauss = GaussianPrior(lap.mean, lap.chol, jnp.asarray(False))
        if not (inf.laplace and ess >= inf.target_ess * n):   # temper from draws of the window prior
            z0 = (self.model.sample_prior(self._next_key(), n) if bool(g.exact)
                  else g.mean + jax.random.normal(self._next_key(), (n, g.mean.shape[0])) @ g.chol.T)
            new, stages, beta, step = tempered_update(self.model, self._next_key(), z0, windows, g,
                                                      self._step, inf.max_stages, inf.mcmc_steps)
            moved = [s.acceptance for s in stages if np.isfinite(s.acceptance)]
            report.engine, report.stages, report.beta = "smc", len(stages), beta
            report.acceptance = float(np.mean(moved)) if moved else float("nan")
            report.divergent = float(np.mean([s.divergent for s in stages]))
            report.ess = float(stages[-1].ess)
            self._step = step
            gauss = gaussian_prior(new, jnp.zeros_like(self._drift), False)
        report.reason = self._gate(new, report.beta, report.divergent, report.ess)
        if report.reason:
            self.pending.append(window)
            self.posterior = self._posterior(self._particles, old.version, stale=True, reason=report.reason)
        else:
            self._accept(new)
            self._gauss = gauss
            report.accepted, report.version = True, self.posterior.version
        report.changed = _changes(old, self.posterior)
        report.latency_s = time.perf_counter() - start
        return report

    def _laplace_update(self, window: Window, g: GaussianPrior, z_start):
        """Mode, curvature and importance draws of one window's posterior under prior g.

        Start-state sensitivities are linearised at z_start, then once more at the mode.
        Returns (Particles, Laplace, stacked windows (1, ...), ESS, log evidence).
        """
        windows = self._stacked(window, z_start)
        if bool(g.exact):   # the config's prior is wide: start Newton from its best draw
            z_start = best_start(self.model, self._particles.z, windows, g)
        lap = find_mode(self.model, z_start, windows, g)
        windows = self._stacked(window, lap.mean)
        lap = find_mode(self.model, lap.mean, windows, g)
        new, ess, log_evidence = importance_update(self.model, self._next_key(), lap, windows, g,
                                                   self.cfg.inference.particles)
        return new, lap, windows, ess, log_evidence

    def _stacked(self, window: Window, z_lin) -> Window:
        """The window with start-state sensitivities at z_lin, as a batch of one (1, ...)."""
        return jax.tree.map(lambda x: x[None], self.model.with_state_jacobian(window, z_lin))

    def _window_prior(self) -> GaussianPrior:
        """The prior of the next window: the config's own for a fresh twin, else the Gaussian
        of the posterior so far (Laplace at the last mode, or the particles' moments after a
        restore or a tempered update), widened by each parameter's random-walk drift."""
        if self._exact_prior:
            return gaussian_prior(self._particles, self._drift, True)
        if self._gauss is None:
            return gaussian_prior(self._particles, self._drift, False)
        cov = self._gauss.chol @ self._gauss.chol.T + jnp.diag(self._drift ** 2)
        return GaussianPrior(self._gauss.mean, jnp.linalg.cholesky(cov), jnp.asarray(False))

    def _reference(self) -> jnp.ndarray:
        """Weighted mean of the particles (D,): where start-state sensitivities are first linearised."""
        return jnp.exp(self._particles.log_weights) @ self._particles.z

    def _gate(self, p: Particles, beta: float, divergent: float, ess: float) -> str:
        inf = self.cfg.inference
        n = p.z.shape[0]
        if not (bool(jnp.all(jnp.isfinite(p.z))) and bool(jnp.all(jnp.isfinite(p.log_weights)))):
            return "non-finite particles or weights"
        if beta < 1.0:
            return f"tempering stopped at beta={beta:.3g} after {inf.max_stages} stages (window too informative)"
        if divergent > inf.max_divergent:
            return f"divergent moves {divergent:.0%} > {inf.max_divergent:.0%}"
        if ess < inf.min_ess * n:
            return f"effective sample size {ess:.1f} < {inf.min_ess * n:.1f}"
        return ""

    @property
    def particles(self) -> Particles:
        return self._particles

    def restore(self, p: Particles, version: int) -> None:
        """Replace the posterior by saved particles (e.g. from a checkpoint) at `version`."""
        self._particles = p
        self._exact_prior = False
        self._gauss = None
        self.posterior = self._posterior(p, version)

    def _accept(self, p: Particles):
        self.restore(p, self.posterior.version + 1)

    def retry(self) -> list[UpdateReport]:
        """Apply the windows that earlier updates rejected, oldest first (each once more)."""
        windows, self.pending = list(self.pending), deque(maxlen=self.pending.maxlen)
        return [self.update(w) for w in windows]

    # --- batch fit --------------------------------------------------------------------
    def fit(self, windows: list[Window], engine: str | None = None, **kwargs) -> batch.BatchResult:
        """Refit on many windows at once (engine: smc | nuts | svi); the result becomes the posterior."""
        engine = engine or self.cfg.inference.engine
        z_ref = self._reference()
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *[self.model.with_state_jacobian(w, z_ref) for w in windows])
        key = self._next_key()
        if engine == "nuts":
            warm = self._warm
            if warm is None and not self._exact_prior:   # warm start from the posterior so far
                key, sub = jax.random.split(key)
                warm = batch.warm_from_particles(self._particles, sub, kwargs.get("num_chains", 2))
            res = batch.fit_nuts(self.model, key, stacked, warm=warm, **kwargs)
            self._warm = res.warm
        elif engine == "svi":
            res = batch.fit_svi(self.model, key, stacked, **kwargs)
        elif engine == "smc":
            res = batch.fit_smc(self.model, key, stacked, kwargs.pop("particles", self.cfg.inference.particles), **kwargs)
        else:
            raise ValueError(f"unknown engine {engine!r}: smc, nuts or svi")
        self.last_batch = res
        self._accept(res.particles)
        return res

    # --- prediction -------------------------------------------------------------------
    def predict(self, q0, qd0, commands, quantiles=(0.05, 0.5, 0.95), settings=None,
                draws_per_particle: int = 8, key=None) -> Bands:
        """Predictive bands of q and qd under commands (T, nu) from the measured state (q0, qd0).

        `key`: PRNG key of the predictive draws; None takes the twin's next key (then
        predictions and updates share one key stream).
        """
        r = self.model.robot
        commands = np.asarray(commands, dtype=np.float64)
        if commands.ndim != 2 or commands.shape[1] != r.nu or not np.isfinite(commands).all():
            raise ValueError(f"commands must be finite with shape (T, {r.nu}), got {commands.shape}")
        q0, qd0 = np.asarray(q0, np.float64), np.asarray(qd0, np.float64)
        if q0.shape != (r.nq,) or qd0.shape != (r.nv,) or not (np.isfinite(q0).all() and np.isfinite(qd0).all()):
            raise ValueError(f"q0, qd0 must be finite with shapes ({r.nq},), ({r.nv},)")
        idx = self.posterior.resample(np.random.default_rng(self.posterior.version))
        z = self._particles.z[idx]
        key = self._next_key() if key is None else key
        settings = self.model.settings_vector(settings)
        b = bands(self.model, key, z, q0, qd0, commands, settings, quantiles, draws_per_particle)
        if self.model_error is None:
            return b
        return add_model_error(b, self.model_error, jax.random.fold_in(key, 1), settings, r.dt)


def _changes(old: Posterior, new: Posterior) -> dict[str, dict[str, float]]:
    a, b = old.summary(), new.summary()
    return {n: {"mean_before": a[n]["mean"], "mean_after": b[n]["mean"], "sd_before": a[n]["sd"],
                "sd_after": b[n]["sd"]} for n in new.names}
