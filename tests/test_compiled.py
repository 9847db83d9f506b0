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


PHASE_SCRIPT = """
import json, sys, warnings
import twin_bayes._jax
import jax, jax.numpy as jnp
from twin_bayes.compiled import enable_cache, exported_dir, phase
from twin_bayes.inference.posterior import Particles
enable_cache()
traced = []

def scaled(model, p, n):
    traced.append(n)
    return Particles(p.z * model["scale"] + n, p.log_weights), jnp.sum(p.z)

run = phase(scaled, static_argnums=(2,))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out, total = run({"scale": jnp.asarray(2.0)}, Particles(jnp.ones((3, 2)), jnp.zeros(3)), int(sys.argv[1]))
print(json.dumps({"traced": len(traced), "type": type(out).__name__, "z": out.z.tolist(), "total": float(total),
                  "files": sorted(p.name for p in exported_dir().iterdir()),
                  "warnings": [str(w.message) for w in caught]}))
"""


def _phase_process(tmp_path, n: int) -> dict:
    import json
    import os
    import subprocess
    import sys
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", PHASE_SCRIPT, str(n)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_a_phase_is_traced_once_per_machine_and_loaded_by_later_processes(tmp_path):
    first = _phase_process(tmp_path, 1)
    assert first["traced"] == 1 and first["type"] == "Particles" and len(first["files"]) == 1
    assert first["z"] == [[3.0, 3.0]] * 3 and first["total"] == 6.0
    second = _phase_process(tmp_path, 1)          # a new process: loads the artifact, traces nothing
    assert second["traced"] == 0
    assert {k: second[k] for k in ("type", "z", "total", "files")} == {k: first[k] for k in ("type", "z", "total",
                                                                                             "files")}
    other = _phase_process(tmp_path, 5)           # another static argument: its own artifact
    assert other["traced"] == 1 and other["z"] == [[7.0, 7.0]] * 3 and len(other["files"]) == 2
    artifact = tmp_path / "cache" / "exported" / first["files"][0]
    artifact.write_bytes(artifact.read_bytes()[:100])   # truncated: said, rebuilt, same result
    rebuilt = _phase_process(tmp_path, 1)
    assert rebuilt["traced"] == 1 and rebuilt["z"] == first["z"]
    assert any("unreadable" in w for w in rebuilt["warnings"])
    assert _phase_process(tmp_path, 1)["traced"] == 0
