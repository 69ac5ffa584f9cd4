# One-command entry points: `make paper` and `make test` build the environment when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
BUILD := build
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# Extra papermill parameters for `make paper`, e.g. PARAMS="-p dataset digits -p epochs 3",
# or a YAML file: PARAMS_FILE=my-params.yaml
PARAMS ?=
PARAMS_FILE ?=
# Notebooks run at once, each in its own process (outputs installed in story order), e.g. JOBS=2: for many cores
# and a filled cache only (on 2 cores one at a time is faster)
JOBS ?= 1

.PHONY: all paper test verify lint lab bench clean clean-cache env

all: paper

env: $(STAMP)

# (Re)build the virtual environment whenever pyproject.toml or the lock file changes.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name hesslib --display-name "Python (hesslib)" > /dev/null
	@touch $@

paper: $(STAMP)
	$(BIN)/python -m hesslib.paper --build $(BUILD) --jobs $(JOBS) $(if $(PARAMS_FILE),--params-file $(PARAMS_FILE)) $(PARAMS)

# Compare the last run's figures/RESULTS.json with the committed one (tolerances in hesslib/verify.py);
# VERIFY=--rerun reruns the paper into build/verify first, VERIFY="--rerun --cold" with an empty cache.
VERIFY ?=
verify: $(STAMP)
	$(BIN)/python -m hesslib.verify $(VERIFY)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

lab: $(STAMP)
	HESSLIB_INTERACTIVE=1 $(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/python benchmarks/bench_eigen.py
	$(BIN)/python benchmarks/bench_landscape.py
	$(BIN)/python benchmarks/bench_uncertainty.py
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/report.py

# Build outputs only; the training / Hessian caches under data/cache survive (use clean-cache).
clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-cache:
	rm -rf data/cache data/mnist5k.npz
