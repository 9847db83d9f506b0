"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across
runs, a bound on the compiled code one test process keeps mapped, and the grouping of tests over
pytest-xdist workers."""
from pathlib import Path

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


# Test packages whose session fixtures build one shared twin: all of a package's tests run in one worker.
SHARED_SESSION_FIXTURES = {"inference", "service"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Groups for `--dist loadgroup`: a package with shared session fixtures is one group, any other
    test file its own, so no compiled fixture is built twice."""
    tests = Path(__file__).parent
    for item in items:
        part = item.path.relative_to(tests).parts
        group = part[0] if part[0] in SHARED_SESSION_FIXTURES else "/".join(part)
        item.add_marker(pytest.mark.xdist_group(group))
