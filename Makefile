# Both targets work on a fresh machine that has only python3: they create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(wildcard bulk_update tests benchmarks jobs sample_data docs/_ext docs/conf.py)
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The demo needs the package and the emulator; the tests need the dev tools and Airflow too.
BASE_STAMP := $(VENV)/.installed-base-$(HASH)
STAMP := $(VENV)/.installed-dev-$(HASH)

.PHONY: demo test lint typecheck unit docs bench clean venv system-deps

# What a fresh clone's `make demo` spends (measured on 2 loaded cores): the venv's own pip
# (ensurepip) 9-14 s, upgrading it 3 s, the install 25-30 s (of which compiling every module of
# pyarrow, polars, numpy ... to bytecode ~10 s), the demo 7 s. So the venv is made without pip
# and python3's own pip installs into it (`pip --python`, pip >= 22.3), pip itself included (for
# whoever activates the venv); where python3 has no such pip, the venv bootstraps its own.
# --no-compile: a module is compiled when first imported (the demo imports a few), not all.
PIP = if $(BIN)/python -m pip --version >/dev/null 2>&1; then $(BIN)/python -m pip "$$@"; \
	elif $(PYTHON) -c "import pip, sys; sys.exit(tuple(map(int, \
	  pip.__version__.split(chr(46))[:2])) < (22, 3))" 2>/dev/null; then \
	  $(PYTHON) -m pip --python $(BIN)/python "$$@"; \
	else $(BIN)/python -m ensurepip --default-pip >/dev/null && $(BIN)/python -m pip "$$@"; fi
PIP_INSTALL = sh -c '$(PIP)' pip install --quiet --disable-pip-version-check

$(BASE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	$(PIP_INSTALL) --no-compile -e '.[emulator]' pip
	rm -f $(VENV)/.installed-base-*
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(PIP_INSTALL) -e '.[dev,airflow]'
	rm -f $(VENV)/.installed-dev-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(BASE_STAMP)
	$(BIN)/bulk-update demo

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy --strict bulk_update tests benchmarks docs/_ext

# The Debian packages the tests use for real: Chromium (the report page) and the Prometheus
# Pushgateway. Installed with apt-get when missing (as root, or with sudo); if that cannot be
# done, the tests do not run: fail loudly, saying what is missing.
SYSTEM_PACKAGES := chromium:/usr/bin/chromium prometheus-pushgateway:/usr/bin/prometheus-pushgateway

system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  test -x "$${entry#*:}" || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing the Debian packages the tests need:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "error: the tests need$$missing; install them (apt-get, as root)" >&2; exit 1; fi; \
	  { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	      $$missing >/dev/null; } || \
	  { echo "error: could not apt-get install$$missing (the tests need them)" >&2; exit 1; }; \
	  for entry in $(SYSTEM_PACKAGES); do test -x "$${entry#*:}" || \
	    { echo "error: $${entry#*:} missing after apt-get install" >&2; exit 1; }; done; \
	fi

# Most tests wait (on a real server, a timeout, the rate limit), not on the CPU: 4 workers
# on 2 cores keep both busy (the timing tests are built to hold on a loaded machine). An idle
# worker takes half of the busiest one's pending tests (worksteal): no worker ends the run alone
# on a queue of long tests.
PYTEST_WORKERS ?= 4
# The tests start hundreds of Python processes (`bulk-update`, the emulator, Airflow): with
# PYTHONDONTWRITEBYTECODE set, each would compile the package's sources again (and each worker
# rewrite the tests' asserts again). The test run writes its bytecode (__pycache__, ignored by
# git; a PYTHONPYCACHEPREFIX would compile all of .venv again instead of using its own).
PYCACHE := PYTHONDONTWRITEBYTECODE=
# More for pytest: make test PYTEST_ARGS="--cpu-report 30" (the tests taking most CPU: the
# suite is CPU-bound), "--durations=30" (wall time), "-k store" ...
PYTEST_ARGS ?=

unit: $(STAMP) system-deps
	$(PYCACHE) $(BIN)/python -m compileall -q bulk_update
	$(PYCACHE) $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The docs site (docs/, Sphinx + MyST) into out/docs: every warning an error (a broken link, a
# section that moved, a page left out of the tree); the CLI reference is made from the parser
# as it builds (docs/_ext/cli_reference.py). No network: the theme is Sphinx's own.
DOCS_OUT := out/docs

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html -d out/.doctrees docs $(DOCS_OUT)

test: lint typecheck docs unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) out .mypy_cache .pytest_cache .ruff_cache
	find bulk_update tests benchmarks -name __pycache__ -prune -exec rm -rf {} +
