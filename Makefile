# kltutor: the README's two commands are `make book` and `make test`; both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
JOBS ?= 2
CHAPTERS := $(sort $(wildcard book/[0-9][0-9]_*.md))
NOTEBOOKS := $(patsubst book/%.md,notebooks/%.ipynb,$(CHAPTERS))

.PHONY: help setup notebooks book test unit sync-check nbval site-strict browser-test pdf clean

help:
	@echo "make book   - set up, execute every chapter with papermill, build the site into _build/html"
	@echo "make test   - set up, then unit tests, source/notebook sync, nbval, strict site build, browser test"
	@echo "make pdf    - the printable study guide (_build/study-guide.pdf)"

# --- set-up -------------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

# --- the book ----------------------------------------------------------------------------------
# Sync every book/ source into its notebooks/ twin, then execute it in place with papermill.
notebooks: setup
	$(PY) scripts/notebooks.py execute $(NOTEBOOKS)

book: notebooks site

site: setup
	$(PY) scripts/site.py build

# --- the tests ---------------------------------------------------------------------------------
test: setup
	$(PY) -m pytest -q tests
	$(PY) scripts/notebooks.py check
	$(PY) -m pytest -q -p no:cacheprovider --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env notebooks
	$(PY) scripts/site.py build --strict
	$(PY) scripts/site.py browser-test

clean:
	rm -rf _build
