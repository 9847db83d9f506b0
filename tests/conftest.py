"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across
runs, and a bound on the compiled code one test process keeps mapped."""
import pytest

import twin_bayes  # noqa: F401  (enables float64)
from twin_bayes.compiled import enable_cache, release_compiled_code

enable_cache()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """After a test module, once half the process's memory-mapping limit is used, the compiled
    executables are dropped (`twin_bayes.compiled.release_compiled_code`); later modules load theirs
    again from the persistent cache."""
    yield
    release_compiled_code()
