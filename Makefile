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
	$(NETNS) $(PY) -m pytest -q -ra $(PYTEST_ARGS) test

bench: deps
	$(NETNS) $(PY) benchmarks/run_all.py

# What travels to the GPU machine with benchmarks/device/run.py (cp312 wheels unpacked into one tar.xz,
# a few real scans) into the ignored .devcarry/; fails above 60 MiB. See BENCHMARKS.md, "GPU".
device-carry: deps
	$(PY) scripts/prepare-device-carry --out .devcarry --limit-mib 60

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis $(OUT)
