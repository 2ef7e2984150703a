# rlhf_ops: two commands on a fresh machine: `make demo` and `make test` (both run `make setup`).
PY ?= python3
VENV ?= .venv
# torch first, so pip never pulls a CUDA build on a CPU box; GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The quickstart loop on tiny models (CPU, ~1-2 min); prints where its summary.json is.
demo: setup
	$(BIN)/python -m rlhf_ops +experiment=quickstart

# The default suite (fast and `distributed` tests; `slow` and `gpu` are left out).
test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

clean:
	rm -rf runs multirun outputs .pytest_cache
