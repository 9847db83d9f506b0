"""`twin-bayes warmup` compiles what a service on this machine runs: after it, a fleet's first windows
(tempered, from the prior), its predictions, its re-predicted windows and the model error learned
from them compile nothing."""
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from twin_bayes.inference import Twin
from twin_bayes.inference.twin import predict_many, update_many
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
    twins[0].learn_model_error(windows[0])
    assert out["model_error_s"] > 0 and twins[0].state.model_error.count == 1
    assert bands[0].q.shape == (len(QUANTILES), 25, model.robot.nq)
    assert bands[0].samples_q.shape[0] == model.particles * PREDICTION_DRAWS
    assert again[0].samples_q.shape[0] == model.particles * VALIDATION_DRAWS
    assert helpers.cache_sizes() == before, (before, helpers.cache_sizes())
