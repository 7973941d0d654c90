"""``headless-megatron check``: a tiny GPT trained for a few steps on this launch's parallel layout.

A smoke test of the install and of the collective backend (NCCL or gloo) through the training loop
``pretrain`` runs (:func:`headless_megatron.training.loop.pretrain`): tensor/sequence/pipeline/data
parallelism, DDP, the distributed optimizer, ``finalize_model_grads`` and the CWT loss. The data is
Megatron's ``MockGPTDataset`` (documents counting up, ``1, 2, 3, ...``, modulo the vocabulary), learnable
within a few dozen steps, so the check fails if the loss does not go down.

    headless-megatron check --nproc-per-node 4 --tensor-model-parallel-size 2 --sequence-parallel
"""

from __future__ import annotations

import os

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


def check_config(args, world_size: int):
    """The tiny model and run of ``check`` as a :class:`~headless_megatron.config.TrainConfig`, for a
    launch of ``world_size`` ranks."""
    from headless_megatron.config import TrainConfig

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    config = TrainConfig(
        num_layers=2 * pp,
        hidden_size=64,
        ffn_hidden_size=128,
        num_attention_heads=4,
        seq_length=args.seq_length,
        vocab_size=VOCAB,
        mock_data=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=args.sequence_parallel and tp > 1,
        micro_batch_size=args.micro_batch_size,
        global_batch_size=1,  # set below, once the data-parallel size is known
        train_iters=args.train_iters,
        lr=3e-3,
        lr_decay_style="constant",
        seed=args.seed,
        num_workers=0,
        eval_iters=0,
        log_interval=5,
    )
    config.global_batch_size = args.micro_batch_size * args.num_microbatches * config.data_parallel_size(world_size)
    return config


def validate_for_launch(args, world_size: int) -> None:
    """The layout checks that need no rank, run by ``--nproc-per-node`` before it starts any."""
    from headless_megatron.models.registry import validate_config

    validate_config(check_config(args, world_size), world_size)


def run(args) -> int:
    import torch

    from headless_megatron.config.megatron import kernel_backend
    from headless_megatron.runtime.distributed import destroy_distributed, is_rank_zero
    from headless_megatron.runtime.launch import launch_world_size
    from headless_megatron.training.loop import pretrain

    world = launch_world_size()
    config = check_config(args, world)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group starts inside pretrain
        print(
            f"check: world {world} = TP {config.tensor_model_parallel_size} x PP {config.pipeline_model_parallel_size}"
            f" x DP {config.data_parallel_size(world)}{' + SP' if config.sequence_parallel else ''}, "
            f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {kernel_backend(config.transformer_impl)} spec, "
            f"{config.train_iters} iterations",
            flush=True,
        )
    summary = pretrain(config)
    reporting = is_rank_zero()
    destroy_distributed()
    first, last = summary.losses[0], summary.losses[-1]
    if last >= first * 0.9:
        if reporting:
            print(f"check FAILED: loss did not go down ({first:.4f} -> {last:.4f})")
        return 1
    if reporting:
        print(f"check passed: loss {first:.4f} -> {last:.4f}")
    return 0
