# `make test` and `make demo` work on a fresh machine: they create .venv/, install into it
# (again only when setup.py changed), then run. On a machine without an NVIDIA driver the CPU build
# of torch is installed first, so that pip does not pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CPU_TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "$(CPU_TORCH)"; fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/headless-megatron env
	$(BIN)/headless-megatron check --nproc-per-node 2 --tensor-model-parallel-size 2 --sequence-parallel

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
