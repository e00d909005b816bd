# megagoku: `make demo` trains the tiny model on built-in data and writes samples; `make
# demo-latent` does it in the latent space of a VAE it trains first (resumable: run it again);
# `make test` runs the test suite. All install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNELS := $(VENV)/.kernels
KERNEL_SOURCES := $(wildcard csrc/*/*.h csrc/*/*.cuh csrc/*/*.cpp csrc/*/*.cu)

.PHONY: install kernels demo demo-latent test test-fast bench gpu-check clean

install: $(STAMP) $(KERNELS)

# The package itself; the kernels are built in place by the next rule (and rebuilt when csrc/
# changes), so the editable install skips them.
$(STAMP): requirements/cpu.txt requirements/cpu-nodeps.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements/cpu.txt
	$(BIN)/pip install --no-deps -r requirements/cpu-nodeps.txt
	MEGAGOKU_BUILD_KERNELS=0 $(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

kernels: $(KERNELS)

$(KERNELS): $(STAMP) $(KERNEL_SOURCES)
	$(BIN)/python setup.py build_ext --inplace
	touch $(KERNELS)

demo: install
	$(BIN)/megagoku demo --config configs/tiny.yaml --run-dir checkpoints/demo

demo-latent: install
	$(BIN)/megagoku demo --config configs/demo_latent.yaml --run-dir checkpoints/demo-latent

test: install
	$(BIN)/python -m pytest -q --durations=30

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/megagoku bench kernels

# On a GPU machine with a CUDA torch and nvcc (not CI): build, test, benchmark and train on the GPU.
ENCODER ?= builtin:all-minilm-l6-v2
gpu-check:
	PYTHON=$(PYTHON) launchers/gpu_check.sh $(ENCODER)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache megagoku/ops/_C*.so
