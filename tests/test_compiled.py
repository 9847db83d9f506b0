"""Dropping compiled executables: counted mappings, the threshold, and jitted code that still runs."""
import jax
import jax.numpy as jnp
import pytest

from twin_bayes.compiled import mapped_regions, release_compiled_code


@pytest.mark.skipif(mapped_regions() == (0, 1), reason="needs Linux's /proc")
def test_release_drops_compiled_code_past_the_threshold_only_and_jitted_code_still_runs():
    square = jax.jit(lambda x: x * x)
    assert float(square(jnp.float64(3.0))) == 9.0
    used, limit = mapped_regions()
    assert 0 < used < limit
    assert not release_compiled_code(fraction=1.0)
    assert square._cache_size() == 1
    assert release_compiled_code(fraction=0.0)
    assert square._cache_size() == 0
    assert float(square(jnp.float64(4.0))) == 16.0
