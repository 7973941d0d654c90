"""``headless-megatron bench attention``: the fused core attention against Megatron's unfused one.

    headless-megatron bench attention --seq-length 2048 --heads 12 --head-dim 64 --micro-batch-size 1

Forward + backward of ``SDPAttention`` (torch's ``scaled_dot_product_attention``) and of Megatron's
``DotProductAttention`` (scores, masked softmax and context as separate ``[b, heads, s, s]``
tensors) on the same query/key/value tensors, for a causal decoder layer and a padded encoder layer
(BERT's key-padding mask, a quarter of the positions padding), in one process with one rank. The
table gives the median time of ``--iters`` runs after ``--warmup``, the ratio, and on a GPU the peak
memory each one allocated.
"""

from __future__ import annotations

import statistics
import time

from headless_megatron.benchmarks import print_table


def add_arguments(parser) -> None:
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=12, help="attention heads (of one TP rank)")
    parser.add_argument("--query-groups", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--iters", type=int, default=5, help="timed forward+backward passes per side")
    parser.add_argument("--warmup", type=int, default=1)


def _time_forward_backward(module, q, k, v, mask, iters: int, warmup: int) -> tuple[float, int | None]:
    import torch

    cuda = q.is_cuda
    seconds = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    for step in range(warmup + iters):
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        started = time.perf_counter()
        module(*inputs, mask).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() - baseline if cuda else None
    return statistics.median(seconds), peak


def _measure(options: dict) -> list[dict]:
    import torch
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from headless_megatron.config import ParallelLayout
    from headless_megatron.models.attention import SDPAttention
    from headless_megatron.runtime.distributed import init_distributed

    device = init_distributed(ParallelLayout(), seed=0)
    dtype_name = options["dtype"] or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    heads, groups = options["heads"], options["query_groups"] or options["heads"]
    seq, batch, dim = options["seq_length"], options["micro_batch_size"], options["head_dim"]
    config = TransformerConfig(
        num_layers=1, hidden_size=heads * dim, num_attention_heads=heads, num_query_groups=groups,
        kv_channels=dim, attention_dropout=0.0, bf16=dtype == torch.bfloat16, params_dtype=dtype,
        masked_softmax_fusion=False,
    )
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(seq, batch, heads, dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(seq, batch, groups, dim, generator=gen).to(device, dtype) for _ in range(2))
    keep = torch.arange(seq) < seq - seq // 4
    cases = {
        "causal (GPT)": (AttnMaskType.causal, {DotProductAttention: None, SDPAttention: None}),
        # what BertModel gives each: [b, 1, s, s] to DotProductAttention, [b, 1, 1, s] to SDPAttention
        "padding (BERT)": (AttnMaskType.padding, {
            DotProductAttention: ~(keep[:, None] & keep[None, :]).expand(batch, 1, seq, seq).to(device),
            SDPAttention: ~keep.expand(batch, 1, 1, seq).to(device),
        }),
    }
    rows = []
    for case, (mask_type, masks) in cases.items():
        row = {"case": case, "shape": f"b{batch} s{seq} heads {heads}/{groups} d{dim} {str(dtype)[6:]}"}
        for cls, mask in masks.items():
            module = cls(config, layer_number=1, attn_mask_type=mask_type, attention_type="self").to(device)
            row[cls.__name__] = _time_forward_backward(module, q, k, v, mask, options["iters"], options["warmup"])
        rows.append(row)
    return rows


def run(args) -> int:
    import torch

    from headless_megatron.runtime.launch import run_local_ranks

    rows = run_local_ranks(_measure, 1, args=(vars(args),))[0]
    gpu = torch.cuda.is_available()
    header = ["case", "shape", "unfused ms", "SDPA ms", "speed-up"] + (["unfused MB", "SDPA MB"] if gpu else [])
    table = []
    for row in rows:
        (unfused, unfused_peak), (fused, fused_peak) = row["DotProductAttention"], row["SDPAttention"]
        cells = [row["case"], row["shape"], f"{unfused * 1e3:,.1f}", f"{fused * 1e3:,.1f}", f"{unfused / fused:.2f}x"]
        if gpu:
            cells += [f"{unfused_peak / 2**20:,.0f}", f"{fused_peak / 2**20:,.0f}"]
        table.append(cells)
    device = torch.cuda.get_device_name() if gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"\nforward+backward of one core attention, median of {args.iters} after {args.warmup} warm-up; "
          f"torch {torch.__version__}, {device}; unfused = Megatron's DotProductAttention, SDPA = SDPAttention")
    print_table(header, table)
    return 0
