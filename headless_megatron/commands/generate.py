"""``headless-megatron generate --model HF_DIR --prompt TEXT``: continue a prompt with an exported
decoder through ``transformers`` (the check that an export is a working language model)."""

from __future__ import annotations

from pathlib import Path

from headless_megatron.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a Hugging Face model directory (e.g. from export-hf)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    problem = None
    if not (Path(args.model) / "config.json").is_file():
        problem = f"--model {args.model}: no config.json (not a model directory)"
    elif not args.prompt:
        problem = "--prompt: expected some text to continue, got an empty prompt"
    elif args.max_new_tokens < 1:
        problem = f"--max-new-tokens {args.max_new_tokens}: expected a positive number of tokens"
    elif args.temperature < 0:
        problem = f"--temperature {args.temperature}: expected 0 (greedy) or a positive temperature"
    if problem:
        raise UsageError(problem)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id, **sampling)
    print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0
