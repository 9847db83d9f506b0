"""Command-line start-up: wall time of `twin-bayes --help` (and of `twin-bayes <command> --help`).

Each run is a fresh process of the installed console script (`.venv/bin/twin-bayes`), timed from
spawn to exit; the first run is an untimed warm-up (file-system cache). Figures per command line:
median, min and max over `--runs`, the median CPU time (user + system: what the load of other
processes does not inflate), plus whether anything was printed on stderr and whether the
command loaded JAX (`sys.modules` after one extra in-process run: building the parser must not).

    .venv/bin/python benchmarks/cli.py                       # --help and serve/emulate/fit --help, 10 runs
    .venv/bin/python benchmarks/cli.py --runs 20 --commands fit
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, command, machine

SCRIPT = REPO / ".venv" / "bin" / "twin-bayes"


def time_help(args: list[str], runs: int) -> dict:
    """Wall time (s) of `twin-bayes ARGS --help` over `runs` fresh processes (after one warm-up)."""
    argv = [str(SCRIPT), *args, "--help"]
    subprocess.run(argv, capture_output=True, check=True)
    walls, cpus, stderr = [], [], ""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        run = subprocess.run(argv, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        stderr += run.stderr
    probe = subprocess.run([sys.executable, "-c", "import contextlib, io, sys\n"
                            "from twin_bayes.cli import main\n"
                            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                            f"    main({[*args, '--help']!r})\n"
                            "print('jax' in sys.modules)"], capture_output=True, text=True, check=True)
    return {"argv": " ".join(["twin-bayes", *args, "--help"]), "runs": runs, "median_s": statistics.median(walls),
            "min_s": min(walls), "max_s": max(walls), "cpu_median_s": statistics.median(cpus),
            "stderr_empty": stderr == "",
            "imports_jax": probe.stdout.strip() == "True"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="timed runs per command line")
    p.add_argument("--commands", nargs="*", default=["serve", "emulate", "fit"],
                   help="subcommands whose --help is timed too")
    p.add_argument("--out", default="benchmarks/results/cli.json", help="JSON output")
    args = p.parse_args(argv)
    if not SCRIPT.is_file():
        p.error(f"{SCRIPT} missing: run `make install` first")
    figures = [time_help([], args.runs)] + [time_help([c], args.runs) for c in args.commands]
    out = {"command": command(), "machine": machine(), "help": figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for f in figures:
        print(f"{f['argv']:32s} median {1000 * f['median_s']:6.1f} ms  (min {1000 * f['min_s']:.1f}, max "
              f"{1000 * f['max_s']:.1f}; CPU {1000 * f['cpu_median_s']:.1f} ms; {f['runs']} runs)  "
              f"stderr empty: {f['stderr_empty']}  "
              f"imports jax: {f['imports_jax']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
