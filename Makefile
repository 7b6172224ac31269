# mcel-search: `make test` and `make demo` work on a fresh machine with only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint format bench demo results clean lock

## Installs the ranges of pyproject.toml at the exact versions of requirements.lock (the ones the tests
## passed with; `make lock` rewrites it after a deliberate upgrade).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The whole suite, slow tests included (README's test command; CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest

## Everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## The main job: a real search on the embedded digits data (local Ray, local MLflow store ./mlflow.db).
## --resume makes it idempotent: a second `make demo` continues or re-reports the same search.
demo: $(STAMP)
	$(BIN)/mcel search configs/quickstart.yaml --resume

## requirements.lock: every version `make install`, CI and a cluster node install (used as constraints).
## Not through $(STAMP): the lock is what the install reads.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python cluster-setup/make_lock.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.suite

## The FashionMNIST reproduction (docs/results.md): VGG3 4-bit, CEL vs MCEL vs MHL vs bit-error training.
## Trained models are cached in benchmarks/cache/fashionmnist (committed), so a rerun only re-renders the report.
results: $(STAMP)
	$(BIN)/python benchmarks/results_fashionmnist.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
