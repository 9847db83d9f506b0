"""The online posterior as a pure state machine: `init(model, key) -> TwinState` and
`update(model, states, windows) -> (states, info)`, in the style of BlackJAX's SMC kernels.

Streaming is an assumed-density filter. Each window's prior is the Gaussian of
the posterior so far (`TwinState.prior`; the config's own prior for a fresh
twin), widened by each parameter's random-walk drift. Its posterior is found by
Laplace importance sampling (`inference.laplace`: Newton to the mode under
`lax.while_loop`, draws from the Laplace Gaussian weighted by target /
proposal); where the weights degenerate, or the config sets `laplace = false`,
tempered SMC from draws of the window prior takes over (`inference.smc`).
Each window's likelihood is tempered by κ, the integrated autocorrelation time of
its residuals (`Autocorrelation`): where the model class is wrong, residuals are
model error, smooth over many samples, and a likelihood that counts them as
independent noise is κ times too confident, window after window (κ ≈ 1 where the
model is exact). κ is estimated at each window's mode from the standardised
multiple-shooting residuals, pooled over recent windows in the state; where the
window's own residuals move κ by more than `TEMPER_TOLERANCE`, the window is
fitted again at the new κ (a fresh twin's first window, a change of regime).
Predictive surprise (the negative log evidence per observation) is scored
against a running baseline; a run of surprising windows is a change point, and
the window is then refitted from the config's prior (the past is forgotten).
The update gate accepts a posterior only when it is finite, reached β = 1, has
few divergent moves and enough effective samples; otherwise the state keeps
the previous posterior, flagged stale with a reason code (`REASONS`), and the
window goes into the state's ring of pending windows for a retry.

`update` takes a leading robot axis (R, ...) on states and windows: one call
updates every robot of a design (`jax.vmap` per phase; the optional phases,
drift refit and tempering, run only where some robot needs them). The model is
a pytree whose numbers are traced, so every config and robot of one design and
batch size shares the same executables (`propose_jit`, `temper_jit`, `finish_jit`: `compiled.Phase`s,
kept across processes).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.compiled import phase
from twin_bayes.inference.autocorrelation import integrated_time, lagged_products
from twin_bayes.inference.discrepancy import ModelErrorState, init_state as init_model_error
from twin_bayes.inference.laplace import MAX_ITER, Laplace, find_mode, importance_draws, importance_weights, log_target
from twin_bayes.inference.posterior import Particles
from twin_bayes.inference.smc import GaussianPrior, gaussian_prior, tempered_update
from twin_bayes.models import TwinModel, Window, map_rows

# Step size of the one-step HMC move, in units where the mass matrix whitens the cloud.
INITIAL_STEP = 0.5
# Windows of the surprise baseline (a robust running median), and pending windows kept for a retry.
SURPRISE_HISTORY = 20
PENDING = 4
# Memory of the residual autocorrelation estimate, per window (about ten windows), and the change of
# κ (as a ratio) beyond which a window is fitted again at the new κ.
AUTOCORRELATION_MEMORY = 0.9
TEMPER_TOLERANCE = 1.25
# Why an update was refused: index = TwinState.reason / UpdateInfo.reason (0: accepted).
# Reasons 4-6 refuse batch fits only (`batch.gate`), the last the whole-log fit (`whole_log.fit_twin`).
REASONS = ("", "non-finite particles or weights", "tempering stopped before beta = 1 (window too informative)",
           "too many divergent moves", "effective sample size below the gate's minimum",
           "chains did not mix (R-hat above the gate's maximum)", "non-finite loss",
           "no mode found (the Newton steps ran out)")
ENGINES = ("laplace-is", "smc")


class Surprise(NamedTuple):
    """Running baseline of per-observation surprise: history (H,) (NaN where empty), count () values
    stored so far, run () consecutive surprising windows."""

    history: jnp.ndarray
    count: jnp.ndarray
    run: jnp.ndarray


class Autocorrelation(NamedTuple):
    """Running sums of the standardised residuals' lagged products (L,) (lags 0 … L − 1 within a
    segment) and of the number of pairs at each lag (L,), each decayed by AUTOCORRELATION_MEMORY per
    window. Empty (counts 0): κ = 1."""

    products: jnp.ndarray
    pairs: jnp.ndarray


class Pending(NamedTuple):
    """A ring of refused windows (P, ...) for a retry: valid (P,), order (P,) arrival number (−1: empty)."""

    windows: Window
    order: jnp.ndarray


class TwinState(NamedTuple):
    """Everything the next update needs, as arrays (D = estimated parameters + noise scales).

    particles: posterior particles (N, D) and normalised log weights (N,), unconstrained;
    prior: the Gaussian of the posterior so far (exact = True: the config's own prior);
    step_size (): the tempered moves' step; surprise: the drift detector's baseline;
    autocorrelation: the residuals' autocorrelation (κ, the likelihood's temper); model_error: the
    learned model error of predictions and the recent windows it is learned from
    (`inference.discrepancy`; updates carry it through); pending: refused windows; key: PRNG key;
    version (): accepted updates (plus restores);
    applied_seq (): last telemetry chunk applied (−1: none; kept by the service);
    stale (): the last update was refused; reason (): why (index into REASONS).
    """

    particles: Particles
    prior: GaussianPrior
    step_size: jnp.ndarray
    surprise: Surprise
    autocorrelation: Autocorrelation
    model_error: ModelErrorState
    pending: Pending
    key: jnp.ndarray
    version: jnp.ndarray
    applied_seq: jnp.ndarray
    stale: jnp.ndarray
    reason: jnp.ndarray


class UpdateInfo(NamedTuple):
    """What one update did, all scalars: accepted, reason (REASONS), engine (ENGINES), SMC stages, MCMC
    moves per particle over them, β,
    mean move acceptance, divergent share, ESS, surprise (nats per observation), Newton iterations,
    drift (a change point was declared and the past forgotten), temper κ (the likelihood's power is 1/κ)."""

    accepted: jnp.ndarray
    reason: jnp.ndarray
    engine: jnp.ndarray
    stages: jnp.ndarray
    moves: jnp.ndarray
    beta: jnp.ndarray
    acceptance: jnp.ndarray
    divergent: jnp.ndarray
    ess: jnp.ndarray
    surprise: jnp.ndarray
    newton_steps: jnp.ndarray
    drift: jnp.ndarray
    temper: jnp.ndarray


def empty_window(model: TwinModel) -> Window:
    """A window of zeros (mask 0) with the model's shapes."""
    r, T = model.robot, model.window_samples
    n_seg = (T - 1) // model.segment_steps
    z = lambda *shape: jnp.zeros(shape)  # noqa: E731
    return Window(z(T, r.nq), z(T, r.nv), z(T, r.nu), z(T), z(len(model.setting_names)),
                  z(n_seg, model.segment_steps * model.observed_width, r.nq + r.nv), z(n_seg, r.nq + r.nv),
                  jnp.asarray(1.0),
                  z(T, len(model.readings)))


def init(model: TwinModel, key) -> TwinState:
    """A fresh twin: N draws of the config's prior, equally weighted, at version 0."""
    return _strong(_init_jit(model, key))


@jax.jit
def _init_jit(model: TwinModel, key) -> TwinState:
    key, sub = jax.random.split(key)
    n, d = model.particles, model.dim
    z = model.sample_prior(sub, n)
    ring = jax.tree.map(lambda x: jnp.zeros((PENDING,) + x.shape, x.dtype), empty_window(model))
    return TwinState(Particles(z, jnp.full(n, -jnp.log(n))), GaussianPrior(jnp.zeros(d), jnp.eye(d), jnp.asarray(True)),
                     jnp.asarray(INITIAL_STEP), init_surprise(), init_autocorrelation(model),
                     init_model_error(model),
                     Pending(ring, jnp.full(PENDING, -1)), key,
                     jnp.asarray(0), jnp.asarray(-1), jnp.asarray(False), jnp.asarray(0))


def _strong(tree):
    """Every leaf as a strongly typed array: Python scalars make weakly typed ones, and a state whose
    leaves change weak type between updates would compile the update again. (`jax.device_put`, not
    `jnp.asarray`, which compiles a staging program per shape.)"""
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x)), tree)


