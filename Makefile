# The commands of README.md: `make quickstart`, `make quickstart-azure`, `make test`, `make lab` and `make docs`.
# Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A second environment with ipykernel 6, for the tests that run a notebook on each kernel major (tests/test_kernels.py).
VENV6 ?= .venv-ipykernel6
BIN6 := $(VENV6)/bin
# Clients nobody here wrote, each in its own environment, for the emulator's client tests
# (tests/emulator/test_clients.py): the Azure CLI (several minutes, about 1 GB) and the legacy azure-batch 14.
VENV_AZCLI ?= .venv-azcli
VENV_BATCH14 ?= .venv-batch14

.PHONY: quickstart quickstart-azure lab test test-gpu lint docs bench ipykernel6 clients

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(BIN6)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV6)
	$(BIN6)/python -m pip install -q --upgrade pip
	$(BIN6)/python -m pip install -q -e . 'ipykernel>=6.29,<7'
	touch $@

ipykernel6: $(BIN6)/.installed

$(VENV_AZCLI)/bin/.installed:
	$(PYTHON) -m venv $(VENV_AZCLI)
	$(VENV_AZCLI)/bin/python -m pip install -q --upgrade pip
	$(VENV_AZCLI)/bin/python -m pip install -q azure-cli
	touch $@

$(VENV_BATCH14)/bin/.installed:
	$(PYTHON) -m venv $(VENV_BATCH14)
	$(VENV_BATCH14)/bin/python -m pip install -q --upgrade pip
	$(VENV_BATCH14)/bin/python -m pip install -q 'azure-batch==14.2.0' 'azure-storage-blob>=12.19'
	touch $@

clients: $(VENV_AZCLI)/bin/.installed $(VENV_BATCH14)/bin/.installed

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Runs notebooks/quickstart.ipynb on the embedded default (the local backend) and saves the result
# (BATCHMAGIC_BACKEND=local: a `batchmagic emulator` running meanwhile is not picked up).
quickstart: $(BIN)/.installed
	env -u AZURE_BATCH_ENDPOINT BATCHMAGIC_BACKEND=local $(BIN)/jupyter execute notebooks/quickstart.ipynb --output quickstart.out.ipynb
	@echo "executed notebook written to notebooks/quickstart.out.ipynb"

# Runs notebooks/azure.ipynb on the Azure path, against the Batch emulator and Azurite on this machine:
# `batchmagic emulator` starts both, runs the notebook with their settings, and stops both when it ends.
quickstart-azure: $(BIN)/.installed node_modules/.installed
	$(BIN)/batchmagic emulator -- $(BIN)/jupyter execute notebooks/azure.ipynb --output azure.out.ipynb
	@echo "executed notebook written to notebooks/azure.out.ipynb"

# Opens notebooks/quickstart.ipynb in JupyterLab (installed with the test extra), on the local backend.
lab: $(BIN)/.installed
	env -u AZURE_BATCH_ENDPOINT $(BIN)/jupyter lab notebooks/quickstart.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

# The whole test suite: ruff, unit tests, the magics in a real shell, notebooks on real kernels, and
# the real parts (Azurite, the Batch emulator, dockerd, a registry) that the tests start themselves.
test: $(BIN)/.installed $(BIN6)/.installed $(VENV_AZCLI)/bin/.installed $(VENV_BATCH14)/bin/.installed node_modules/.installed lint
	$(BIN)/python -m pytest

# On a machine with an NVIDIA GPU, Docker with the NVIDIA Container Toolkit and Docker Hub in reach (not CI's):
# a cell puts a tensor on cuda:0 on the local backend with --container and through the emulator's docker executor.
test-gpu: $(BIN)/.installed node_modules/.installed
	$(BIN)/python -m pip install -q torch
	$(BIN)/python -m pytest -m gpu tests/gpu

lint: $(BIN)/.installed
	$(BIN)/ruff check batchmagic tests bench
	$(BIN)/ruff format --check batchmagic tests bench
	$(BIN)/python -m mypy --strict batchmagic
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir build/docs-check

# The documentation site (mkdocs.yml, pages in docs/) into site/; open site/index.html.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict
	@echo "documentation built into site/ (open site/index.html)"

bench: $(BIN)/.installed node_modules/.installed
	$(BIN)/python -m bench
