# Two set-up commands: `make demo` and `make test`. Each creates .venv when needed, installs the
# Debian and Python dependencies, then runs. Everything that starts ROS 2 participants (tests, the
# demo's replay, benchmarks) runs through $(NETNS): `unshare --net` with only lo up and
# ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, so DDS never leaves this machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= ros,spconv,sim,train,test
STAMP := $(VENV)/.ssl3d-installed
RECIPE ?= sonata
OUT ?= demo_output
PYTEST_ARGS ?=
# The suite runs in a random order, a new one each run (pytest-random-order, the test extra): modules in
# a random order, and the tests of each module too. A test that only passes after another one fails here
# instead of when someone reorders a file. "module" buckets keep each module's tests together, so its
# module-scoped fixtures (a node process, a wheel build) are set up once, as in file order. The seed is
# printed before the run and in pytest's summary; `make test PYTEST_SEED=<seed>` repeats that order,
# `make test PYTEST_ORDER=` runs the files' own order. --durations=25 lists the slowest tests after
# the results, so a CI log shows where the suite's time goes.
# Two pytest-xdist workers (the test extra) share the files: most of the suite's time is process
# start-up, DDS discovery and waits on other processes, so two workers on CI's 2 cores took the suite
# from 1,166 s to 859 s here (same load beside it). Whole files go to one worker (--dist loadfile):
# a module's fixtures (a node process, a wheel build) are set up once, and tests that share the
# checkout's colcon folders run one after another. Each worker has its own DDS domain (test/conftest.py).
# Which worker runs which file depends on timing, so a seed repeats each file's order, not the
# interleaving: `make test PYTEST_WORKERS=0` runs one process in exactly the seed's order.
PYTEST_WORKERS ?= 2
ifndef PYTEST_SEED
PYTEST_SEED := $(shell echo $$RANDOM)
endif
PYTEST_ORDER ?= -p random_order --random-order-bucket=module --random-order-seed=$(PYTEST_SEED)
# scripts/netns-run: unshare --net -- sh -c 'ip link set lo up && exec ...'
NETNS := scripts/netns-run

.PHONY: deps demo test bench device-carry clean

# The stamp only says an install ran; every `make deps` (so `make test`, `make demo`) checks the
# install again from outside the repository, console scripts included, and reinstalls when it fails
# (e.g. after `pip uninstall ssl3d_ros`, which leaves the stamp in place).
deps: $(STAMP)
	@$(PY) scripts/check-install || { echo "make: the install is incomplete: reinstalling" >&2; \
	  rm -f $(STAMP) && $(MAKE) --no-print-directory $(STAMP) && $(PY) scripts/check-install; }

$(STAMP): setup.py setup.cfg constraints.txt scripts/install-system-deps
	scripts/install-system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: deps
	$(NETNS) $(PY) -m ssl3d_ros.demo --recipe $(RECIPE) --out $(OUT)

test: deps
	$(NETNS) $(PY) -m pytest -q -ra --durations=25 -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ORDER) $(PYTEST_ARGS) test

bench: deps
	$(NETNS) $(PY) benchmarks/run_all.py

# What travels to the GPU machine with benchmarks/device/run.py (cp312 wheels unpacked into one tar.xz,
# a few real scans) into the ignored .devcarry/; fails above 60 MiB. See BENCHMARKS.md, "GPU".
device-carry: deps
	$(PY) scripts/prepare-device-carry --out .devcarry --limit-mib 60

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis $(OUT)
