"""`Twin`: the friendly object over one robot's `TwinState` (`inference.engine`), and
`update_many`, one batched update for many twins of a design."""
from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.config import TwinConfig, load_config
from twin_bayes.inference import batch, engine
from twin_bayes.inference import discrepancy
from twin_bayes.inference.discrepancy import ModelError, add_model_error
from twin_bayes.inference.engine import REASONS, TwinState
from twin_bayes.inference.posterior import Particles, Posterior
from twin_bayes.inference.predictive import Bands, bands, bands_many
from twin_bayes.models import TwinModel, Window, WindowError

# Robot batches are padded to these sizes (then to a multiple of the largest), so a fleet compiles a
# handful of executables per design; padding costs at most 4x in compute.
BATCH_SIZES = (1, 4, 16, 64)


@jax.jit
def constrain_all(model: TwinModel, z):
    """Physical values (N, D) of unconstrained particles z (N, D)."""
    return jax.vmap(model.constrain)(z)


@dataclass
class UpdateReport:
    """What one update did: accepted or not (and why), diagnostics, drift, what changed, the temper κ."""

    accepted: bool
    reason: str
    version: int
    engine: str
    stages: int = 0
    moves: int = 0                # MCMC moves per particle over the tempered stages
    beta: float = 0.0
    acceptance: float = float("nan")
    divergent: float = 0.0
    ess: float = 0.0
    surprise: float = float("nan")
    newton_steps: int = 0
    drift: bool = False
    latency_s: float = 0.0
    changed: dict[str, dict[str, float]] = field(default_factory=dict)
    temper: float = 1.0           # κ: the window's likelihood was raised to 1/κ (inference.engine)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Twin:
    """The Bayesian twin of one robot: `update(window)`, `posterior`, `predict(...)`, `fit(windows)`.

    All it knows is `state` (a `TwinState`: assign one to restore a twin exactly, the learned model
    error of its predictions included), plus the last batch fit (`last_batch`).
    Streaming updates are `engine.update`; `fit(windows, engine)` refits over many windows with
    NUTS, SVI or SMC from the prior, behind the same kind of gate.
    """

    def __init__(self, cfg: TwinConfig, model: TwinModel | None = None):
        """`model`: a TwinModel of this config to share (built once for many twins); a model of another
        config of the same design lends its robot, and its compiled code. Twins batch together in
        `update_many` whenever their models compute the same, shared or not."""
        self.cfg = cfg
        if model is None or model.cfg != cfg:
            model = TwinModel(cfg, model.robot if model is not None else None)
        self.model = model
        self.last_batch: batch.BatchResult | None = None
        self._warm: batch.WarmStart | None = None
        self.state = engine.init(self.model, jax.random.PRNGKey(cfg.inference.seed))

    @classmethod
    def from_config(cls, config: str | Path | TwinConfig) -> "Twin":
        return cls(config if isinstance(config, TwinConfig) else load_config(config))

    # --- state and posterior ----------------------------------------------------------------
    @property
    def state(self) -> TwinState:
        return self._state

    @state.setter
    def state(self, state: TwinState) -> None:
        self._state = state
        p = state.particles
        self.posterior = Posterior(self.model.names, p, np.asarray(constrain_all(self.model, p.z)),
                                   int(state.version), bool(state.stale), REASONS[int(state.reason)])

    @property
    def model_error(self) -> ModelError | None:
        """The model error added to predictions (`inference.discrepancy`); None: not known yet."""
        return discrepancy.as_model_error(self._state.model_error)

    @model_error.setter
    def model_error(self, me: ModelError | None) -> None:
        self._state = self._state._replace(model_error=discrepancy.with_fit(self._state.model_error, me))

    def record_window(self, window: Window | dict, settings=None) -> None:
        """Keep a window seen for the model error (a `Window`, or a dict as `update` takes): its first
        measured state, the commands applied after it and the positions measured after them;
        `refit_model_error` learns from it (`inference.discrepancy`). Bad input raises `WindowError`."""
        w = self.as_window(window, settings)
        me = discrepancy.record(self._state.model_error, w)
        self._state = self._state._replace(model_error=me)

    def refit_model_error(self) -> None:
        """Learn the model error again from the recorded windows, predicted by the posterior now
        (`discrepancy.refit`; nothing before MIN_WINDOWS; the key stream is untouched)."""
        me = discrepancy.refit(self.model, self._state.model_error, jax.device_put(self.draws()))
        self._state = self._state._replace(model_error=me)

    def learn_model_error(self, window: Window | dict, settings=None) -> None:
        """`record_window`, then `refit_model_error`."""
        self.record_window(window, settings)
        self.refit_model_error()

    @property
    def particles(self) -> Particles:
        return self._state.particles

    @property
    def key(self):
        return self._state.key

    @property
    def pending(self) -> list[Window]:
        """Windows that refused updates kept for `retry()`, oldest first."""
        ring = self._state.pending
        order = np.asarray(ring.order)
        return [jax.tree.map(lambda x, i=i: x[i], ring.windows) for i in np.argsort(order) if order[i] >= 0]

    def restore(self, p: Particles, version: int) -> None:
        """Replace the posterior by particles alone (their Gaussian becomes the next window's prior)."""
        self.state = engine.from_particles(self._state, p, version)

    def mark_applied(self, seq: int) -> None:
        """Record the last telemetry chunk applied (`TwinState.applied_seq`, kept by the service)."""
        # strongly typed, as the update's output: a weakly typed leaf would compile every phase again
        self._state = self._state._replace(applied_seq=jnp.asarray(seq, self._state.applied_seq.dtype))

    def _next_key(self):
        key, sub = jax.random.split(self._state.key)
        self._state = self._state._replace(key=key)      # the posterior is unchanged
        return sub

    def window(self, q, qd, ctrl, settings=None, sensors=None) -> Window:
        return self.model.window(q, qd, ctrl, settings, sensors)

    def as_window(self, window: Window | dict, settings=None) -> Window:
        """A validated, padded Window from a Window or a dict with q (T, nq), qd (T, nv), ctrl (T, nu) and,
        where the twin observes MJCF sensors, sensors {name: readings (T, dim)}."""
        if isinstance(window, Window):
            self.model.check_window(window)
            return window
        missing = [k for k in ("q", "qd", "ctrl") if k not in window]
        if missing:
            raise WindowError(f"telemetry is missing {missing}")
        return self.window(window["q"], window["qd"], window["ctrl"], settings or window.get("settings"),
                           window.get("sensors"))

    # --- streaming update ---------------------------------------------------------------------
    def update(self, window: Window | dict, settings=None) -> UpdateReport:
        """Bring one telemetry window into the posterior (see `inference.engine`).

        `window` is a `Window` or a dict with q (T, nq), qd (T, nv), ctrl (T, nu). Bad input raises
        `WindowError` before anything changes. A refused update keeps the previous posterior,
        flagged stale with the reason, and keeps the window for `retry()`.
        """
        return update_many([self], [self.as_window(window, settings)])[0]

    def retry(self) -> list[UpdateReport]:
        """Apply the windows that earlier updates refused, oldest first (each once more)."""
        windows = self.pending
        ring = self._state.pending
        self.state = self._state._replace(pending=ring._replace(order=jnp.full_like(ring.order, -1)))
        return [self.update(w) for w in windows]

    # --- batch fit ------------------------------------------------------------------------------
    def fit(self, windows: list[Window], engine: str | None = None, **kwargs) -> batch.BatchResult:
        """Refit on many windows at once (engine: smc | nuts | svi).

        The result becomes the posterior only if it passes the gate (`batch.gate`: SMC reached β = 1,
        NUTS chains mixed without many divergences, SVI's loss is finite); otherwise the previous
        posterior stays, flagged stale, and `result.info["refused"]` says why.
        """
        name = engine or self.cfg.inference.engine
        z_ref = jnp.exp(self.particles.log_weights) @ self.particles.z
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *[self.model.with_state_jacobian(w, z_ref) for w in windows])
        key = self._next_key()
        if name == "nuts":
            warm = self._warm
            if warm is None and not bool(self._state.prior.exact):   # warm start from the posterior so far
                key, sub = jax.random.split(key)
                warm = batch.warm_from_particles(self.particles, sub, kwargs.get("num_chains", 2))
            res = batch.fit_nuts(self.model, key, stacked, warm=warm, **kwargs)
        elif name == "svi":
            res = batch.fit_svi(self.model, key, stacked, **kwargs)
        elif name == "smc":
            res = batch.fit_smc(self.model, key, stacked, kwargs.pop("particles", self.cfg.inference.particles),
                                **kwargs)
        elif name in ("stream", "whole-log"):
            raise ValueError(f"{name} is not a batch fit of windows: use update() window by window (stream) "
                             "or inference.whole_log.fit_twin on whole recordings (whole-log)")
        else:
            raise ValueError(f"unknown engine {name!r}: smc, nuts or svi")
        refused = batch.gate(res, self.cfg.inference)
        res = res._replace(info={**res.info, "refused": refused})
        self.last_batch = res
        if refused:
            self.refuse(*refused)
        else:
            self._warm = res.warm if name == "nuts" else self._warm
            self.restore(res.particles, int(self._state.version) + 1)
        return res

    def refuse(self, reason: str, detail: str) -> None:
        """Keep the posterior, flagged stale with `reason` (one of `engine.REASONS`) and its detail."""
        self.state = self._state._replace(stale=jnp.asarray(True), reason=jnp.asarray(REASONS.index(reason)))
        self.posterior.reason = f"{reason}: {detail}"

    # --- prediction -----------------------------------------------------------------------------
    def predict(self, q0, qd0, commands, quantiles=(0.05, 0.5, 0.95), settings=None,
                draws_per_particle: int = 8, key=None, model_error: bool = True) -> Bands:
        """Predictive bands (`Bands`) of q, qd and the observed sensors' readings under commands (T, nu) from the
        measured state (q0, qd0), with the learned model error added to q where known (and `model_error`).

        `key`: PRNG key of the predictive draws; None takes the twin's next key (then
        predictions and updates share one key stream).
        """
        q0, qd0, commands = self._check_start(q0, qd0, commands)
        key = self._next_key() if key is None else key
        settings = self.model.settings_vector(settings)
        b = bands(self.model, key, self.draws(), q0, qd0, commands, settings, quantiles, draws_per_particle)
        return self.with_model_error(b, key, settings) if model_error else b

    def _check_start(self, q0, qd0, commands):
        r = self.model.robot
        commands = np.asarray(commands, dtype=np.float64)
        if commands.ndim != 2 or commands.shape[1] != r.nu or not np.isfinite(commands).all():
            raise ValueError(f"commands must be finite with shape (T, {r.nu}), got {commands.shape}")
        q0, qd0 = np.asarray(q0, np.float64), np.asarray(qd0, np.float64)
        if q0.shape != (r.nq,) or qd0.shape != (r.nv,) or not (np.isfinite(q0).all() and np.isfinite(qd0).all()):
            raise ValueError(f"q0, qd0 must be finite with shapes ({r.nq},), ({r.nv},)")
        return q0, qd0, commands

    def draws(self) -> np.ndarray:
        """Equally weighted particles (N, D): the posterior resampled (systematic, seeded by its version)."""
        return np.asarray(self.particles.z)[self.posterior.resample(np.random.default_rng(self.posterior.version))]

    def with_model_error(self, b: Bands, key, settings) -> Bands:
        """Bands of `predict(..., model_error=False)` with the model error added (unchanged where none is
        known); settings: the settings vector (K,)."""
        me = self.model_error
        if me is None:
            return b
        return add_model_error(b, me, jax.random.fold_in(key, 1), settings, self.model.robot.dt)


