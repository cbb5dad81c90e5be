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

# mypy and import-linter resolve modules from a directory tree, and neither follows the package-dir mapping
# (cli/ installs as simtool.cli, evals/ as simtool.evals) nor the editable install's import hook, so they read
# a symlink mirror of the installed layout in build/lint; mypy's paths are mapped back to the repo's.
LINT_TREE := build/lint
PY_ABS := $(abspath $(BIN))/python

lint: $(BIN)/simtool
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	@rm -rf $(LINT_TREE)/simtool && mkdir -p $(LINT_TREE)/simtool
	@for f in simtool/*; do ln -s "$(CURDIR)/$$f" $(LINT_TREE)/simtool/; done
	@ln -s "$(CURDIR)/cli" $(LINT_TREE)/simtool/cli && ln -s "$(CURDIR)/evals" $(LINT_TREE)/simtool/evals
	cd $(LINT_TREE) && $(PY_ABS) -m mypy --config-file $(CURDIR)/pyproject.toml -p simtool > mypy.out; \
		rc=$$?; sed -e 's#^simtool/cli/#cli/#' -e 's#^simtool/evals/#evals/#' mypy.out; exit $$rc
	cd $(LINT_TREE) && PYTHONPATH=. $(PY_ABS) -c \
		"import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" \
		$(CURDIR)/pyproject.toml --no-cache

bench: $(BIN)/simtool
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_encode.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) build *.egg-info
