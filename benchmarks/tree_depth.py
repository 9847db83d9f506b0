"""MJX's cost against the depth of the body tree, with and without the barrier between tree levels.

MJX computes kinematics one depth level of the body tree at a time. XLA's CPU compiler fuses the
levels of a serial chain into one loop that recomputes each parent per use, so without a barrier
the cost of a step grows exponentially with depth; `twin_bayes._jax` puts an optimization barrier
on each level's results. Measured here, in one process, side by side: serial chains of 2–8 hinge
links and the shipped `panda` (7 links) and `humanoid`, one `mjx.step` inside a jitted `lax.scan`
of --steps steps, compile time and µs per step (median of --repeats timed calls after a warm-up),
with the barrier (the package's MJX) and without it (MJX's own level function, restored for the
measurement).

    .venv/bin/python benchmarks/tree_depth.py          # ~5 min on 2 cores -> benchmarks/results/tree_depth.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command, machine  # noqa: E402

from twin_bayes import _jax  # noqa: E402, I001  (first: float64, MJX's import quiet, the barrier)
from twin_bayes.sim.robot import SHIPPED  # noqa: E402

import jax  # noqa: E402
import mujoco  # noqa: E402
from mujoco import mjx  # noqa: E402
from mujoco.mjx._src import scan  # noqa: E402


def chain(links: int) -> mujoco.MjModel:
    """A serial chain of `links` hinge links, each 0.1 m below the last, rotated a quarter turn, with an
    off-centre inertial (no contacts: no constraint rows)."""
    body = "".join(f'<body pos="0 0 0.1" quat="1 1 0 0"><inertial mass="1" pos="0.01 0.02 0.03" '
                   f'diaginertia="0.02 0.025 0.03"/><joint name="j{i}" axis="0 0 1"/>' for i in range(links))
    motors = "".join(f'<motor joint="j{i}"/>' for i in range(links))
    return mujoco.MjModel.from_xml_string(
        f'<mujoco><option timestep="0.001" integrator="Euler"/><worldbody>{body}{"</body>" * links}'
        f'</worldbody><actuator>{motors}</actuator></mujoco>')


def measure(m: mujoco.MjModel, steps: int, repeats: int) -> dict:
    mx = mjx.put_model(m)
    d = mjx.make_data(mx)
    run = jax.jit(lambda d: jax.lax.scan(lambda d, _: (mjx.step(mx, d), None), d, None, length=steps)[0])
    start = time.perf_counter()
    jax.block_until_ready(run(d))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(d))
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times) / steps
    return {"compile_s": first - per_step * steps, "us_per_step": per_step * 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--robots", nargs="*", default=["panda", "humanoid"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tree_depth.json")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)
    cases = {f"chain_{n}": (lambda n=n: chain(n)) for n in args.depths}
    cases.update({r: (lambda r=r: mujoco.MjModel.from_xml_path(str(SHIPPED[r]))) for r in args.robots})
    barrier = scan._nvmap
    rows = {}
    for name, make in cases.items():
        m = make()
        rows[name] = {"nbody": m.nbody, "depth": int(max(_depth(m, b) for b in range(m.nbody)))}
        for label, level in (("barrier", barrier), ("no_barrier", _jax._level)):
            scan._nvmap = level
            try:
                rows[name][label] = measure(m, args.steps, args.repeats)
            finally:
                scan._nvmap = barrier
        b, nb = rows[name]["barrier"], rows[name]["no_barrier"]
        print(f"{name:10s} depth {rows[name]['depth']}: {b['us_per_step']:9.1f} µs/step with the barrier, "
              f"{nb['us_per_step']:9.1f} without; compile {b['compile_s']:.1f} s / {nb['compile_s']:.1f} s", flush=True)
    out = {"benchmark": "tree_depth", "command": command(), "machine": machine(), "steps": args.steps,
           "backend": jax.default_backend(), "cases": rows}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return 0


def _depth(m: mujoco.MjModel, body: int) -> int:
    return 0 if body == 0 else 1 + _depth(m, m.body_parentid[body])


if __name__ == "__main__":
    raise SystemExit(main())
