"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across runs."""
import os
from pathlib import Path

import jax

import twin_bayes  # noqa: F401  (enables float64)

_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "twin-bayes" / "jax"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
