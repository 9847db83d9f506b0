"""`twin-bayes warmup` compiles what a service on this machine runs: after it, a fleet's first windows
(tempered, from the prior), its predictions, its re-predicted windows and the model error learned
from them compile nothing. Warmup compiles the tempered phase with a model allowed no stage (not to
temper from the prior for minutes); the service's own model runs that same executable."""
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from twin_bayes.inference import Twin, engine
from twin_bayes.inference.twin import _stack, predict_many, update_input, update_many
from twin_bayes.service.warmup import warmup
from twin_bayes.service.worker import PREDICTION_DRAWS, QUANTILES, VALIDATION_DRAWS, parallelism

ROBOTS = 6      # on CPU: a batch of 4 and one of 2, both padded to 4


def test_after_warmup_a_fleet_updates_and_predicts_without_compiling(small_cfg, model, helpers, stream_windows):
    out = warmup(small_cfg, [ROBOTS], 0.05)
    max_batch, threads = parallelism()
    assert out["max_batch"] == max_batch and out[f"robots_{ROBOTS}_s"] > 0
    before = helpers.cache_sizes()
    twins = [Twin(small_cfg, model) for _ in range(ROBOTS)]
    windows = [t.as_window(stream_windows[k % 2]) for k, t in enumerate(twins)]
    with ThreadPoolExecutor(2) as pool:     # as the service's worker runs them
        reports = update_many(twins, windows, max_batch, pool)
        assert all(r.accepted for r in reports), [r.reason for r in reports]
        last = stream_windows[1]
        starts = [(last["q"][-1], last["qd"][-1])] * ROBOTS
        keys = [jax.random.PRNGKey(k) for k in range(ROBOTS)]
        horizon = [np.repeat(last["ctrl"][-1:], 25, axis=0)] * ROBOTS          # 0.05 s at 500 Hz
        bands = predict_many(twins, starts, horizon, keys, QUANTILES, draws_per_particle=PREDICTION_DRAWS,
                             max_batch=max_batch, executor=pool)
        again = predict_many(twins[:1], starts[:1], [last["ctrl"][:-1]], keys[:1], QUANTILES,   # a window re-predicted
                             draws_per_particle=VALIDATION_DRAWS, max_batch=max_batch)
    # The tempered phase of the service's own model (max_stages as configured), on windows of padding
    # only: β reaches 1 at the first reweighting, so it runs no stage and only its executable is tried.
    states = _stack([update_input(t.state) for t in twins[:4]])
    blank = _stack([w._replace(mask=0.0 * w.mask) for w in windows[:4]])
    tempered, _ = engine.temper_jit(model, states, engine.propose_jit(model, states, blank))
    assert model.numbers.max_stages > 1 and np.all(np.asarray(tempered.prop.info.stages) == 1)
    twins[0].learn_model_error(windows[0])
    assert out["model_error_s"] > 0 and twins[0].state.model_error.count == 1
    assert bands[0].q.shape == (len(QUANTILES), 25, model.robot.nq)
    assert bands[0].samples_q.shape[0] == model.particles * PREDICTION_DRAWS
    assert again[0].samples_q.shape[0] == model.particles * VALIDATION_DRAWS
    assert helpers.cache_sizes() == before, (before, helpers.cache_sizes())
