# Two set-up commands: `make demo` and `make test`. Each creates .venv when needed, installs the
# Debian and Python dependencies, then runs. Everything that starts ROS 2 participants runs inside a
# private network namespace with localhost-only discovery (scripts/netns-run), so DDS never leaves
# this machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= ros,spconv,sim,train,test
STAMP := $(VENV)/.ssl3d-installed
RECIPE ?= sonata
OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: deps demo test bench clean

deps: $(STAMP)

$(STAMP): setup.py setup.cfg constraints.txt scripts/install-system-deps
	scripts/install-system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(PY) scripts/check-install
	touch $(STAMP)

demo: deps
	scripts/netns-run $(PY) -m ssl3d_ros.demo --recipe $(RECIPE) --out $(OUT)

test: deps
	scripts/netns-run $(PY) -m pytest -q -ra $(PYTEST_ARGS) test

bench: deps
	scripts/netns-run $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis $(OUT)
