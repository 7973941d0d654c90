#!/usr/bin/env bash
# The GPU benchmark of issue 12, sized to finish within 8 minutes on one H200 (bf16, no Transformer
# Engine, the local layer spec with fused SDPA attention). Synthetic tokens (--mock-data), the
# GPT-NeoX vocabulary (50,277 -> 50,304 padded). It prints `bench loss` in bf16, then ONE table:
#
#   gpt 160m : headless vs vanilla, seq 2048            tokens/s, TFLOP/s (Megatron-LM count), MFU, peak memory
#   gpt 1b   : headless vs vanilla, seq 2048
#   gpt 2.8b : headless, a few iterations (its peak memory)
#   bert small, bert base : headless vs vanilla dense head vs vanilla masked-only head (the paper's
#              Table 6 comparison), large micro-batches so that the GPU is not launch-bound
#
# and last `bench layer` (the layer fusions whose CPU figures do not carry over to GPUs; also saved
# as $BENCH_OUT/bench_layer.txt).
#
#   tools/bench_gpu.sh                      # on the GPU machine
#   BENCH_GPU_SMOKE=1 tools/bench_gpu.sh    # the same steps at tiny sizes, on a CPU (about a minute)
#
# Without an installed megatron-core, wheels in .whl/ (e.g. a carried cp312 megatron-core wheel)
# are installed into /tmp/site first. Every figure also lands in $BENCH_OUT/bench_gpu.jsonl
# (default: a temporary directory) and the table in $BENCH_OUT/bench_gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import megatron.core" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "bench_gpu.sh: megatron-core is not importable and .whl/ holds no wheels" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

BENCH_OUT=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$BENCH_OUT"
RESULTS=$BENCH_OUT/bench_gpu.jsonl
rm -f "$RESULTS"
bench() { "$PYTHON" -m headless_megatron bench "$@"; }
started=$SECONDS

if [[ "${BENCH_GPU_SMOKE:-0}" == 1 ]]; then
    # Tiny shapes through exactly the same steps (fp32: CPUs have no fast bf16 matmuls).
    ITERS=(--iters 1 --warmup 1)
    COMMON=(--mock-data --vocab-size 512 --transformer-impl local)
    GPT=(--num-layers 2 --seq-length 64 --micro-batch-size 2 --global-batch-size 2)
    GPT_BIG=(--num-layers 2 --seq-length 64 --micro-batch-size 2 --global-batch-size 2)
    BERT=(--num-layers 2 --seq-length 64 --micro-batch-size 8 --global-batch-size 8)
    LOSS=(--shape decoder:256x64x512 --shape encoder:40x64x512@256 --iters 1)
    LAYER=(--seq-length 64 --hidden-size 64 --heads 4 --vocab-size 512 --iters 1 --warmup 1)
    SIZES=(160m-smoke 1b-smoke 2.8b-smoke small-smoke base-smoke)  # the real runs' group names, tiny shapes
else
    ITERS=(--iters 8 --warmup 3)
    COMMON=(--mock-data --vocab-size 50277 --bf16 --transformer-impl local)
    GPT=(--seq-length 2048 --micro-batch-size 8 --global-batch-size 16)
    GPT_BIG=(--seq-length 2048 --micro-batch-size 4 --global-batch-size 8)
    BERT=(--micro-batch-size 256 --global-batch-size 512)
    LOSS=(--dtype bfloat16)
    # the 1B recipe's layer at its micro-batch; --warmup 2 leaves the compilations out of the times
    LAYER=(--seq-length 2048 --micro-batch-size 4 --hidden-size 2048 --heads 16 --dtype bf16 --iters 10 --warmup 2)
    SIZES=(160m 1b 2.8b small base)
fi
if [[ "${BENCH_GPU_SMOKE:-0}" == 1 ]]; then
    GPT_CONFIGS=(configs/gpt_headless_tiny.yaml "configs/gpt_headless_tiny.yaml --loss ce")
    GPT1B_CONFIGS=("${GPT_CONFIGS[@]}")
    GPT28_CONFIG=configs/gpt_headless_tiny.yaml
    BERT_SMALL=(configs/bert_headless_tiny.yaml "configs/bert_headless_tiny.yaml --loss ce"
                "configs/bert_headless_tiny.yaml --loss ce --mlm-project-masked-only")
    BERT_BASE=("${BERT_SMALL[@]}")
