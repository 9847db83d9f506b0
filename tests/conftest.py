"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across
runs, a bound on the compiled code one test process keeps mapped, and the grouping of tests over
pytest-xdist workers."""
import pytest

from twin_bayes import _jax  # noqa: F401  (float64 before any test builds an array)
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
# tests/inference builds its small twin's stream in each worker that runs one of its files (its compiles
# come from the persistent cache the second time): the package alone outlasted the rest of the suite.
SHARED_SESSION_FIXTURES = {"service"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with these scopes: a package with shared session fixtures, or else a test
    file, so no fixture is built twice."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PackageScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            package = path.split("/")[1] if path.count("/") >= 2 else None
            return package if package in SHARED_SESSION_FIXTURES else path

    return PackageScheduling(config, log)
