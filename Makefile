# Two commands on a fresh machine: `make demo` runs the main job, `make test` the tests.
# Each creates .venv in this checkout if it is missing and installs pinned versions into it.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/twin-bayes/jax

.PHONY: demo test install bench
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/twin-bayes demo

# The long checks (marked slow) run with `make test PYTEST_MARK=slow`, everything with PYTEST_MARK=.
# Compiles take one core each: PYTEST_WORKERS test processes share the persistent cache. The 30 slowest
# tests are listed at the end: the suite must stay within CI's 30 minutes on 2 cores.
PYTEST_MARK ?= not slow
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "$(PYTEST_MARK)" -n $(PYTEST_WORKERS) --dist loadscope --durations=30 $(PYTEST_ARGS)

# Extras of the benchmarks (mujoco[sysid] for benchmarks/peers.py), on top of the install.
bench: $(STAMP)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[test,bench]"