else
    GPT_CONFIGS=(configs/gpt_headless_160m.yaml configs/gpt_vanilla_160m.yaml)
    GPT1B_CONFIGS=(configs/gpt_headless_1b.yaml "configs/gpt_headless_1b.yaml --loss ce")
    GPT28_CONFIG=configs/gpt_headless_2.8b.yaml
    BERT_SMALL=(configs/bert_headless_small.yaml configs/bert_vanilla_small.yaml
                "configs/bert_vanilla_small.yaml --mlm-project-masked-only")
    BERT_BASE=(configs/bert_headless_base.yaml configs/bert_vanilla_base.yaml
               "configs/bert_vanilla_base.yaml --mlm-project-masked-only")
fi
with_configs() { local out=(); for c in "$@"; do out+=(--config "$c"); done; printf '%s\0' "${out[@]}"; }
train() {  # group, then configs...; options for all of them in $EXTRA
    local group=$1; shift
    local -a configs; mapfile -d '' configs < <(with_configs "$@")
    echo "== bench train: $group ($((SECONDS - started)) s so far)"
    bench train "${configs[@]}" "${ITERS[@]}" --results "$RESULTS" --group "$group" -- "${COMMON[@]}" "${EXTRA[@]}"
}

echo "== bench loss ($((SECONDS - started)) s so far)"
bench loss "${LOSS[@]}"
EXTRA=("${GPT[@]}");     train "gpt ${SIZES[0]}" "${GPT_CONFIGS[@]}"
EXTRA=("${GPT_BIG[@]}"); train "gpt ${SIZES[1]}" "${GPT1B_CONFIGS[@]}"
ITERS_SAVED=("${ITERS[@]}")
[[ "${BENCH_GPU_SMOKE:-0}" == 1 ]] || ITERS=(--iters 3 --warmup 2)
EXTRA=("${GPT_BIG[@]}"); train "gpt ${SIZES[2]}" "$GPT28_CONFIG"
ITERS=("${ITERS_SAVED[@]}")
EXTRA=("${BERT[@]}");    train "bert ${SIZES[3]}" "${BERT_SMALL[@]}"
EXTRA=("${BERT[@]}");    train "bert ${SIZES[4]}" "${BERT_BASE[@]}"

"$PYTHON" - "$RESULTS" "$BENCH_OUT/bench_gpu.md" "$((SECONDS - started))" <<'EOF'
import json, sys

records = [json.loads(line) for line in open(sys.argv[1])]
first = {}
rows = []
for r in records:
    base = first.setdefault(r["group"], r)
    rows.append([
        r["group"], r["config"], r["layout"], f"{r['tokens_per_sec']:,.0f}",
        f"{r['tokens_per_sec'] / base['tokens_per_sec']:.2f}", f"{r['iteration_flops'] / 1e12:.4g}",
        f"{r['tflops']:.1f}", f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
        f"{r['peak_bytes'] / 2**30:.1f}", f"{r['loss']:.3f}",
    ])
header = ["group", "config", "layout", "tokens/s", "x group's first", "TFLOP/iter", "TFLOP/s/dev",
          "MFU", "peak GiB", "last loss"]
lines = [f"device {records[0]['device']}; FLOPs as Megatron-LM counts them (causal attention halved, "
         f"CWT's K x U matmul, masked-only heads); {sys.argv[3]} s in all", "",
         "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
lines += ["| " + " | ".join(row) + " |" for row in rows]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n" + "\n".join(lines))
EOF
# Last, so that a compiler failure on a new machine cannot cost the table above.
echo "== bench layer ($((SECONDS - started)) s so far)"
bench layer "${LAYER[@]}" --compile-layer | tee "$BENCH_OUT/bench_layer.txt" || echo "bench_gpu.sh: bench layer failed (see above)" >&2
