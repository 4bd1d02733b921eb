# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv, installs torch==2.13.0 first (the CPU build on local disk), then frostline with its extras.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,transformers,lightning,bench]'
	touch $@

demo: setup
	$(PY) -m frostline demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m frostline bench
