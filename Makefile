# The two commands of README.md: `make quickstart` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Runs notebooks/quickstart.ipynb on the embedded default (the local backend) and saves the result.
quickstart: $(BIN)/.installed
	env -u AZURE_BATCH_ENDPOINT $(BIN)/jupyter execute notebooks/quickstart.ipynb --output quickstart.out.ipynb
	@echo "executed notebook written to notebooks/quickstart.out.ipynb"

# The whole test suite: ruff, unit tests, the magics in a real shell, notebooks on real kernels, and
# the real parts (Azurite, the Batch emulator, dockerd, a registry) that the tests start themselves.
test: $(BIN)/.installed node_modules/.installed lint
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check batchmagic tests bench
	$(BIN)/ruff format --check batchmagic tests bench
	$(BIN)/python -m mypy batchmagic --ignore-missing-imports

bench: $(BIN)/.installed node_modules/.installed
	$(BIN)/python -m bench