def init_surprise() -> Surprise:
    return Surprise(jnp.full(SURPRISE_HISTORY, jnp.nan), jnp.asarray(0), jnp.asarray(0))


def init_autocorrelation(model: TwinModel) -> Autocorrelation:
    return Autocorrelation(jnp.zeros(model.segment_steps), jnp.zeros(model.segment_steps))


def window_autocorrelation(model: TwinModel, z, q, qd, s, window: Window) -> Autocorrelation:
    """The lagged products and pair counts (L,) of one window's standardised residuals at z (D,), given
    its segment predictions there (q (S, L, nq), qd (S, L, nv), readings (S, L, R)), pooled over segments
    and observed channels (lags within a segment: each restarts from its measured state)."""
    return Autocorrelation(*lagged_products(*model.standardised_residuals(z, q, qd, s, window)))


def merge_autocorrelation(a: Autocorrelation, window: Autocorrelation) -> Autocorrelation:
    return jax.tree.map(lambda x, w: AUTOCORRELATION_MEMORY * x + w, a, window)


def autocorrelation_time(model: TwinModel, a: Autocorrelation) -> jnp.ndarray:
    """κ () ≥ 1 (`autocorrelation.integrated_time`); 1 where nothing is recorded yet, or where the
    config sets `autocorrelation = false`."""
    return jnp.where(model.numbers.temper & (a.pairs[0] > 0), integrated_time(a.products, a.pairs), 1.0)


