"""Simulator benchmark: compile time, rollout throughput, gradient cost, native MuJoCo baseline.

For each shipped robot (or those named with --robots) this measures, on the
default JAX device:

* compile time of the jitted rollout: first call minus the steady-state call
  (the persistent compilation cache is disabled in this process, so the
  figure is a real trace + lower + XLA compile);
* steps/s of one rollout and of vmapped batches of 64 and 1024 particles
  (theta vectors perturbed by ~1 % around nominal; one compiled function per
  batch size; batch steps/s counts particle-steps);
* gradient cost: jax.grad of sum(q**2) with respect to the whole theta
  vector, divided by the forward rollout time at the same horizon; the
  robot's grad_mode says whether that is reverse mode or forward-mode
  sensitivities behind a custom_vjp;
* native MuJoCo: `twin_bayes.sim.native.native_rollout` (what the checks use:
  servo torque evaluated each step), a bare `mj_step` loop with direct ctrl,
  and `mujoco.rollout` over the same batches (one perturbed MjModel per
  particle, one thread per CPU);

and writes JSON (default benchmarks/results/sim.json) plus a table.

    .venv/bin/python benchmarks/sim.py                 # all robots, 200 steps, 5 repeats
    .venv/bin/python benchmarks/sim.py --quick         # smoke run
    .venv/bin/python benchmarks/sim.py --robots arm2 --steps 500

All figures are medians over --repeats timed calls, after one untimed
warm-up call, with `jax.block_until_ready`.

Deadlocks. jaxlib's batched LAPACK kernels (the Cholesky factorizations MJX
runs every step) split a large batch over XLA's intra-op thread pool and wait
for the pieces from inside a pool thread; on a machine with few cores two
such kernels running at once can take every pool thread and wait forever (0 %
CPU). Each robot is therefore measured in a child process with a watchdog
that declares a deadlock when a JAX call makes no CPU progress for
--idle-s seconds; the case is recorded as deadlocked, the child is restarted
for the remaining cases, and a deadlocked vmap batch is measured again as
`lax.map(vmap, batch_size=--chunk)` (sub-batches below the kernels' parallel
threshold), with `mode` saying which one a figure comes from.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, git_state, machine  # noqa: E402

BATCHES = (64, 1024)
# Forward rollouts per tangent direction of a forward-sensitivity gradient, to plan its horizon
# (measured on CPU: about 9-14).
GRAD_COST_GUESS = 15.0
CHILD_EXIT_DEADLOCK = 3


# ----------------------------------------------------------------------------- child: setup

def _setup_jax():
    warnings.filterwarnings("ignore", message=".*Brax System.*")
    import jax
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    # Compile times below must be real compiles, not cache hits.
    jax.config.update("jax_enable_compilation_cache", False)
    return jax


class Watchdog:
    """Declares a deadlock when a JAX call in flight makes no CPU progress for `idle_s` seconds.

    Compiling and running both burn CPU; a deadlocked XLA thread pool sits at 0 %.
    `on_deadlock(label)` runs in the watchdog thread, then the process exits.
    """

    def __init__(self, idle_s: float, on_deadlock):
        self.idle_s, self.on_deadlock = idle_s, on_deadlock
        self.label = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, label):
        with self._lock:
            self.label = label

    def clear(self):
        with self._lock:
            self.label = None

    def _run(self):
        last_cpu, last_change = time.process_time(), time.monotonic()
        while True:
            time.sleep(1.0)
            cpu = time.process_time()
            now = time.monotonic()
            if cpu - last_cpu > 0.05 * 1.0:  # more than 5 % of one core over the last second
                last_change = now
            last_cpu = cpu
            with self._lock:
                label = self.label
            if label is None:
                last_change = now
            elif now - last_change > self.idle_s:
                self.on_deadlock(label)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(CHILD_EXIT_DEADLOCK)


# ----------------------------------------------------------------------------- child: measurement

def inputs(robot, steps: int, seed: int):
    """Nominal theta, start state and random commands (steps, nu) for a robot."""
    import numpy as np
    rng = np.random.default_rng(seed)
    m = robot.mj_model
    theta = np.asarray(robot.to_vector(robot.nominal()))
    q0 = np.array(m.qpos0, dtype=np.float64)
    qd0 = np.zeros(m.nv)
    if robot.actuator.needs_state:  # servo goals (rad) around the start position
        goal0 = q0[robot.layout.act_qadr]
        commands = goal0 + rng.uniform(-0.5, 0.5, size=(steps, m.nu))
    else:
        lo = np.where(m.actuator_ctrllimited, m.actuator_ctrlrange[:, 0], -1.0)
        hi = np.where(m.actuator_ctrllimited, m.actuator_ctrlrange[:, 1], 1.0)
        commands = rng.uniform(lo, hi, size=(steps, m.nu))
    return theta, q0, qd0, commands


def perturbed(robot, theta, n: int, seed: int, rel: float = 0.01):
    """n theta vectors: positive parameters scaled by exp(rel·N(0,1)), others shifted by 1e-3·N(0,1)."""
    import numpy as np
    rng = np.random.default_rng(seed + 1)
    positive = np.array([s.positive for s in robot.specs])
    z = rng.standard_normal((n, theta.size))
    return np.where(positive, theta * np.exp(rel * z), theta + 1e-3 * z)


def time_jitted(jax, dog, label, fn, args, repeats: int) -> dict:
    """First call (compile + run), one untimed warm-up, then the median of `repeats` calls."""
    dog.watch(label)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    dog.clear()
    med = statistics.median(times)
    return {"first_call_s": first, "median_s": med, "compile_s": max(first - med, 0.0),
            "min_s": min(times), "max_s": max(times)}


def time_python(fn, repeats: int, min_sample_s: float = 0.05) -> float:
    """Median seconds per call of a host-side function; short calls are looped per sample."""
    import numpy as np
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    inner = max(1, int(np.ceil(min_sample_s / max(once, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def run_child(args) -> int:
    """Measure one robot, resuming from and saving to the partial-results file after every case."""
    jax = _setup_jax()
    import jax.numpy as jnp
    import mujoco
    import mujoco.rollout
    import numpy as np

    from twin_bayes.sim import load_robot, model_fields
    from twin_bayes.sim.native import native_rollout
    # the module, not the function `twin_bayes.sim.rollout` that the package re-exports
    sim_rollout = importlib.import_module("twin_bayes.sim.rollout")

    path = Path(args.partial)
    res = json.loads(path.read_text()) if path.exists() else {}
    name, steps, repeats, batches = args.child, args.steps, args.repeats, args.batches

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, path)

    def log(msg):
        print(f"  [{name}] {msg}", file=sys.stderr, flush=True)

    def deadlocked(label):
        section, key = label
        entry = res.setdefault(section, {})
        if key is not None:
            entry = entry.setdefault(key, {})
        entry.setdefault("deadlocked", []).append(
            f"{entry.get('mode', 'vmap') if section == 'batch' else section}: no CPU progress for "
            f"{args.idle_s:.0f}s in a JAX call (XLA CPU thread-pool deadlock)")
        save()
        log(f"{section} {key or ''}: DEADLOCK (no CPU progress for {args.idle_s:.0f}s); restarting")

    dog = Watchdog(args.idle_s, deadlocked)

    robot = load_robot(name)
    theta, q0, qd0, commands = inputs(robot, steps, args.seed)
    thetas = perturbed(robot, theta, max(batches, default=1), args.seed)
    P = theta.size
    res.update({
        "nq": robot.nq, "nv": robot.nv, "nu": robot.nu, "dt": robot.dt, "n_params": P,
        "actuator": robot.actuator.name, "grad_mode": robot.grad_mode,
        "dtype": str(jnp.dtype(robot.dtype)), "steps": steps, "repeats": repeats,
    })

    def forward(th, cmds):
        return sim_rollout.rollout(robot, th, jnp.asarray(q0), jnp.asarray(qd0), cmds)

    def horizon(predicted_s: float) -> int:
        """`steps`, or fewer (a multiple of 10, at least 10) so that a case takes about max_case_s."""
        if predicted_s <= args.max_case_s:
            return steps
        return max(10, int(steps * args.max_case_s / predicted_s) // 10 * 10)

    # single rollout
    if "median_s" not in res.get("single", {}):
        t = time_jitted(jax, dog, ("single", None), jax.jit(forward),
                        (jnp.asarray(theta), jnp.asarray(commands)), repeats)
        res["single"] = {**t, "steps": steps, "steps_per_s": steps / t["median_s"]}
        save()
        log(f"single: compile {t['compile_s']:.1f}s, {steps / t['median_s']:.0f} steps/s")

    # vmapped batches; a batch whose vmap deadlocked is measured as lax.map over sub-batches
    res.setdefault("batch", {})
    for i, B in enumerate(batches):
        entry = res["batch"].setdefault(str(B), {})
        if "median_s" in entry:
            continue
        if entry.get("deadlocked") and entry.get("mode", "vmap") != "vmap":
            continue  # the fallback deadlocked too
        prev_B, prev = (batches[i - 1], res["batch"][str(batches[i - 1])]) if i else (1, res["single"])
        if "median_s" not in prev:
            prev_B, prev = 1, res["single"]
        T = horizon(prev["median_s"] / prev["steps"] / prev_B * B * steps * (repeats + 2))
        if entry.get("deadlocked"):
            chunk = min(args.chunk, B)
            entry["mode"] = f"lax.map(vmap, batch_size={chunk})"
            fn = jax.jit(lambda th, c, chunk=chunk: jax.lax.map(lambda t: forward(t, c), th, batch_size=chunk))
        else:
            entry["mode"] = "vmap"
            fn = jax.jit(jax.vmap(forward, in_axes=(0, None)))
        entry["steps"] = T
        save()
        t = time_jitted(jax, dog, ("batch", str(B)), fn, (jnp.asarray(thetas[:B]), jnp.asarray(commands[:T])),
                        repeats)
        entry.update({**t, "particle_steps_per_s": B * T / t["median_s"], "rollouts_per_s": B / t["median_s"]})
        save()
        log(f"batch {B}x{T} ({entry['mode']}): compile {t['compile_s']:.1f}s, "
            f"{B * T / t['median_s']:.0f} particle-steps/s")

    # gradient of sum(q**2) w.r.t. all of theta, at the same horizon as a forward rollout
    def loss(th, cmds):
        q, _ = forward(th, cmds)
        return jnp.sum(q ** 2)

    g = res.setdefault("grad", {})
    if "median_s" not in g and not g.get("deadlocked"):
        # Forward sensitivities cost about GRAD_COST_GUESS forward rollouts per tangent direction
        # (theta, q0, qd0); shorten the gradient's horizon when that would exceed max_case_s.
        n_dirs = P + robot.nq + robot.nv if robot.grad_mode == "forward" else 1
        Tg = horizon(res["single"]["median_s"] * GRAD_COST_GUESS * n_dirs * (repeats + 2))
        g.update({"steps": Tg, "grad_mode": robot.grad_mode,
                  "tangent_directions": n_dirs if robot.grad_mode == "forward" else None})
        save()
        if Tg == steps:
            fwd = res["single"]
        else:  # the forward rollout at the same (shorter) horizon, for the ratio
            fwd = time_jitted(jax, dog, ("grad", None), jax.jit(forward),
                              (jnp.asarray(theta), jnp.asarray(commands[:Tg])), repeats)
        t = time_jitted(jax, dog, ("grad", None), jax.jit(jax.grad(loss)),
                        (jnp.asarray(theta), jnp.asarray(commands[:Tg])), repeats)
        g.update({**t, "forward_median_s": fwd["median_s"], "grad_over_forward": t["median_s"] / fwd["median_s"]})
        save()
        log(f"grad ({Tg} steps): compile {t['compile_s']:.1f}s, {g['grad_over_forward']:.1f}x forward")

    # native MuJoCo
    if "mj_step_steps_per_s" not in res.get("native", {}):
        nat = res["native"] = {}
        m = robot.model_with(theta)
        s = time_python(lambda: native_rollout(robot, theta, q0, qd0, commands, model=m), repeats)
        nat["native_rollout_steps_per_s"] = steps / s
        d = mujoco.MjData(m)

        def bare():
            d.qpos[:] = q0
            d.qvel[:] = qd0
            d.time = 0.0
            for u in commands:
                d.ctrl[:] = u
                mujoco.mj_step(m, d)

        s = time_python(bare, repeats)
        nat["mj_step_steps_per_s"] = steps / s
        log(f"native: native_rollout {nat['native_rollout_steps_per_s']:.0f}, "
            f"mj_step {nat['mj_step_steps_per_s']:.0f} steps/s")

        # mujoco.rollout over the same batches (direct ctrl, one model per particle, all CPUs)
        nthread = os.cpu_count() or 1
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        d.qpos[:] = q0
        d.qvel[:] = qd0
        d.time = 0.0
        state0 = np.empty(mujoco.mj_stateSize(m, spec))
        mujoco.mj_getState(m, d, state0, spec)
        nat["mujoco_rollout"] = {"nthread": nthread, "steps": steps}
        # Robot.model_with for every particle, with the parameter map evaluated once for the batch
        fields = jax.jit(jax.vmap(lambda th: model_fields(robot.layout, th)))(jnp.asarray(thetas))
        fields = {k: np.asarray(v, np.float64) for k, v in fields.items()}
        with mujoco.rollout.Rollout(nthread=nthread) as pool:
            datas = [mujoco.MjData(m) for _ in range(nthread)]
            for B in batches:
                models = []
                for i in range(B):
                    mi = copy.deepcopy(robot.mj_model)
                    for field, value in fields.items():
                        getattr(mi, field)[:] = value[i]
                    models.append(mi)
                init = np.tile(state0, (B, 1))
                ctrl = np.tile(commands[None], (B, 1, 1))
                s = time_python(lambda: pool.rollout(models, datas, init, ctrl), repeats)
                nat["mujoco_rollout"][str(B)] = {"particle_steps_per_s": B * steps / s}
                log(f"mujoco.rollout {B}: {B * steps / s:.0f} particle-steps/s")
        save()
    return 0


# ----------------------------------------------------------------------------- parent

def ratios(r: dict, batches) -> dict:
    """Brax (particle-)steps/s over the native figures."""
    out = {}
    nat = r.get("native", {})
    step, roll = nat.get("mj_step_steps_per_s"), nat.get("native_rollout_steps_per_s")
    if not (step and roll):
        return out
    if "steps_per_s" in r.get("single", {}):
        out["single_vs_mj_step"] = r["single"]["steps_per_s"] / step
        out["single_vs_native_rollout"] = r["single"]["steps_per_s"] / roll
    for B in batches:
        ps = r.get("batch", {}).get(str(B), {}).get("particle_steps_per_s")
        if ps is None:
            continue
        out[f"batch{B}_vs_mj_step"] = ps / step
        out[f"batch{B}_vs_native_rollout"] = ps / roll
        mr = nat.get("mujoco_rollout", {}).get(str(B), {}).get("particle_steps_per_s")
        if mr:
            out[f"batch{B}_vs_mujoco_rollout{B}"] = ps / mr
    return out


def bench_robot(name: str, args, batches) -> dict:
    """Run the child for one robot until it finishes, restarting it after each deadlock."""
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--partial", str(partial),
               "--steps", str(args.steps), "--repeats", str(args.repeats), "--seed", str(args.seed),
               "--max-case-s", str(args.max_case_s), "--idle-s", str(args.idle_s), "--chunk", str(args.chunk),
               "--batches", *map(str, batches)]
        restarts = 0
        for _ in range(2 * len(batches) + 3):
            rc = subprocess.call(cmd)
            if rc != CHILD_EXIT_DEADLOCK:
                break
            restarts += 1
        r = json.loads(partial.read_text()) if partial.exists() else {}
        if rc != 0:
            r["error"] = f"child exited with status {rc}"
    r["child_restarts_after_deadlock"] = restarts
    r["ratios"] = ratios(r, batches)
    return r


def _fmt(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(robots: dict, batches) -> str:
    cols = ["robot", "P", "grad", "compile s 1x/grad", "1x steps/s"]
    cols += [f"{B}x p-steps/s (T)" for B in batches]
    cols += ["grad/fwd (T)", "mj_step/s", "native_rollout/s"]
    cols += [f"mj.rollout {B}/s" for B in batches]
    cols += [f"{B}x/mj_step" for B in batches]
    rows = []
    for name, r in robots.items():
        s, g, nat = r.get("single", {}), r.get("grad", {}), r.get("native", {})
        row = [name, str(r.get("n_params", "?")), r.get("grad_mode", "?"),
               f"{s.get('compile_s', float('nan')):.1f}/{g.get('compile_s', float('nan')):.1f}",
               _fmt(s["steps_per_s"]) if "steps_per_s" in s else "-"]
        for B in batches:
            b = r.get("batch", {}).get(str(B), {})
            if "particle_steps_per_s" in b:
                mark = "*" if b.get("mode", "vmap") != "vmap" else ""
                row.append(f"{_fmt(b['particle_steps_per_s'])}{mark} ({b['steps']})")
            else:
                row.append("deadlock" if b.get("deadlocked") else "-")
        row.append(f"{g['grad_over_forward']:.1f} ({g['steps']})" if "grad_over_forward" in g
                   else ("deadlock" if g.get("deadlocked") else "-"))
        row += [_fmt(nat[k]) if k in nat else "-" for k in ("mj_step_steps_per_s", "native_rollout_steps_per_s")]
        row += [_fmt(nat.get("mujoco_rollout", {}).get(str(B), {}).get("particle_steps_per_s", float("nan")))
                for B in batches]
        row += [f"{r['ratios'][f'batch{B}_vs_mj_step']:.3g}" if f"batch{B}_vs_mj_step" in r["ratios"] else "-"
                for B in batches]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append("p-steps/s = particle-steps per second; (T) = steps used; * = vmap deadlocked, measured as "
                 "lax.map over vmapped sub-batches (see JSON 'mode')")
    return "\n".join(lines)


def main(argv=None) -> int:
    from twin_bayes.sim.robot import SHIPPED  # light: no JAX work at import beyond config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robots", nargs="+", default=list(SHIPPED), choices=list(SHIPPED), metavar="NAME",
                    help=f"robots to measure (default: all of {', '.join(SHIPPED)})")
    ap.add_argument("--steps", type=int, default=200, help="rollout horizon (default 200)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per figure (default 5)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES),
                    help="vmapped batch sizes (default 64 1024)")
    ap.add_argument("--max-case-s", type=float, default=30.0,
                    help="shorten a batch or gradient case's horizon when its timed calls would take "
                         "longer (default 30)")
    ap.add_argument("--idle-s", type=float, default=15.0,
                    help="a JAX call with no CPU progress for this long is a deadlock (default 15)")
    ap.add_argument("--chunk", type=int, default=32,
                    help="sub-batch size of the lax.map fallback after a vmap deadlock (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sim.json")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: 20 steps, 2 repeats, batches 4 and 16")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--partial", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.batches = 20, 2, [4, 16]
    batches = sorted(set(args.batches))
    args.batches = batches
    if args.child:
        return run_child(args)

    exe = sys.executable
    if Path(exe).absolute().is_relative_to(REPO):
        exe = os.path.relpath(exe)
    command = shlex.join([exe, os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv)))
    _setup_jax()
    out = {"machine": machine(compilation_cache="disabled in the measuring processes (compile times are real)",
                              git=git_state("twin_bayes/sim")), "command": command,
           "settings": {"steps": args.steps, "repeats": args.repeats, "batches": batches,
                        "max_case_s": args.max_case_s, "idle_s": args.idle_s, "chunk": args.chunk,
                        "seed": args.seed, "quick": args.quick},
           "robots": {}}
    t_all = time.perf_counter()
    for name in args.robots:
        print(f"{name} ...", file=sys.stderr, flush=True)
        t0, load0 = time.perf_counter(), os.getloadavg()
        out["robots"][name] = bench_robot(name, args, batches)
        out["robots"][name]["wall_s"] = time.perf_counter() - t0
        # 1-minute load average before/after: well above the CPU count means other processes shared the CPUs
        out["robots"][name]["loadavg_1min"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    out["wall_s"] = time.perf_counter() - t_all
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out["robots"], batches))
    m = out["machine"]
    loads = [x for r in out["robots"].values() for x in r["loadavg_1min"]]
    if max(loads) > 1.5 * (m["cpu_count"] or 1):
        print(f"\nWARNING: load average reached {max(loads):.1f} on {m['cpu_count']} CPUs: other processes "
              "shared the CPUs, figures are pessimistic and noisy")
    print(f"\n{m['device']}, {m['cpu_count']} CPUs, jax {m['jax']}, mujoco {m['mujoco']}, brax {m['brax']}; "
          f"total {out['wall_s']:.0f}s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
