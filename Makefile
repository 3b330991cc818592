# Every target creates the virtual environment it needs, so a fresh clone only needs python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format typecheck goldens bench browser postgresql clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

## demo: build the sample issue and do a dry-run send to subscribers.example.csv
demo: $(STAMP)
	bash scripts/demo

## test: the whole test suite (installs headless Chromium for the browser tests, and PostgreSQL's
## server for the tests that start a private one, when missing)
test: $(STAMP) browser postgresql
	$(BIN)/python -m pytest

browser:
	bash scripts/install-browser

postgresql:
	bash scripts/install-postgresql

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## goldens: regenerate tests/golden/ from the sample issues after an intended change
goldens: $(STAMP)
	$(BIN)/python tests/regenerate_goldens.py

bench: $(STAMP)
	$(BIN)/python bench/build.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
