# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup serve dev status down test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(PYTHON) -m venv .venv-kserve  # KServe's own client, for the protocol's tests: it pins protobuf 6, Ray needs 7
	.venv-kserve/bin/pip install --quiet 'kserve==0.21.0'
	touch $@

serve: setup          ## set up, start a local Ray cluster if none is reachable, deploy conf.ini
	$(BIN)/python controller.py

dev: setup            ## serve conf.ini from one local process (no Ray), reloading what you edit
	$(BIN)/python controller.py dev

status: setup
	$(BIN)/python controller.py status

down: setup           ## remove every section and stop the local cluster the controller started
	$(BIN)/python controller.py down --stop-cluster

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint            ## the whole suite: lint, unit, integration (real Ray), e2e (controller.py)
	$(BIN)/python -m pytest

bench: setup          ## side-by-side benchmark (needs wrk: apt-get install wrk)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py