def from_particles(state: TwinState, particles: Particles, version) -> TwinState:
    """The state with its posterior replaced by particles (a restore from particles alone): the window
    prior becomes their Gaussian."""
    return _strong(state._replace(particles=particles,
                                  prior=gaussian_prior(particles, jnp.zeros(particles.z.shape[1]), False),
                                  version=version, stale=False, reason=0))


def window_prior(model: TwinModel, state: TwinState) -> GaussianPrior:
    """The prior of the next window: the state's Gaussian widened by each parameter's drift (D,) sd."""
    g = state.prior
    cov = g.chol @ g.chol.T + jnp.diag(model.numbers.drift ** 2)
    return GaussianPrior(g.mean, jnp.linalg.cholesky(cov), g.exact)


# --- the phases of one update, per robot ---------------------------------------------------
class _Proposal(NamedTuple):
    """A candidate posterior and what it took: particles, the Gaussian it leaves as the next prior,
    the linearised windows (1, ...), its Laplace fit, and the update's account."""

    particles: Particles
    gauss: GaussianPrior
    windows: Window
    lap: Laplace
    autocorrelation: Autocorrelation
    info: UpdateInfo


def _laplace(model: TwinModel, g: GaussianPrior, window: Window, z_start, key, candidates, picking) -> _Proposal:
    """Mode, curvature and importance draws of one window's posterior under prior g (the window's
    likelihood to its power `window.weight`), Newton from z_start; start-state sensitivities are
    linearised at the mode (`laplace.find_mode`), and so are the predictions whose residuals give
    the window's autocorrelation.

    Where `picking`, no Newton step is taken and the target is evaluated at the candidates (N, D)
    instead of the draws; the best of them takes the mode's place (where the next pass starts).
    Either way the update simulates its N points at one place in its program."""
    lap, windows, lin = find_mode(model, z_start, jax.tree.map(lambda x: x[None], window), g,
                                  jnp.where(picking, 0, MAX_ITER))
    at_mode = jax.tree.map(lambda x: x[0], windows)
    acorr = window_autocorrelation(model, lap.mean, *(p[0] for p in lin.at(lap.mean)), at_mode)
    draws, log_q = importance_draws(key, lap, model.particles)
    points = jnp.where(picking, candidates, draws)
    log_p = jax.vmap(lambda x: log_target(model, g, windows, x))(points)
    new, ess, log_evidence = importance_weights(points, log_p, log_q)
    best = points[jnp.argmax(jnp.where(jnp.isfinite(log_p), log_p, -jnp.inf))]
    lap = lap._replace(mean=jnp.where(picking, best, lap.mean))
    n_obs = jnp.sum(window.mask) * model.observed_width
    f, i = jnp.asarray(0.0), jnp.asarray(0)
    info = UpdateInfo(jnp.asarray(False), i, i, jnp.asarray(1), i, jnp.asarray(1.0), jnp.asarray(jnp.nan), f, ess,
                      -log_evidence / n_obs, lap.iterations, jnp.asarray(False), 1.0 / window.weight)
    return _Proposal(new, GaussianPrior(lap.mean, lap.chol, jnp.asarray(False)), windows, lap, acorr, info)


