"""JAX's compiled code in a long-lived process: the persistent compilation cache, and a bound on the
compiled executables the process keeps mapped."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import jax


def enable_cache() -> None:
    """Keep compiled executables under $JAX_COMPILATION_CACHE_DIR (default ~/.cache/twin-bayes/jax),
    those that took at least 0.5 s to compile."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "twin-bayes" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def mapped_regions() -> tuple[int, int]:
    """(memory mappings of this process, the kernel's limit on them); (0, 1) off Linux."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 1


def release_compiled_code(fraction: float = 0.5) -> bool:
    """Drop the in-memory compiled executables once `fraction` of the mapping limit is used; True if so.

    XLA:CPU maps each compiled kernel into memory regions of its own. A process that compiles tens of
    thousands of kernels (the test suite, a humanoid experiment) passes Linux's limit on mappings per
    process (`vm.max_map_count`, 65,530 by default), where loading the next executable fails inside
    XLA. Dropped executables are loaded again from the persistent cache when next called.
    """
    used, limit = mapped_regions()
    if used <= fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    return True
