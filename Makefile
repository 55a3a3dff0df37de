# The two set-up commands (see README): `make up` runs the stack, `make test` runs the tests.
# Both create the virtualenv in .venv on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint bench services screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

services:
	@bash .ci/services.sh

up: $(STAMP) services
	$(BIN)/pyfc up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: $(STAMP) services
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 3 --dist loadfile

# Every benchmark, one table; JSON and PNG in bench/results/ (~5-7 minutes on 2 cores).
bench: $(STAMP) services
	$(BIN)/python -m bench

# The web console's screenshots in docs/console/ (docs/console.md).
screenshots: $(STAMP) services
	$(BIN)/python -m docs.console.shoot
