"""Saving and loading a twin's posterior: particles (NPZ, no pickle) plus ArviZ netCDF for tools,
and the learned model error of its predictions (JSON) where the twin has one."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from twin_bayes.diagnostics import save_netcdf, to_inference_data
from twin_bayes.inference.engine import state_arrays, state_from_arrays
from twin_bayes.inference.discrepancy import ModelError
from twin_bayes.inference.posterior import Particles
from twin_bayes.inference.twin import Twin

PARTICLES = "particles.npz"
STATE = "state.npz"
NETCDF = "posterior.nc"
SUMMARY = "summary.json"
MODEL_ERROR = "model_error.json"


def save_posterior(twin: Twin, out: str | Path, summary: dict | None = None, engine: str = "particles") -> Path:
    """Write particles.npz, state.npz (the whole TwinState), posterior.nc (ArviZ), summary.json (default: the config's
    path and each parameter's summary) and, where the twin has a model error (`Twin.model_error`), model_error.json
    into out/ (a stale model_error.json is removed).

    posterior.nc names the engine of a batch fit with chains; a particle posterior is labelled `engine`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    post = twin.posterior
    p = twin.particles
    np.savez(out / PARTICLES, z=np.asarray(p.z), log_weights=np.asarray(p.log_weights),
             names=np.array(post.names), version=post.version)
    np.savez(out / STATE, **state_arrays(twin.state))
    res = twin.last_batch
    if res is not None and res.chains is not None:
        values = np.asarray(jnp.stack([twin.model.constrain(z) for z in res.chains.reshape(-1, twin.model.dim)]))
        values = values.reshape(res.chains.shape)
        samples = {n: values[..., i] for i, n in enumerate(post.names)}
        idata = to_inference_data(samples, prior=_prior_draws(twin), sample_stats={"diverging": res.divergent},
                                  attrs={"config": str(twin.cfg.source), "engine": res.info.get("engine", "")})
    else:
        samples = {n: post.values[None, :, i] for i, n in enumerate(post.names)}
        idata = to_inference_data(samples, prior=_prior_draws(twin), weights=post.weights[None],
                                  attrs={"config": str(twin.cfg.source), "engine": engine})
    save_netcdf(idata, out / NETCDF)
    summary = summary or {"config": str(twin.cfg.source), "parameters": post.summary()}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    if twin.model_error is not None:
        (out / MODEL_ERROR).write_text(json.dumps(twin.model_error.as_dict(), indent=2))
    else:
        (out / MODEL_ERROR).unlink(missing_ok=True)
    return out


def _prior_draws(twin: Twin, n: int = 2000) -> dict[str, np.ndarray]:
    values = np.asarray(_prior_values(twin.model, jax.random.PRNGKey(12345), n))
    return {name: values[:, i] for i, name in enumerate(twin.model.names)}


@partial(jax.jit, static_argnums=2)
def _prior_values(model, key, n: int):
    """n prior draws (n, D), constrained."""
    return jax.vmap(model.constrain)(model.sample_prior(key, n))


def load_posterior(twin: Twin, directory: str | Path) -> Twin:
    """Load particles.npz (and model_error.json, if there) from directory into twin (names must match its config)."""
    path = Path(directory) / PARTICLES
    try:
        data = np.load(path, allow_pickle=False)
        names = tuple(str(x) for x in data["names"])
        z, log_w, version = data["z"], data["log_weights"], int(data["version"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a readable posterior ({err})") from None
    if names != twin.model.names:
        raise ValueError(f"{path}: posterior has parameters {names}, the config estimates {twin.model.names}")
    if z.ndim != 2 or z.shape[1] != len(names) or log_w.shape != (z.shape[0],) or not np.isfinite(z).all():
        raise ValueError(f"{path}: particles have bad shapes or non-finite values")
    model_error = None
    if (Path(directory) / MODEL_ERROR).exists():
        me_path = Path(directory) / MODEL_ERROR
        try:
            model_error = ModelError.from_dict(json.loads(me_path.read_text()), twin.model.robot.nq,
                                               len(twin.model.setting_names))
        except (OSError, ValueError) as err:
            raise ValueError(f"{me_path}: {err}") from None
    twin.restore(Particles(jnp.asarray(z), jnp.asarray(log_w)), version)
    state_path = Path(directory) / STATE
    if state_path.exists():     # the whole TwinState: the window prior (e.g. a Laplace Gaussian) too
        try:
            with np.load(state_path, allow_pickle=False) as arrays:
                twin.state = state_from_arrays(twin.state, dict(arrays))
        except (OSError, ValueError) as err:
            raise ValueError(f"{state_path}: not a state of this config's twin ({err})") from None
    twin.model_error = model_error
    return twin
