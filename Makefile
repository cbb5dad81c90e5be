# Two entry points, both create the environment first:
#   make demo   index the bundled sample corpus with the default model and search it
#   make test   run the whole test suite
#
# TORCH pins the torch wheel installed before everything else. The default takes the
# local CPU wheel on machines that have one; elsewhere override it, e.g.
#   make test TORCH=torch            (whatever your index serves, CUDA builds included)
# An environment that already has torch keeps it.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-reference test-slow lint bench clean

$(BIN)/simtool: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

demo: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/simtool demo

test: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 -m "not slow and not reference and not shared_data"

test-reference: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m reference

test-slow: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "(slow or shared_data) and not reference"

lint: $(BIN)/simtool
	$(BIN)/python -m ruff check . && $(BIN)/python -m ruff format --check .

bench: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_encode.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) build *.egg-info
