"""``headless-megatron bench loss``: CWT against the softmax head it replaces, side by side.

For each shape and token-id distribution, forward+backward time and peak memory of

* **CE**: the output projection ``[K, h] x [h, V]`` and Megatron's ``vocab_parallel_cross_entropy``
  (what a vanilla model computes at its K loss positions), and
* **CWT**: :func:`headless_megatron.cwt.cwt_loss` on the same hidden states and table,

each measured in a fresh process so that one side's allocations cannot hide the other's peak (on
CPU the peak is the growth of the resident set; on GPU ``max_memory_allocated``). The FLOP ratio of
the two is about V/U, U being the number of distinct ids among the K targets, so the table prints U
and the id distribution: ``zipf`` (rank-frequency ~ 1/r, like text) and ``uniform``.

Defaults are the paper's shapes: decoder (K = 8 x 2047 positions, h = 512, V = 50304) and encoder
(BERT-base: 64 x 128 tokens with 15% masked, h = 768, V = 50304).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from headless_megatron.benchmarks import print_table

DEFAULT_SHAPES = ["decoder:16376x512x50304", "encoder:1229x768x50304@8192"]


@dataclass(frozen=True)
class Shape:
    """K loss positions out of ``tokens`` hidden states of width ``hidden``, vocabulary ``vocab``."""

    name: str
    positions: int
    hidden: int
    vocab: int
    tokens: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """``name:KxHxV`` or ``name:KxHxV@T`` (K of T tokens are loss positions, e.g. masked ones)."""
        try:
            name, dims = text.split(":", 1)
            dims, _, tokens = dims.partition("@")
            positions, hidden, vocab = (int(d) for d in dims.split("x"))
            total = int(tokens) if tokens else positions
        except ValueError:
            raise ValueError(
                f"--shape {text!r}: expected NAME:KxHxV or NAME:KxHxV@TOKENS, e.g. decoder:16376x512x50304"
            ) from None
        if not 0 < positions <= total or hidden <= 0 or vocab <= 0:
            raise ValueError(f"--shape {text!r}: need 0 < K <= TOKENS and positive H, V")
        return cls(name, positions, hidden, vocab, total)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--shape", action="append", default=None, metavar="NAME:KxHxV[@TOKENS]",
        help=f"shapes to measure (repeatable); default {' '.join(DEFAULT_SHAPES)}",
    )
    parser.add_argument("--ids", nargs="+", default=["zipf", "uniform"], choices=["zipf", "uniform"])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per measurement (median reported)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)


def target_ids(distribution: str, count: int, vocab: int, seed: int):
    """``count`` ids: ``zipf`` draws rank r with probability ~ (r + 2.7)^-1.15 over a shuffled vocabulary.

    The exponent makes 16376 draws from 50304 ids hit about 4200 distinct ids, as a 2047-token x 8
    micro-batch of English text does with a 50k BPE vocabulary.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    if distribution == "uniform":
        return torch.randint(0, vocab, (count,), generator=gen)
    ranks = torch.arange(vocab, dtype=torch.float64)
    weights = (ranks + 2.7) ** -1.15
    drawn = torch.multinomial(weights, count, replacement=True, generator=gen)
    return torch.randperm(vocab, generator=gen)[drawn]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(side: str, shape: Shape, distribution: str, iters: int, dtype_name: str, seed: int) -> dict:
    """Run in a fresh process: median forward+backward seconds and peak extra bytes of one side."""
    import torch

    from headless_megatron.cwt import cwt_loss
    from headless_megatron.runtime.distributed import init_distributed

    device = init_distributed()
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    ids = target_ids(distribution, shape.positions, shape.vocab, seed).to(device)
    table = (torch.randn(shape.vocab, shape.hidden, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    hidden = torch.randn(shape.tokens, 1, shape.hidden, generator=gen).to(device, dtype).requires_grad_()
    loss_mask = torch.zeros(shape.tokens, 1, device=device)
    loss_mask[torch.randperm(shape.tokens, generator=gen)[: shape.positions].to(device)] = 1
    targets = torch.zeros(shape.tokens, 1, dtype=torch.long, device=device)
    targets[loss_mask > 0] = ids

    def cross_entropy_step():
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        queries = hidden.view(shape.tokens, shape.hidden)[loss_mask.view(-1) > 0]
        logits = queries @ table.t()
        loss = vocab_parallel_cross_entropy(logits, targets[loss_mask > 0]).sum()
        loss.backward()

    def cwt_step():
        cwt_loss(hidden, targets, table, loss_mask=loss_mask).sum().backward()

    step = cwt_step if side == "cwt" else cross_entropy_step
    cuda = device.type == "cuda"
    step()  # warm-up: allocator pools, kernels, thread pools
    hidden.grad = table.grad = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _resident_bytes()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        hidden.grad = table.grad = None
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_resident_bytes()
    return {
        "seconds": statistics.median(times),
        "peak_bytes": max(peak - baseline, 0),
        "distinct": int(torch.unique(ids).numel()),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _fmt_mb(size: int) -> str:
    return f"{size / 2**20:,.0f}"


def run(args) -> int:
    from headless_megatron.errors import UsageError
    from headless_megatron.runtime.launch import run_local_ranks

    try:
        shapes = [Shape.parse(text) for text in (args.shape or DEFAULT_SHAPES)]
    except ValueError as error:
        raise UsageError(str(error)) from None
    header = ("shape", "ids", "K", "U", "V/U", "CE ms", "CWT ms", "speed-up", "CE MB", "CWT MB", "memory ratio")
    rows = []
    device = "?"
    for shape in shapes:
        for distribution in args.ids:
            sides = {}
            for side in ("ce", "cwt"):  # one after the other: the CE side alone may need ~13 GB
                (sides[side],) = run_local_ranks(
                    _measure, 1, args=(side, shape, distribution, args.iters, args.dtype, args.seed)
                )
            ce, cwt = sides["ce"], sides["cwt"]
            device = ce["device"]
            rows.append((
                f"{shape.name} {shape.positions}x{shape.hidden}x{shape.vocab}",
                distribution,
                str(shape.positions),
                str(cwt["distinct"]),
                f"{shape.vocab / cwt['distinct']:.1f}",
                _fmt_ms(ce["seconds"]),
                _fmt_ms(cwt["seconds"]),
                f"{ce['seconds'] / cwt['seconds']:.1f}x",
                _fmt_mb(ce["peak_bytes"]),
                _fmt_mb(cwt["peak_bytes"]),
                f"{ce['peak_bytes'] / max(cwt['peak_bytes'], 1):.1f}x",
            ))
            print(f"measured {rows[-1][0]} {distribution}", flush=True)
    print(f"\nforward+backward, median of {args.iters}, {args.dtype}, device {device}; "
          "peak = extra memory over the inputs")
    print_table(header, rows)
    return 0
