"""generate: an exported decoder continues a prompt through transformers."""

import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from headless_megatron.data.tokenizer_training import train_tokenizer


def test_generate_prints_the_prompt_and_a_continuation(tmp_path):
    tokenizer = train_tokenizer("bpe", 300, ["the interpreter reads the source", "and runs it line by line"] * 20)
    tokenizer.save(tmp_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    done = subprocess.run([sys.executable, "-m", "headless_megatron", "generate", "--model", str(tmp_path),
                           "--prompt", "the interpreter", "--max-new-tokens", "5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the interpreter") and len(done.stdout.strip()) > len("the interpreter")


def test_a_directory_without_a_model_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "headless_megatron", "generate", "--model", str(tmp_path),
                           "--prompt", "x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no config.json" in done.stderr
