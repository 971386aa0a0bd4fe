# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both install what they need first; torch is pinned to the CPU wheel available here.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-test demo test lint bench

install:
	$(PIP) torch==2.13.0
	$(PIP) -e .

install-test:
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"

demo: install
	stellar demo

test: install-test
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check . && ruff format --check .
