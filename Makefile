# make run / make test / make lint. The venv is built on first use and rebuilt
# when pyproject.toml changes; VENV=dir picks another (CI uses a fresh one).
VENV ?= .venv
PYTHON ?= python3
ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: run test lint venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev,plot]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/precopy run $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . $(ARGS)
