# bankflow: the two commands a new user needs are `make run` and `make test`.
# Everything here is idempotent: a second `make setup` is quick and downloads nothing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BANKFLOW := $(BIN)/bankflow
STAMP := $(VENV)/.installed

.PHONY: setup run test test-unit test-chaos stop lint bench fmt clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bankflow needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## setup: virtualenv, the local stack (Kafka, PostgreSQL, Redis), migrations, topics
setup: $(STAMP)
	@# pdftotext (Debian's poppler-utils) reads statement PDFs in the tests; installed as
	@# `bankflow stack up` installs its servers: with apt-get as root, else say what to do.
	@command -v pdftotext >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& echo "installing poppler-utils with apt-get ..." \
		&& { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true; } \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils >/dev/null; } \
		|| { echo "pdftotext is missing: install Debian's poppler-utils (sudo apt-get install poppler-utils)"; exit 1; }
	$(BANKFLOW) stack up
	$(BANKFLOW) migrate
	$(BANKFLOW) topics create
	@# Headless Chromium for the ops page's browser test (apt-get, like the stack's servers).
	$(BIN)/python -m infra.browser

## run: setup, then every service in the foreground with demo traffic (Ctrl-C stops them)
run: setup
	$(BANKFLOW) run all --demo

## test: setup, lint, then the whole test suite (all but the longest chaos runs)
test: setup lint
	BANKFLOW_TEST_REQUIRE_STACK=1 $(BIN)/pytest

## test-unit: the unit tests alone; they need no server
test-unit: $(STAMP)
	$(BIN)/pytest -m 'not integration'

## test-chaos: the long fault-injection runs left out of `make test`
test-chaos: setup
	BANKFLOW_TEST_REQUIRE_STACK=1 $(BIN)/pytest -m slow

## stop: stop the local stack (services started by `make run` stop with Ctrl-C)
stop:
	@if [ -x $(BANKFLOW) ]; then $(BANKFLOW) stack down; else echo "nothing to stop: no .venv"; fi

## lint: ruff (with the security rules), formatting, mypy and the import-layer contracts
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: the benchmarks under bench/, reported as ratios against a same-run baseline
bench: setup
	$(BANKFLOW) bench all

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## clean: stop the stack and delete its data and the virtualenv (Maven's cache stays)
clean: stop
	$(BANKFLOW) stack down --purge || true
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
