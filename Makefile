# Both targets work on a fresh machine that has only python3: they create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(wildcard bulk_update tests benchmarks jobs sample_data)
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The demo needs the package and the emulator; the tests need the dev tools and Airflow too.
BASE_STAMP := $(VENV)/.installed-base-$(HASH)
STAMP := $(VENV)/.installed-dev-$(HASH)

.PHONY: demo test lint typecheck unit bench clean venv

$(BASE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[emulator]'
	rm -f $(VENV)/.installed-base-*
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,airflow]'
	rm -f $(VENV)/.installed-dev-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(BASE_STAMP)
	$(BIN)/bulk-update demo

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy --strict bulk_update tests benchmarks

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) out .mypy_cache .pytest_cache .ruff_cache