def _score_surprise(model: TwinModel, s: Surprise, value) -> tuple[Surprise, jnp.ndarray]:
    """Record value; high when it lies drift_sigma robust sds above the baseline (≥ 3 values)."""
    med = jnp.nanmedian(s.history)
    mad = 1.4826 * jnp.nanmedian(jnp.abs(s.history - med)) + 0.05 * jnp.abs(med) + 1e-6
    high = jnp.isfinite(value) & (s.count >= 3) & (value > med + model.numbers.drift_sigma * mad)
    keep = jnp.isfinite(value) & ~high
    history = jnp.where(keep, s.history.at[s.count % SURPRISE_HISTORY].set(value), s.history)
    return Surprise(history, s.count + keep, jnp.where(high, s.run + 1, 0)), high


def _laplace_passes(model: TwinModel, g: GaussianPrior, surprise: Surprise, acorr: Autocorrelation, window: Window,
                    z_start, candidates, keys):
    """The Laplace update at the state's κ; a second pass, Newton from the first pass's mode, where
    the first completes a run of surprising windows (a change point: under the config's own prior,
    the past forgotten) or where the window's residuals move κ by more than TEMPER_TOLERANCE (at
    the new κ). Under the config's own wide prior (g.exact), a pass before them picks where Newton
    starts: the best of the candidates (N, D) (the prior's particles), else Newton starts at z_start.

    Returns (proposal with its account, the prior it used, the surprise baseline and the
    autocorrelation after it). The passes are a `while_loop`, so the update compiles one Laplace step.
    """
    fresh = g._replace(exact=jnp.asarray(True))
    pick = g.exact.astype(jnp.int32)                   # passes that pick the start: 1 or 0

    def body(carry):
        k, prop, _, s, drift, kappa, merged_before, again = carry
        picking, first = k < pick, k == pick
        g_k = _where(first | ~drift, g, fresh)
        weight = jnp.where(picking, window.weight, 1.0 / kappa)
        # A later pass starts from the previous one's mode and its segments' start states (`Window.start`).
        start = jnp.where(k == 0, window.start, prop.windows.start[0])
        new = _laplace(model, g_k, window._replace(weight=weight, start=start),
                       jnp.where(k == 0, z_start, prop.lap.mean),
                       keys[k - pick], candidates, picking)
        merged = _where(picking, merged_before, merge_autocorrelation(acorr, new.autocorrelation))
        kappa_new = jnp.where(picking, kappa, autocorrelation_time(model, merged))
        scored, high = _score_surprise(model, s, new.info.surprise)
        drift = jnp.where(first, high & (scored.run >= model.numbers.drift_windows), drift)
        s = _where(first, _where(drift, init_surprise(), scored), s)
        again = picking | (first & (drift | (jnp.abs(jnp.log(kappa_new / kappa)) > jnp.log(TEMPER_TOLERANCE))))
        new = new._replace(info=new.info._replace(surprise=jnp.where(first, new.info.surprise, prop.info.surprise),
                                                  drift=drift))
        return k + 1, _like(new, blank), g_k, s, drift, kappa_new, merged, again

    blank = _blank(model, window, z_start)
    kappa = autocorrelation_time(model, acorr)
    carry = (jnp.asarray(0), blank, g, surprise, jnp.asarray(False), kappa, acorr, jnp.asarray(False))
    _, prop, g_used, surprise, _, _, acorr, _ = jax.lax.while_loop(lambda c: (c[0] == 0) | c[7], body, carry)
    return prop, g_used, surprise, acorr


