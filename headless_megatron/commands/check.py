"""``headless-megatron check``: a tiny GPT trained for a few steps on this launch's parallel layout.

A smoke test of the install and of the collective backend (NCCL or gloo) through the real
Megatron-Core code paths: tensor/sequence/pipeline/data parallelism, DDP, the distributed optimizer
and ``finalize_model_grads``. The data is a synthetic arithmetic-progression language (each token is
the previous plus a per-sequence stride), learnable within a few dozen steps, so the check fails if
the loss does not go down.

    headless-megatron check --nproc-per-node 4 --tensor-model-parallel-size 2 --sequence-parallel
"""

from __future__ import annotations

import time

VOCAB = 128


def add_arguments(parser) -> None:
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--train-iters", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--num-microbatches", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1234)


def _batches(seed: int, micro_batch_size: int, seq_length: int):
    import torch
    from megatron.core import parallel_state as ps

    gen = torch.Generator().manual_seed(seed * 1000 + ps.get_data_parallel_rank())
    while True:
        start = torch.randint(0, VOCAB, (micro_batch_size, 1), generator=gen)
        stride = torch.randint(1, 8, (micro_batch_size, 1), generator=gen)
        text = (start + stride * torch.arange(seq_length + 1)) % VOCAB
        yield text[:, :-1], text[:, 1:]


def _forward_step(data_iterator, model):
    import torch

    tokens, labels = next(data_iterator)
    tokens, labels = tokens.to(torch.cuda.current_device()), labels.to(torch.cuda.current_device())
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    loss = model(tokens, positions, None, labels=labels)

    def loss_func(output):
        total, count = output.float().sum(), torch.tensor(output.numel(), device=output.device)
        return total, count.int(), {"loss": torch.stack([total, count.float()])}

    return loss, loss_func


def run(args) -> int:
    import torch
    import torch.nn.functional as F
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.transformer_config import TransformerConfig

    from headless_megatron.models.gpt import build_gpt_stage
    from headless_megatron.models.specs import kernel_backend
    from headless_megatron.runtime.distributed import (
        ParallelLayout,
        destroy_distributed,
        init_distributed,
        is_rank_zero,
    )

    layout = ParallelLayout(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    device = init_distributed(layout, seed=args.seed)
    tp, pp = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size
    config = TransformerConfig(
        num_layers=2 * pp,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=128,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=args.sequence_parallel and tp > 1,
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        calculate_per_token_loss=True,
        finalize_model_grads_func=finalize_model_grads,
    )
    backend = kernel_backend("auto")
    model = build_gpt_stage(config, VOCAB, args.seq_length, seed=args.seed, backend=backend).to(device)
    model = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True),
        module=model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=3e-3, clip_grad=1.0, use_distributed_optimizer=True), [model]
    )
    forward_backward = get_forward_backward_func()
    data = _batches(args.seed, args.micro_batch_size, args.seq_length)
    dp = ps.get_data_parallel_world_size()
    if is_rank_zero():
        print(
            f"check: world {dist.get_world_size()} = TP {tp} x PP {pp} x DP {dp}"
            f"{' + SP' if config.sequence_parallel else ''}, {device.type}, {backend} spec, "
            f"{args.train_iters} iterations",
            flush=True,
        )
    losses = []
    for iteration in range(1, args.train_iters + 1):
        started = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=_forward_step,
            data_iterator=data,
            model=[model],
            num_microbatches=args.num_microbatches,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            forward_only=False,
        )
        _, grad_norm, _ = optimizer.step()
        total = torch.zeros(2, device=device)
        if ps.is_pipeline_last_stage():
            total = torch.stack([r["loss"] for r in reports]).sum(0)
        dist.all_reduce(total)  # last stages only; TP replicas add equal shares to sum and count
        loss = (total[0] / total[1]).item()
        losses.append(loss)
        if is_rank_zero() and (iteration == 1 or iteration % 5 == 0 or iteration == args.train_iters):
            elapsed = (time.perf_counter() - started) * 1000
            print(f"iteration {iteration:4d} | loss {loss:.4f} | grad norm {grad_norm:.3f} | {elapsed:.0f} ms", flush=True)
    reporting = is_rank_zero()
    destroy_distributed()
    if losses[-1] >= losses[0] * 0.9:
        print(f"check FAILED: loss did not go down ({losses[0]:.4f} -> {losses[-1]:.4f})")
        return 1
    if reporting:
        print(f"check passed: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return 0
