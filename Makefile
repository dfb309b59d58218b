# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.protloc-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint typecheck bench bench-gpu clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

## Generate the embedded synthetic data set, train, calibrate, evaluate, predict, export and report.
demo: $(STAMP)
	$(BIN)/protloc demo $(DEMO_ARGS)

## Lint, format check, type check and the whole test suite (slow tests included, as in CI).
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The quick loop while developing: skips tests marked slow.
test-fast: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

typecheck: $(STAMP)
	$(BIN)/mypy

## The CPU benchmark suite: JSON + Markdown under benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
