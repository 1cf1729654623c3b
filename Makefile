# recstack: `make help` lists the targets. Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-unit lint format bench down clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install recstack with its dependencies (about 2-3 minutes)

demo: $(STAMP)  ## The main job: bring the stack up, load synthetic data, print a summary
	$(BIN)/recstack demo

test: $(STAMP)  ## The whole test suite: unit + integration (real embedded Postgres, Redis, Ray)
	$(BIN)/pytest

test-unit: $(STAMP)  ## Fast unit tests only (no servers)
	$(BIN)/pytest tests/unit

lint: $(STAMP)  ## ruff check + format check, mypy on every package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy recstack serving training validation feature_repo bench

format: $(STAMP)  ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## All benchmarks at 100k users / 20k items / 5M events (`recstack bench --help` for other scales)
	$(BIN)/recstack bench --users 100000 --items 20000 --events 5000000

down: $(STAMP)  ## Stop the embedded servers
	$(BIN)/recstack down

clean:  ## Remove the virtualenv and caches (state under RECSTACK_HOME is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
