# rlhf_ops: two commands on a fresh machine: `make demo` and `make test` (both run `make setup`).
PY ?= python3
VENV ?= .venv
# torch first, so pip never pulls a CUDA build on a CPU box; GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all setup-trl-latest test-trl-latest clean

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

# The newest TRL, for everything but PPO (TRL 1.13 removed it: rlhf_ops/stages/trl_compat.py), in a venv of its
# own: torch first, as in setup; then pyproject.toml's dependencies with trl replaced and torch held at the build
# just installed (so pip never swaps in another, CUDA, build); rlhf_ops itself without dependencies.
TRL_LATEST ?= 1.16.0
VENV_TRL_LATEST ?= .venv-trl-latest
BIN_TRL_LATEST := $(VENV_TRL_LATEST)/bin

setup-trl-latest: $(VENV_TRL_LATEST)/.installed

$(VENV_TRL_LATEST)/.installed: pyproject.toml
	$(PY) -m venv $(VENV_TRL_LATEST)
	$(BIN_TRL_LATEST)/pip install --quiet --upgrade pip
	$(BIN_TRL_LATEST)/pip install $(TORCH_SPEC)
	$(BIN_TRL_LATEST)/python scripts/requirements_with.py --extra dev trl==$(TRL_LATEST) \
		torch==$$($(BIN_TRL_LATEST)/python -c 'import importlib.metadata as m; print(m.version("torch"))') \
		> $(VENV_TRL_LATEST)/requirements.txt
	$(BIN_TRL_LATEST)/pip install -r $(VENV_TRL_LATEST)/requirements.txt
	$(BIN_TRL_LATEST)/pip install --no-deps -e .
	touch $@

# The tests marked trl_latest (the non-PPO stages and loops, the PPO-needs-TRL-1.12 message) on that venv.
test-trl-latest: setup-trl-latest
	$(BIN_TRL_LATEST)/python -m pytest -m trl_latest

clean:
	rm -rf runs multirun outputs .pytest_cache
