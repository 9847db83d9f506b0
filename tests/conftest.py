"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across
runs, and a bound on the compiled code one test process keeps mapped."""
import gc
import os
from pathlib import Path

import jax
import pytest

import twin_bayes  # noqa: F401  (enables float64)

_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "twin-bayes" / "jax"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _mapped_regions() -> tuple[int, int]:
    """(memory mappings of this process, the kernel's limit on them); (0, 1) off Linux."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 1


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """XLA:CPU maps each compiled kernel into three memory regions of its own. The whole suite in one
    process compiles tens of thousands of kernels, past Linux's limit on mappings per process
    (`vm.max_map_count`, 65,530 by default), where loading the next executable crashes inside
    XLA. After a test module, once half the limit is used, the compiled executables are dropped;
    later modules load theirs again from the persistent cache."""
    yield
    used, limit = _mapped_regions()
    if used > limit // 2:
        jax.clear_caches()
        gc.collect()
