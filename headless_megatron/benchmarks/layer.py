"""``headless-megatron bench layer``: the fusions Megatron-Core and torch offer for one transformer
layer without Transformer Engine or apex, each against the path it replaces.

    headless-megatron bench layer --seq-length 2048 --hidden-size 768 --dtype bf16

Forward + backward, in one process with one rank, of:

* the MLP with Megatron's ``bias_activation_fusion`` off and on: ``bias_swiglu_impl`` for the
  SwiGLU MLP of the GPT recipes, ``bias_gelu_impl`` for the biased GeLU MLP of the BERT recipes
  (Megatron-Core compiles both with ``torch.compile``, its ``jit_fuser``);
* ``bias_dropout_fusion`` off and on (Megatron's bias-dropout-add, compiled the same way), without
  dropout (GPT recipes) and with BERT's 0.1;
* LayerNorm and RMSNorm: the operations written out, torch's one-kernel ``layer_norm``/``rms_norm``
  (``models.specs.TorchNorm``, which is also what Megatron's local spec builds without apex), and
  that module under ``torch.compile``;
* the vanilla head's cross-entropy: ``vocab_parallel_cross_entropy`` against
  ``fused_vocab_parallel_cross_entropy`` (``cross_entropy_loss_fusion``, its native implementation);
* with ``--compile-layer``, a whole local-spec GPT layer eager against ``torch.compile(layer)``.

Each row gives the median time of ``--iters`` runs after ``--warmup`` (the first call of a compiled
function compiles it, so keep ``--warmup`` at 1 or more), the speed-up, the largest difference of the
option's output and gradients from the baseline's relative to the baseline's largest value, and on a
GPU the peak memory each side allocated.
"""

from __future__ import annotations

import statistics
import time

import torch

from headless_megatron.benchmarks import print_table


def add_arguments(parser) -> None:
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12, help="attention heads (only for --compile-layer)")
    parser.add_argument("--vocab-size", type=int, default=50304, help="logit columns of the cross-entropy row")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--iters", type=int, default=5, help="timed forward+backward passes per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile-layer", action="store_true", help="also time a whole GPT layer under torch.compile")


class _Side:
    """One way of computing a row's function: ``forward(*inputs)`` returns a tensor; ``params`` are
    the module parameters whose gradients count too."""

    def __init__(self, name, forward, params=()):
        self.name, self.forward, self.params = name, forward, list(params)

    def forward_backward(self, inputs, upstream):
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        for param in self.params:
            param.grad = None
        out = self.forward(*leaves)
        out.backward(upstream)
        grads = [t.grad for t in leaves if t.requires_grad] + [p.grad for p in self.params]
        return [out.detach()] + grads


def _time(side: _Side, inputs, upstream, iters: int, warmup: int):
    cuda = upstream.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    seconds = []
    for step in range(warmup + iters):
        started = time.perf_counter()
        results = side.forward_backward(inputs, upstream)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() - baseline if cuda else None
    return statistics.median(seconds), peak, results


def _relative_difference(option, baseline) -> float:
    # a parameter the output does not reach (the MLP's returned, not added, fc2 bias) has no gradient
    return max(
        ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
        for a, b in zip(option, baseline)
        if b is not None
    )


def _twin_modules(build):
    """Two modules built by ``build(fused)`` with the first one's weights in both."""
    unfused, fused = build(False), build(True)
    fused.load_state_dict(unfused.state_dict())
    return unfused, fused


