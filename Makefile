# kltutor. The README's two commands are `make book` and `make test`; each sets up everything it
# needs on a fresh machine (virtual environment, packages, MathJax for the offline site, Chromium).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Test workers (pytest-xdist); nbval keeps each notebook on one worker (--dist loadscope).
WORKERS ?= 2
CHAPTERS := $(sort $(wildcard book/[0-9][0-9]_*.md))
NOTEBOOKS := $(patsubst book/%.md,notebooks/%.ipynb,$(CHAPTERS))
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
NBVAL_RUN = $(PY) -m pytest -p no:cacheprovider -n $(WORKERS) --dist loadscope $(NBVAL)
# nbval again under perturbed float kernels (scripts/perturbed.py; the rule is in docs/CONVENTIONS.md):
# an output that only this CPU's kernels reproduce fails here instead of on the next machine.
PERTURBED = $(PY) scripts/perturbed.py --variant scalar -- $(NBVAL_RUN) notebooks && \
            $(PY) scripts/perturbed.py --variant avx2 -- $(NBVAL_RUN) notebooks

# The trainers' own KL code (chapter 3, kltutor.trainers): a separate venv, so the book's stays small.
# Its tests: tests/test_trainers_*.py, test_*_libraries.py (library code on the toys),
# test_configcheck_sources.py (the inspector's statements checked against the installed source), test_trl_*.py (kltutor's extension of
# TRL, one and two processes), test_library_facts.py (the ledger's library facts).
TRAINERS_TESTS = $(sort $(wildcard tests/test_trainers_*.py tests/test_*_libraries.py tests/test_trl_*.py) tests/test_configcheck_sources.py tests/test_library_facts.py)
TRAINERS_VENV ?= .venv-trainers
TPY := $(TRAINERS_VENV)/bin/python
OPENRLHF_VERSION ?= 0.11.2
DEEPSPEED_VERSION ?= 0.19.6

.PHONY: help setup setup-browser notebooks site book test lint format doctest unit quick nbval nbval-perturbed browser-test pdf mutation clean trainers-venv trainers-test trainers-data

help:
	@echo "make book   - set up, execute every chapter with papermill, build the site into _build/html"
	@echo "make test   - set up, then: ruff (lint + format check, first: it fails fast), the docstring"
	@echo "              examples, source/notebook sync check, strict site build, unit tests, nbval on"
	@echo "              every notebook, the browser test of the built site, and nbval again under"
	@echo "              perturbed float kernels (make nbval-perturbed)"
	@echo "make quick  - lint, docstring examples and the unit tests not marked slow (the edit loop)"
	@echo "make format - apply ruff's formatter and its safe fixes"
	@echo "make pdf    - the printable study guide (_build/study-guide.pdf) and the whole book (_build/kltutor-book.pdf)"
	@echo "make trainers-test - TRL / verl / OpenRLHF KL code on the exact toy, in $(TRAINERS_VENV)"

# --- set-up ------------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

# torch first (the local CPU wheel), then the extra; OpenRLHF without its GPU-only dependencies (see the
# `trainers` extra in pyproject.toml), deepspeed built against the installed torch.
$(TRAINERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRAINERS_VENV)
	$(TPY) -m pip install -q --upgrade pip
	$(TPY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(TPY) -m pip install -q -e ".[trainers]"
	$(TPY) -m pip install -q --no-build-isolation "deepspeed==$(DEEPSPEED_VERSION)"
	$(TPY) -m pip install -q --no-deps "openrlhf==$(OPENRLHF_VERSION)"
	touch $@

trainers-venv: $(TRAINERS_VENV)/.installed

# Debian's chromium for the browser test and the PDF (Playwright drives it; no browser download).
setup-browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# --- the book ----------------------------------------------------------------------------------
notebooks: setup
	$(PY) scripts/notebooks.py execute $(NOTEBOOKS)

site: setup
	$(PY) scripts/book_site.py build --strict

book: notebooks site
	@echo "The site is in _build/html (open _build/html/index.html)."

pdf: setup setup-browser
	[ -f _build/html/index.html ] || $(PY) scripts/book_site.py build --strict
	$(PY) scripts/book_site.py pdf

# --- the tests ---------------------------------------------------------------------------------
test: setup lint doctest setup-browser trainers-test
	$(PY) scripts/notebooks.py check
	$(PY) scripts/book_site.py build --strict
	$(NBVAL_RUN) tests notebooks
	$(PERTURBED)

unit: setup
	$(PY) -m pytest -q -m "not browser" tests

# The edit loop: seconds, not minutes (tests marked slow take more than a few seconds on two cores).
quick: setup lint doctest
	$(PY) -m pytest -q -p no:cacheprovider -n $(WORKERS) -m "not browser and not trainers and not slow" tests

# ruff, configured in pyproject.toml; `make test` starts here. Also run by the pre-commit hooks.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The docstring examples (>>>) of the package are tests too.
doctest: setup
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules kltutor

nbval: setup
	$(NBVAL_RUN) notebooks

nbval-perturbed: setup
	$(PERTURBED)

# Fails when an installed library's KL code no longer gives the stored verdicts (kltutor/trainers/data).
trainers-test: trainers-venv
	$(TPY) -m pytest -q -p no:cacheprovider -m trainers $(TRAINERS_TESTS)

# After upgrading a pinned library: rewrite the stored verdicts and the inspector's field lists, then
# re-execute chapter 3 (make notebooks) and review its table.
trainers-data: trainers-venv
	$(TPY) -m kltutor.trainers regenerate
	$(TPY) -m kltutor.trainers.distillation regenerate
	$(TPY) -m kltutor.configcheck.fields

browser-test: setup setup-browser
	$(PY) -m pytest -p no:cacheprovider -m browser tests

# Mutation testing of the core modules (not part of `make test` or CI; docs/CONVENTIONS.md).
# MODULES=estimators limits it to some modules; WORKERS_MUTATION sets mutmut's worker processes.
WORKERS_MUTATION ?= 1
mutation: setup
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q "$$($(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mutation"])')"
	nice -n 10 $(PY) scripts/mutation.py --workers $(WORKERS_MUTATION) $(MODULES)

clean:
	rm -rf _build
