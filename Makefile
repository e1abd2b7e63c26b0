# Every target installs what it needs into .venv first; only Python 3.11, git and make are assumed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint format bench loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

## run: web (gunicorn on 127.0.0.1:8000), a Celery worker and beat, on SQLite and a file broker
run: export TRAINMON_LOCAL = 1
run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py setup_local
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

## test: the whole suite (set DATABASE_URL / CELERY_BROKER_URL to run it on PostgreSQL / Redis)
test: $(VENV)/.dev-installed
	$(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff, then mypy over the app code (configured in pyproject.toml)
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: performance figures against same-run baselines (needs DATABASE_URL=postgres://...)
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

## loadtest: 100 browsers polling live jobs for 60 s on gunicorn (needs DATABASE_URL=postgres://...)
loadtest: $(VENV)/.dev-installed
	$(BIN)/python -m bench.loadtest

clean:
	rm -rf $(VENV) var