def _blank(model: TwinModel, window: Window, z) -> _Proposal:
    """A proposal of zeros with `_laplace`'s shapes and dtypes (a loop's initial carry), built by hand:
    `jax.eval_shape` of `_laplace` would trace the whole update a second time."""
    n, d = model.particles, z.shape[0]
    zeros = lambda *shape, dtype=z.dtype: jnp.zeros(shape, dtype)  # noqa: E731
    b, i, f = jnp.bool_, jnp.int64, z.dtype
    info = UpdateInfo(*(zeros(dtype=t) for t in (b, i, i, i, i, f, f, f, f, f, i, b, f)))
    return _Proposal(Particles(zeros(n, d), zeros(n)), GaussianPrior(zeros(d), zeros(d, d), zeros(dtype=b)),
                     jax.tree.map(lambda x: jnp.zeros((1,) + x.shape, x.dtype), window),
                     Laplace(zeros(d), zeros(d, d), zeros(dtype=i), zeros(dtype=i)), init_autocorrelation(model), info)


def _like(tree, template):
    """tree's leaves in template's dtypes (strongly typed), so that a loop's carry keeps its type."""
    return jax.tree.map(lambda x, t: jnp.asarray(x).astype(t.dtype), tree, template)


def _temper(model: TwinModel, state: TwinState, g: GaussianPrior, prop: _Proposal, key):
    """Tempered SMC from fresh draws of the window prior g (the config's prior where g.exact)."""
    k1, k2 = jax.random.split(key)
    n, d = model.particles, model.dim
    z0 = jnp.where(g.exact, model.sample_prior(k1, n), g.mean + jax.random.normal(k1, (n, d)) @ g.chol.T)
    new, t = tempered_update(model, k2, z0, prop.windows, g, state.step_size, model.numbers.max_stages)
    info = prop.info._replace(engine=jnp.asarray(1), stages=t.stages, moves=t.moves, beta=t.beta,
                              acceptance=t.acceptance, divergent=t.divergent, ess=t.ess)
    return prop._replace(particles=new, gauss=gaussian_prior(new, jnp.zeros(d), False), info=info), t.step_size


def gate(model: TwinModel, p: Particles, beta, divergent, ess) -> jnp.ndarray:
    """0 when a candidate posterior may be accepted, else the first failed check (index into REASONS)."""
    nums = model.numbers
    checks = jnp.stack([~(jnp.all(jnp.isfinite(p.z)) & jnp.all(jnp.isfinite(p.log_weights))), beta < 1.0,
                        divergent > nums.max_divergent, ess < nums.min_ess * p.z.shape[0]])
    return jnp.where(jnp.any(checks), jnp.argmax(checks) + 1, 0)


def _push(pending: Pending, window: Window) -> Pending:
    """Keep window in the ring: in an empty slot (order −1), else over the oldest entry."""
    slot = jnp.argmin(pending.order)
    windows = jax.tree.map(lambda ring, w: ring.at[slot].set(w), pending.windows, window)
    return Pending(windows, pending.order.at[slot].set(jnp.max(pending.order) + 1))


def _finish(model: TwinModel, state: TwinState, window: Window, prop: _Proposal, surprise: Surprise,
            acorr: Autocorrelation, key, step):
    """Gate the proposal; the next state and the update's account."""
    info = prop.info
    reason = gate(model, prop.particles, info.beta, info.divergent, info.ess)
    ok = reason == 0
    new = TwinState(_where(ok, prop.particles, state.particles), _where(ok, prop.gauss, state.prior), step,
                    surprise, _where(ok, acorr, state.autocorrelation), state.model_error,
                    _where(ok, state.pending, _push(state.pending, window)), key, state.version + ok,
                    state.applied_seq, ~ok, reason)
    return new, info._replace(accepted=ok, reason=reason)


# --- the batched update -----------------------------------------------------------------------
def _where(flag, a, b):
    """a where the scalar flag is set, else b (pytrees of one robot)."""
    return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def _select(flags, a, b):
    """Per robot (flags (R,)): a where the flag is set, else b (pytrees with a leading robot axis)."""
    return jax.tree.map(lambda x, y: jnp.where(flags.reshape(flags.shape + (1,) * (x.ndim - 1)), x, y), a, b)


