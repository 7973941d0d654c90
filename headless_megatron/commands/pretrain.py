"""``headless-megatron pretrain --config configs/<name>.yaml [--flag value ...]``, and
``headless-megatron finetune --config configs/gpt_headless_ft.yaml --pretrained DIR``.

Also ``torchrun -m headless_megatron pretrain ...`` and ``srun`` (one task per GPU). Keys of the
YAML file are Megatron-LM argument names; every key is also a ``--dashed-flag`` overriding the file.
Fine-tuning is the same loop started from another run's weights (``pretrained``): a headless model
gets an untied output layer initialised from its input embeddings, and a fresh optimizer.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from headless_megatron.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--dry-run", nargs="?", const=0, type=int, metavar="WORLD_SIZE",
        help="print the memory each rank needs per pipeline stage (parameters, gradients, optimizer state, "
             "activations, head) for WORLD_SIZE ranks (default: --nproc-per-node, else 1) and the resolved "
             "config as YAML, then exit without starting any rank")


def dry_run(args, world_size: int, command: str = "pretrain") -> int:
    """``--dry-run``: the checks of a launch, the memory plan and the resolved config; no rank starts."""
    import yaml

    from headless_megatron.data.tokenizer import load_tokenizer, tokenizer_for_dataset
    from headless_megatron.models.registry import validate_config
    from headless_megatron.training.memory_plan import plan_table

    config = _config(args, command)
    validate_config(config, world_size)
    vocab = config.vocab_size
    if vocab is None:
        tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else \
            tokenizer_for_dataset(config.data_blend()[0][0])
        vocab = tokenizer.vocab_size
    print(plan_table(config, world_size, config.padded_vocab_size(vocab)))
    print("\nresolved config:")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def reject_unknown_arguments(unknown: list[str]) -> None:
    """Raise the ``ConfigError`` that names the first unknown flag and the closest known one."""
    from headless_megatron.config import reject_unknown_flags

    reject_unknown_flags(unknown)


def _config(args, command: str):
    from headless_megatron.config import ConfigError, config_from_args

    config = config_from_args(args)
    if command == "finetune" and not config.pretrained:
        raise ConfigError("pretrained: finetune starts from a checkpoint: give --pretrained DIR")
    return config


def validate_for_launch(args, world_size: int, command: str = "pretrain") -> None:
    """The config and data checks that need no rank, run by ``--nproc-per-node`` before it starts any."""
    from headless_megatron.data.gpt_dataset import check_data, check_tokenizer_matches_data
    from headless_megatron.data.tokenizer import load_tokenizer
    from headless_megatron.models.registry import validate_config

    config = _config(args, command)
    validate_config(config, world_size)
    check_data(config)
    if config.tokenizer or config.vocab_size:  # otherwise the data's own tokenizer is the run's
        tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
        check_tokenizer_matches_data(config, tokenizer, config.vocab_size or tokenizer.vocab_size)


def run(args, command: str = "pretrain") -> int:
    from headless_megatron.runtime.distributed import destroy_distributed, is_rank_zero
    from headless_megatron.training.loop import NumericalError, pretrain

    try:
        summary = pretrain(_config(args, command))
    except NumericalError as error:
        # Not the user's input, but a diverged run is explained by its one line, not a traceback.
        print(f"headless-megatron {command}: error: {error}", file=sys.stderr)
        return 1
    reporting = is_rank_zero()
    destroy_distributed()
    if reporting:
        print(f"trained {summary.iterations} iterations | final loss {summary.final_loss:.4f}"
              + (f" | val loss {summary.val_loss:.4f}" if summary.val_loss is not None else "")
              + (f" | skipped {summary.skipped_iterations}" if summary.skipped_iterations else "")
              + (f" | stopped by {summary.stopped_by}" if summary.stopped_by else ""))
        if summary.checkpoint:
            print(f"checkpoint: {summary.checkpoint}")
        if summary.metrics:
            print(f"metrics: {summary.metrics}")
    return 0