def _rows(options: dict, device, dtype):
    """Per row: case, baseline side, option side, inputs."""
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.fusions.fused_cross_entropy import (
        fused_vocab_parallel_cross_entropy,
    )
    from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    from headless_megatron.models.specs import TorchNorm, local_layer_spec

    seq, batch, hidden = options["seq_length"], options["micro_batch_size"], options["hidden_size"]
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    def config(**fields):
        return TransformerConfig(
            num_layers=1, hidden_size=hidden, num_attention_heads=options["heads"], hidden_dropout=0.0,
            attention_dropout=0.0, bf16=dtype == torch.bfloat16, params_dtype=dtype,
            use_cpu_initialization=device.type == "cpu", bias_dropout_fusion=False, **fields,
        )

    swiglu = {"gated_linear_unit": True, "activation_func": F.silu, "add_bias_linear": False,
              "ffn_hidden_size": int((4 * hidden * 2 / 3) / 64) * 64, "normalization": "RMSNorm"}
    gelu = {"gated_linear_unit": False, "activation_func": F.gelu, "add_bias_linear": True,
            "ffn_hidden_size": 4 * hidden, "normalization": "LayerNorm"}
    mlp_specs = {
        "SwiGLU MLP (GPT)": (swiglu, get_gpt_layer_local_spec().submodules.mlp),
        "GeLU MLP + bias (BERT)": (gelu, bert_layer_local_spec.submodules.mlp),
    }
    x = randn(seq, batch, hidden)
    rows = []
    for case, (arch, spec) in mlp_specs.items():
        mlp_off, mlp_on = _twin_modules(
            lambda fused, spec=spec, arch=arch: build_module(
                spec, config=config(bias_activation_fusion=fused, **arch)
            ).to(device)
        )
        rows.append((f"{case}, ffn {arch['ffn_hidden_size']}",
                     _Side("bias_activation_fusion off", lambda h, mlp=mlp_off: mlp(h)[0], mlp_off.parameters()),
                     _Side("on", lambda h, mlp=mlp_on: mlp(h)[0], mlp_on.parameters()),
                     [x]))

    bias, residual = randn(hidden), randn(seq, batch, hidden)
    for prob, recipes in ((0.0, "GPT"), (0.1, "BERT")):
        unfused, fused = get_bias_dropout_add(True, False), get_bias_dropout_add(True, True)
        rows.append((f"bias-dropout-add p={prob} ({recipes})",
                     _Side("bias_dropout_fusion off", lambda h, b, r, f=unfused, p=prob: f((h, b), r, p)),
                     _Side("on", lambda h, b, r, f=fused, p=prob: f((h, b), r, p)),
                     [x, bias, residual]))

    for kind, written_out in (("LayerNorm", _layer_norm_written_out), ("RMSNorm", _rms_norm_written_out)):
        norm = TorchNorm(config(normalization=kind), hidden).to(device, dtype)
        compiled = torch.compile(norm)
        rows.append((kind, _Side("ops written out", lambda h, n=norm, f=written_out: f(n, h), norm.parameters()),
                     _Side("TorchNorm", norm, norm.parameters()), [x]))
        rows.append((kind, _Side("TorchNorm", norm, norm.parameters()),
                     _Side("torch.compile(TorchNorm)", compiled, norm.parameters()), [x]))

    vocab = options["vocab_size"]
    logits = randn(seq, batch, vocab, scale=4.0)
    target = torch.randint(0, vocab, (seq, batch), generator=gen).to(device)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    # GPTModel's loss: the logits in the model's dtype; Megatron's CE upcasts them to fp32 itself
    rows.append((f"vocab-parallel CE (vanilla head), V {vocab}",
                 _Side("cross_entropy_loss_fusion off", lambda z, t: vocab_parallel_cross_entropy(z, t)),
                 _Side("on (native)", lambda z, t: fused_vocab_parallel_cross_entropy(z, t, tp_group)),
                 [logits, target]))

    if options["compile_layer"]:
        layer_config = config(bias_activation_fusion=True, **swiglu)
        spec = local_layer_spec(get_gpt_layer_local_spec(normalization="RMSNorm"), layer_config)
        layer = build_module(spec, config=layer_config, layer_number=1).to(device, dtype)
        compiled = torch.compile(layer)
        rows.append(("GPT layer (SwiGLU, SDPA, RMSNorm)",
                     _Side("eager", lambda h: layer(h, attention_mask=None)[0], layer.parameters()),
                     _Side("torch.compile(layer)", lambda h: compiled(h, attention_mask=None)[0], layer.parameters()),
                     [x]))
    return rows


def _layer_norm_written_out(norm, h):
    mean = h.mean(-1, keepdim=True)
    variance = (h - mean).pow(2).mean(-1, keepdim=True)
    return (h - mean) * torch.rsqrt(variance + norm.eps) * norm.weight + norm.bias


def _rms_norm_written_out(norm, h):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


def _measure(options: dict) -> list[dict]:
    from headless_megatron.config import ParallelLayout
    from headless_megatron.runtime.distributed import init_distributed

    device = init_distributed(ParallelLayout(), seed=0)
    dtype_name = options["dtype"] or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    measured = []
    for case, baseline, option, inputs in _rows(options, device, dtype):
        sides = []
        for side in (baseline, option):
            out = side.forward(*inputs)
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
            sides.append(_time(side, inputs, upstream, options["iters"], options["warmup"]))
        (base_s, base_peak, base_results), (opt_s, opt_peak, opt_results) = sides
        measured.append({
            "case": case, "dtype": str(dtype)[6:], "baseline": baseline.name, "option": option.name,
            "baseline_s": base_s, "option_s": opt_s, "baseline_peak": base_peak, "option_peak": opt_peak,
            "difference": _relative_difference(opt_results, base_results),
        })
    return measured


def run(args) -> int:
    from headless_megatron.runtime.launch import run_local_ranks

    rows = run_local_ranks(_measure, 1, args=(vars(args),))[0]
    gpu = torch.cuda.is_available()
    header = ["case", "baseline -> option", "baseline ms", "option ms", "speed-up", "max rel diff"]
    header += ["baseline MB", "option MB"] if gpu else []
    table = []
    for row in rows:
        cells = [row["case"], f"{row['baseline']} -> {row['option']}", f"{row['baseline_s'] * 1e3:,.2f}",
                 f"{row['option_s'] * 1e3:,.2f}", f"{row['baseline_s'] / row['option_s']:.2f}x",
                 f"{row['difference']:.1e}"]
        if gpu:
            cells += [f"{row['baseline_peak'] / 2**20:,.0f}", f"{row['option_peak'] / 2**20:,.0f}"]
        table.append(cells)
    device = torch.cuda.get_device_name() if gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"\nforward+backward of s{args.seq_length} b{args.micro_batch_size} h{args.hidden_size} {rows[0]['dtype']}, "
          f"median of {args.iters} after {args.warmup} warm-up; torch {torch.__version__}, "
          f"{device}; max rel diff = largest |option - baseline| over output and gradients / largest |baseline| "
          f"(dropout rows: different masks)")
    print_table(header, table)
    return 0
