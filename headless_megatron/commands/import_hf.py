"""``headless-megatron import-hf``: a Hugging Face model (Llama, MegatronBert) -> a ``torch_dist``
checkpoint of ours.

    headless-megatron import-hf --model hf/headless-160m --output runs/from_hf
    headless-megatron import-hf --model meta-llama/Llama-3.2-1B --output runs/llama1b \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

then train from it with ``--pretrained runs/llama1b`` (or ``--load runs/llama1b --finetune``). The
checkpoint is written by TP x PP local CPU ranks that this command starts itself (do not launch it
with torchrun). A model that cannot be imported prints ``headless-megatron import-hf: error:
<message>``, exits with status 2 and writes nothing. The conversion is
``headless_megatron.convert.importer``.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR_OR_NAME",
                        help="Hugging Face model directory (config.json, safetensors, tokenizer) or Hub name")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="save directory to write (iter_0000000/, latest_checkpointed_iteration.txt, tokenizer/)")
    parser.add_argument("--tensor-model-parallel-size", type=_positive_int, default=1, metavar="N",
                        help="TP layout of the written checkpoint (default: 1; it reshards on load anyway)")
    parser.add_argument("--pipeline-model-parallel-size", type=_positive_int, default=1, metavar="N",
                        help="PP layout of the written checkpoint (default: 1)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer to use (default: the model directory's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output")


def run(args) -> int:
    from headless_megatron.convert.importer import import_hf
    from headless_megatron.errors import UsageError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("starts its own ranks; drop --nproc-per-node (and torchrun)")
    result = import_hf(
        args.model, args.output, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
        tokenizer=args.tokenizer, overwrite=args.overwrite,
    )
    print(f"import-hf: wrote {result.checkpoint} ({result.architecture}, TP {result.tensor_model_parallel_size} x "
          f"PP {result.pipeline_model_parallel_size}, vocabulary {result.vocab_size}); train from it with "
          f"--pretrained {result.output}")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)
