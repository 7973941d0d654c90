"""``headless-megatron export-hf``: a checkpoint of ours -> a Hugging Face model directory
(``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``GPT2LMHeadModel`` or ``MistralForCausalLM`` for
decoders; ``MegatronBertForMaskedLM`` or ``BertForMaskedLM``, or their encoder alone, for encoders).

    headless-megatron export-hf --checkpoint runs/gpt_headless_160m --output hf/headless-160m
    headless-megatron export-hf --checkpoint runs/ft --output hf/ft --mode lm --iteration 10000 --dtype bfloat16
    headless-megatron export-hf --checkpoint runs/ft --output hf/ft --mode lm --push-to-hub me/ft --private

Runs in this one process on CPU, whatever TP/PP layout saved the checkpoint (no ranks, no GPU),
reading, converting and writing one tensor at a time (memory: about one weight file of
``--max-shard-size`` plus twice the largest tensor, whatever the model's size). ``--output`` must be
a directory of its own (never the run read, inside it or around it); ``--overwrite`` replaces only an
earlier export. A
checkpoint that cannot be exported prints ``headless-megatron export-hf: error: <message>``, exits
with status 2 and writes nothing. The conversion itself is ``headless_megatron.convert.export``.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_UPLOAD_FAILED = 1
DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from headless_megatron.convert.export import DEFAULT_MAX_SHARD_SIZE, MODES

    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a save directory (its latest iteration) or one iter_NNNNNNN directory")
    parser.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face model directory to write")
    parser.add_argument("--mode", choices=MODES,
                        help="add_head: a decoder with its input embeddings as LM head (a headless model used as an "
                             "LM); lm: a decoder with its trained head (vanilla or fine-tuned); mlm: an encoder "
                             "(with its MLM head, or alone when headless). Default: add_head for a CWT decoder, "
                             "lm for another decoder, mlm for an encoder")
    parser.add_argument("--model-type", metavar="TYPE",
                        help="the Hugging Face model_type to write: llama, qwen2, gpt2 or mistral for a decoder, "
                             "megatron-bert or bert for an encoder. Default: the first of these that represents the "
                             "checkpoint (mistral only when asked: such a checkpoint is also a llama)")
    parser.add_argument("--iteration", type=_non_negative_int, metavar="N",
                        help="export iteration N of the save directory instead of the latest")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer to ship (default: the config's tokenizer, else the training dataset's)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help="largest weight file, as for transformers' save_pretrained: 5GB, 500MB (decimal units) "
                             "or bytes; a larger model is split into model-0000k-of-0000n.safetensors with "
                             f"model.safetensors.index.json (default: {DEFAULT_MAX_SHARD_SIZE}, the installed "
                             "transformers' default). Memory needed: about one file plus twice the largest tensor")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it is an earlier export (a directory this command wrote); "
                             "anything else is refused")
    parser.add_argument("--push-to-hub", metavar="NAME",
                        help="then upload the directory to this Hugging Face Hub repository (created if missing)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")


def run(args) -> int:
    import torch

    from headless_megatron.convert.export import export_hf, push_to_hub
    from headless_megatron.errors import UsageError, first_line

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("runs in one process; drop --nproc-per-node (and torchrun)")
    if args.private and not args.push_to_hub:
        raise UsageError("--private applies to --push-to-hub")
    result = export_hf(
        args.checkpoint, args.output, mode=args.mode, model_type=args.model_type, iteration=args.iteration,
        tokenizer=args.tokenizer,
        dtype=getattr(torch, args.dtype) if args.dtype else None, overwrite=args.overwrite,
        max_shard_size=args.max_shard_size, progress=lambda line: print(f"export-hf: {line}", flush=True),
    )
    print(f"export-hf: wrote {result.output} ({result.architecture}, mode {result.mode}, iteration "
          f"{result.iteration}, {result.parameters:,} parameters, vocabulary {result.vocab_size}, "
          f"{result.weight_files} weight file{'s' if result.weight_files > 1 else ''})")
    if args.push_to_hub:
        try:
            url = push_to_hub(result.output, args.push_to_hub, private=args.private)
        except Exception as error:  # noqa: BLE001 - network and authentication errors of huggingface_hub
            print(f"headless-megatron export-hf: error: uploading to {args.push_to_hub} failed: {first_line(error)}",
                  file=sys.stderr)
            return EXIT_UPLOAD_FAILED
        print(f"export-hf: uploaded to {url}")
    return 0


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)