def _bucket(n: int) -> int:
    top = BATCH_SIZES[-1]
    return next((b for b in BATCH_SIZES if b >= n), -(-n // top) * top)


def _interchangeable(model: TwinModel) -> tuple:
    """Equal for models that compute the same: one design and equal numbers (configs that differ only
    in what the model does not hold, such as the seed)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(model)]
    return model.design, tuple((x.dtype.str, x.shape, x.tobytes()) for x in leaves)


def _batches(twins: Sequence[Twin], max_batch: int):
    """Per model the twins compute with (`_interchangeable`), in pieces of at most max_batch twins:
    (indices of its twins, rows of the padded batch: those indices, then the first repeated up to
    the `BATCH_SIZES` bucket). A batch runs on its first twin's model."""
    groups: dict[tuple, list[int]] = {}
    keys: dict[int, tuple] = {}
    for i, t in enumerate(twins):
        key = keys.get(id(t.model))
        if key is None:
            key = keys[id(t.model)] = _interchangeable(t.model)
        groups.setdefault(key, []).append(i)
    for group in groups.values():
        for k in range(0, len(group), max_batch):
            idx = group[k:k + max_batch]
            yield idx, idx + [idx[0]] * (_bucket(len(idx)) - len(idx))


def _each(batches, run, executor: Executor | None) -> None:
    """run(idx, rows) for every batch: in order here, or concurrently on the executor's threads (the
    compiled update releases the GIL, so batches on two threads use two cores)."""
    if executor is None:
        for idx, rows in batches:
            run(idx, rows)
    else:
        for done in [executor.submit(run, idx, rows) for idx, rows in batches]:
            done.result()


@jax.jit
def _stack(trees: list):
    """Pytrees of one structure stacked on a new leading axis (one program: no eager op per leaf)."""
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


@partial(jax.jit, static_argnums=1)
def _unstack(tree, n: int) -> list:
    """The first n rows of a stacked pytree, as n pytrees, sliced where they lie (a batch's states stay
    on the device; one program)."""
    return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(n)]


def update_input(state: engine.TwinState) -> engine.TwinState:
    """A state as an update takes it: without its model error, which updates carry through unread, so
    that an update never waits for a model-error refit still computing (`Twin.refit_model_error`
    returns before its result is ready)."""
    return state._replace(model_error=None)


def update_many(twins: Sequence[Twin], windows: Sequence[Window], max_batch: int = BATCH_SIZES[-1],
                executor: Executor | None = None) -> list[UpdateReport]:
    """One window into each twin, in batched updates per model (twins whose models compute the same:
    one design and equal numbers, `_interchangeable`; their seeds may differ).

    Windows must already be validated (`Twin.as_window`). Batches hold at most max_batch twins and
    are padded to `BATCH_SIZES` (repeating the first twin, whose extra results are dropped) so a
    fleet reuses executables; with an executor they run concurrently. A twin's latency is its batch's.
    """
    reports: list[UpdateReport | None] = [None] * len(twins)

    def run(idx, rows):
        start = time.perf_counter()
        model = twins[idx[0]].model
        new, info = engine.update(model, _stack([update_input(twins[i].state) for i in rows]),
                                  _stack([windows[i] for i in rows]))
        info = jax.device_get(info)
        latency = time.perf_counter() - start
        for k, (i, state) in enumerate(zip(idx, _unstack(new, len(idx)))):
            twin, old = twins[i], twins[i].posterior
            twin.state = state._replace(model_error=twin.state.model_error)
            reports[i] = _report(jax.tree.map(lambda x, k=k: x[k], info), old, twin.posterior, latency)

    _each(_batches(twins, max_batch), run, executor)
    return reports


def predict_many(twins: Sequence[Twin], starts: Sequence[tuple], commands: Sequence[np.ndarray], keys,
                 quantiles=(0.05, 0.5, 0.95), settings: Sequence[dict | None] | None = None,
                 draws_per_particle: int = 8, max_batch: int = BATCH_SIZES[-1],
                 executor: Executor | None = None, model_error: bool = True,
                 draws: Sequence[np.ndarray] | None = None) -> list[Bands]:
    """`Twin.predict` for many twins in batched calls per model: starts [(q0, qd0)], commands [(T, nu)] of
    one length T, keys [PRNG key], settings [dict or None]; batched like `update_many`. draws: each
    twin's equally weighted particles (M, D) to predict with (None: its posterior's, `Twin.draws`)."""
    settings = settings or [None] * len(twins)
    out: list[Bands | None] = [None] * len(twins)

    def run(idx, rows):
        checked = [twins[i]._check_start(*starts[i], commands[i]) for i in rows]
        vectors = [twins[i].model.settings_vector(settings[i]) for i in rows]
        stack = lambda xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
        z = [twins[i].draws() if draws is None else draws[i] for i in rows]
        b = bands_many(twins[idx[0]].model, stack([keys[i] for i in rows]), stack(z),
                       stack([c[0] for c in checked]), stack([c[1] for c in checked]),
                       stack([c[2] for c in checked]), stack(vectors), quantiles, draws_per_particle)
        for k, i in enumerate(idx):
            out[i] = twins[i].with_model_error(b[k], keys[i], vectors[k]) if model_error else b[k]

    _each(_batches(twins, max_batch), run, executor)
    return out


def _report(info: engine.UpdateInfo, old: Posterior, new: Posterior, latency_s: float) -> UpdateReport:
    accepted = bool(info.accepted)
    return UpdateReport(accepted, REASONS[int(info.reason)], new.version, engine.ENGINES[int(info.engine)],
                        stages=int(info.stages), moves=int(info.moves), beta=float(info.beta),
                        acceptance=float(info.acceptance), divergent=float(info.divergent), ess=float(info.ess),
                        surprise=float(info.surprise), newton_steps=int(info.newton_steps), drift=bool(info.drift),
                        latency_s=latency_s, changed=_changes(old, new), temper=float(info.temper))


def _changes(old: Posterior, new: Posterior) -> dict[str, dict[str, float]]:
    a, b = old.summary(), new.summary()
    return {n: {"mean_before": a[n]["mean"], "mean_after": b[n]["mean"], "sd_before": a[n]["sd"],
                "sd_after": b[n]["sd"]} for n in new.names}
