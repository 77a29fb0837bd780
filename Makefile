PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install lint test bench

install:
	$(PIP) install -q -e '.[torch,test]'

lint: install
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest -q -n 2 --durations=15 tests

bench: install
	$(PYTHON) -m benchmarks.run
