# megagoku: `make demo` trains the tiny model on built-in data and writes samples;
# `make test` runs the test suite. Both install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements/cpu.txt
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

demo: install
	$(BIN)/megagoku demo --config configs/tiny.yaml --run-dir checkpoints/demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
