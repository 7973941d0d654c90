#!/usr/bin/env bash
# GPU smoke benchmark: the headless (CWT) and vanilla (cross-entropy) Pythia-160M-size decoders,
# 50 training iterations each on one GPU (Transformer Engine kernels when installed), with
# tokens/s, TFLOP/s, MFU and peak memory side by side. Synthetic tokens (--mock-data), the GPT-NeoX
# vocabulary size, sequence 2048, 4 micro-batches of 8 sequences per iteration.
#
#   tools/bench_gpt_160m.sh [extra flags for both configs, e.g. --micro-batch-size 16]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m headless_megatron bench train \
    --config configs/gpt_headless_160m.yaml --config configs/gpt_vanilla_160m.yaml --iters 50 -- \
    --mock-data --vocab-size 50277 --micro-batch-size 8 --global-batch-size 32 "$@"
