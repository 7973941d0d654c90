# `make test` and `make demo` work on a fresh machine: they create .venv/, install into it
# (again only when setup.py changed), then run. On a machine without an NVIDIA driver the CPU build
# of torch is installed first, so that pip does not pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CPU_TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Two xdist workers on two cores (the suite is half waiting: on processes, signals, SLURM); the 50
# slowest tests are listed at the end of each run.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: install test test-slow demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "$(CPU_TORCH)"; fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=50 $(PYTEST_ARGS)

# The minutes-long checks (billion-parameter conversions), deselected by `make test`; CI runs both.
test-slow: install
	$(BIN)/python -m pytest -m slow --durations=10 $(PYTEST_ARGS)

# The demo: tokenize the embedded corpus (Python's own documentation) with a BPE tokenizer trained
# on it; pretrain the tiny headless GPT on 2 local ranks (tensor + sequence parallel); fine-tune it
# briefly into a language model (new LM head = its input embeddings); export it to Hugging Face and
# let transformers continue a prompt.
DEMO_DATA ?= data/python-docs
DEMO_RUN ?= runs/demo

demo: install
	$(BIN)/headless-megatron env
	$(BIN)/headless-megatron preprocess --input builtin:python-docs --train-tokenizer bpe --vocab-size 4096 \
		--output-prefix $(DEMO_DATA) --workers 2
	rm -rf $(DEMO_RUN) $(DEMO_RUN)-lm $(DEMO_RUN)-hf
	$(BIN)/headless-megatron pretrain --nproc-per-node 2 --config configs/gpt_headless_tiny.yaml \
		--data-path $(DEMO_DATA)_text_document --tensor-model-parallel-size 2 --sequence-parallel \
		--save $(DEMO_RUN)
	$(BIN)/headless-megatron finetune --config configs/gpt_headless_tiny.yaml --pretrained $(DEMO_RUN) \
		--data-path $(DEMO_DATA)_text_document --loss ce --untie-embeddings-and-output-weights \
		--train-iters 50 --lr 1e-3 --lr-warmup-iters 5 --eval-iters 0 --save $(DEMO_RUN)-lm
	$(BIN)/headless-megatron export-hf --checkpoint $(DEMO_RUN)-lm --output $(DEMO_RUN)-hf --mode lm
	$(BIN)/headless-megatron generate --model $(DEMO_RUN)-hf --prompt "The Python interpreter" --temperature 0.7

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
