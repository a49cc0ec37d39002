# The two set-up commands (see README.md): `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: run test lint lock bench-queue clean

$(BIN)/python:
	@scripts/system-deps.sh run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[operator,test]'
	@touch $@ $(VENV)/.run-installed

## run: install, create/migrate the SQLite database under ./data, serve all roles
run: $(VENV)/.run-installed
	$(BIN)/xrayvision migrate
	exec $(BIN)/xrayvision serve

## test: install what tests need, start a throw-away PostgreSQL, run pytest, stop it; the
## operator tests start a real control plane from KUBEBUILDER_ASSETS or ../shared/envtest
test: $(VENV)/.test-installed
	@scripts/system-deps.sh test
	$(BIN)/ruff check runtime operator tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	KUBEBUILDER_ASSETS="$$(scripts/envtest-assets.sh)" \
	  $(BIN)/python tests/support/pgserver.py run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check runtime operator tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

## lock: re-pin constraints.txt from a fresh resolution of pyproject.toml
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --disable-pip-version-check -q '.[operator,test]'
	.lock-venv/bin/pip freeze --exclude xrayvision | sort > constraints.txt
	rm -rf .lock-venv

## bench-queue: the queue benchmark (bench/README.md)
bench-queue: $(VENV)/.test-installed
	$(BIN)/python bench/queue.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