class Proposal(NamedTuple):
    """Phase one of an update, per robot (R, ...): the Laplace candidate, the window prior it used,
    the surprise baseline after it, whether it must be tempered, and the keys left for the rest."""

    prop: _Proposal
    prior: GaussianPrior
    surprise: Surprise
    autocorrelation: Autocorrelation
    temper: jnp.ndarray
    keys: jnp.ndarray


def propose(model: TwinModel, states: TwinState, windows: Window) -> Proposal:
    """The Laplace phase for every robot (states and windows with a robot axis (R, ...))."""
    keys = jax.vmap(lambda k: jax.random.split(k, 5))(states.key)          # (R, 5, 2)
    g = map_rows(window_prior, (model,), states)
    z_ref = jax.vmap(lambda p: jnp.exp(p.log_weights) @ p.z)(states.particles)
    prop, g, surprise, acorr = map_rows(_laplace_passes, (model,), g, states.surprise, states.autocorrelation,
                                        windows, z_ref, states.particles.z, keys[:, 1:3])
    temper = ~(model.numbers.laplace & (prop.info.ess >= model.numbers.target_ess * model.particles))
    return Proposal(prop, g, surprise, acorr, temper, keys)


def temper(model: TwinModel, states: TwinState, p: Proposal) -> tuple[Proposal, TwinState]:
    """Tempered SMC for the robots whose Laplace weights degenerated (`p.temper`); the others keep
    their Laplace candidate. The step size learned is kept in `states` (returned with the proposal)."""
    prop, step = map_rows(_temper, (model,), states, p.prior, p.prop, p.keys[:, 3])
    prop, step = _select(p.temper, (prop, step), (p.prop, states.step_size))
    return p._replace(prop=prop), states._replace(step_size=step)


def finish(model: TwinModel, states: TwinState, windows: Window, p: Proposal) -> tuple[TwinState, UpdateInfo]:
    """Gate every robot's candidate: the next states and the updates' accounts."""
    return map_rows(_finish, (model,), states, windows, p.prop, p.surprise, p.autocorrelation, p.keys[:, 0],
                    states.step_size)


propose_jit, temper_jit, finish_jit = phase(propose), phase(temper), phase(finish)


def update(model: TwinModel, states: TwinState, windows: Window) -> tuple[TwinState, UpdateInfo]:
    """Bring one window per robot into its posterior; states and windows carry a robot axis (R, ...).

    windows come from `TwinModel.window` (validated, padded), stacked. The states' model error is carried
    through unread; it may be None (as `twin.update_many` passes it). Three compiled phases:
    `propose` (Laplace), `temper` (only when some robot's importance weights degenerate; it compiles
    the first time one does) and `finish` (the gate). Deterministic: the same states and windows give
    the same result; a refused window leaves the posterior as it was (stale).
    """
    p = propose_jit(model, states, windows)
    if bool(jnp.any(p.temper)):
        p, states = temper_jit(model, states, p)
    return finish_jit(model, states, windows, p)


def state_arrays(state: TwinState) -> dict[str, np.ndarray]:
    """The state's leaves by their path (e.g. ".particles.z"), for a checkpoint."""
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


# Leaves a saved state may lack, saved before they existed, read as zeros: a pending window's start-state
# offsets (`Window.start`; zeros: its measured start states, as every window has before its search).
ADDED_LEAVES = (".pending.windows.start",)


def state_from_arrays(template: TwinState, arrays: dict[str, np.ndarray]) -> TwinState:
    """The inverse of `state_arrays`, checked against a template state (`init` of the same model):
    ValueError names a missing leaf (but those of `ADDED_LEAVES`, zeros) or one of another shape or dtype."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = jax.tree_util.keystr(path)
        if name not in arrays and name in ADDED_LEAVES:
            arrays = {**arrays, name: np.zeros_like(np.asarray(leaf))}
        if name not in arrays:
            raise ValueError(f"state has no {name}")
        a = np.asarray(arrays[name])
        if a.shape != np.shape(leaf) or a.dtype != np.asarray(leaf).dtype:
            raise ValueError(f"state {name}: {a.dtype}{list(a.shape)}, expected "
                             f"{np.asarray(leaf).dtype}{list(np.shape(leaf))}")
        leaves.append(jnp.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)
