"""Shared test set-up: JAX's persistent compilation cache, so compiled rollouts are reused across
runs, a bound on the compiled code one test process keeps mapped, and the grouping of tests over
pytest-xdist workers."""
from collections import Counter

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


def scope_of(nodeid: str) -> str:
    """The unit of work a worker takes whole: a package with shared session fixtures, or else a test file,
    so no fixture is built twice."""
    path = nodeid.split("::", 1)[0]
    package = path.split("/")[1] if path.count("/") >= 2 else None
    return package if package in SHARED_SESSION_FIXTURES else path


def pytest_collection_modifyitems(config, items):
    """Under `--dist loadscope`, the scopes with a test marked `first` go out first, the others after them
    by their number of tests (as xdist orders them), each scope's tests in file order. Order matters
    twice: a long scope left to the end runs alone while the other worker idles (the short walking
    study, last by its one test, took the suite from 24 to 32 minutes), and a test run early compiles
    what later tests load from the persistent cache (all the long tests first took the fleet warm-up
    from 152 to 345 s). So only tests whose compiled programs no other test shares are marked."""
    if config.getvalue("dist") != "loadscope":
        return
    scopes = {item.nodeid: scope_of(item.nodeid) for item in items}
    size = Counter(scopes.values())
    first = {scopes[item.nodeid] for item in items if item.get_closest_marker("first")}
    items.sort(key=lambda item: (scopes[item.nodeid] not in first, -size[scopes[item.nodeid]]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` over `scope_of`'s scopes, in the order the workers collected them (set by
    `pytest_collection_modifyitems`)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ScopeScheduling(config, log)
