"""``headless-megatron eval lm``: the LM Evaluation Harness on a tiny Llama-style decoder, offline.

The model is a random ``LlamaForCausalLM`` with a BPE tokenizer of ours (what ``export-hf``
writes: eos ``<|endoftext|>``, pad ``<|pad|>``, no bos), and the task a few dozen cloze items
written here as a local task YAML over a JSON-lines file. The harness's accuracy is checked against
log-likelihoods computed directly with ``transformers``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from headless_megatron.cli import main

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "an old man"]
VERBS = [("sat on the", "mat"), ("ate the", "bone"), ("read a", "book"), ("drank some", "water"),
         ("opened the", "door"), ("played the", "piano")]
TASK_YAML = """task: tiny_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def cloze_items() -> list[dict]:
    items = []
    endings = [ending for _, ending in VERBS]
    for i, subject in enumerate(SUBJECTS):
        for j, (verb, ending) in enumerate(VERBS):
            wrong = [endings[(j + 1) % len(endings)], endings[(j + 3) % len(endings)]]
            answer = (i + j) % 3
            choices = wrong[:answer] + [ending] + wrong[answer:]
            items.append({"context": f"{subject} {verb}", "choices": choices, "answer": answer})
    return items  # 36 items


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import torch
    import transformers

    from headless_megatron.data.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp("eval_lm")
    documents = [f"{s} {v} {e} ." for s in SUBJECTS for v, e in VERBS] * 4
    tokenizer = train_tokenizer("bpe", 300, documents)
    model_dir = root / "model"
    tokenizer.save(model_dir)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    tasks = root / "tasks"
    tasks.mkdir()
    data = tasks / "cloze.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in cloze_items()))
    (tasks / "tiny_cloze.yaml").write_text(TASK_YAML.format(data=data))
    return root, model_dir, tasks


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("headless-megatron eval: error: "), error
    return error


def direct_accuracy(model_dir, items) -> float:
    """Multiple-choice accuracy the way the harness defines it: the choice whose continuation
    ``" " + choice`` has the highest summed log-probability after the context."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = 0
    for item in items:
        scores = []
        for choice in item["choices"]:
            context = tokenizer.encode(item["context"])
            whole = tokenizer.encode(item["context"] + " " + choice)
            continuation = whole[len(context):]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
            positions = range(len(context) - 1, len(whole) - 1)
            scores.append(sum(logits[p, t].item() for p, t in zip(positions, continuation)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    return correct / len(items)


def test_local_task_accuracy_limit_and_tokenizer_settings(workspace, capsys):
    root, model_dir, tasks = workspace
    output = root / "out"
    argv = ["eval", "lm", "--model", str(model_dir), "--tasks", "tiny_cloze", "--include-path", str(tasks),
            "--limit", "12", "--batch-size", "4", "--bootstrap-iters", "10", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| tiny_cloze | acc |" in printed
    results = json.loads((output / "eval_lm.json").read_text())
    accuracy = results["results"]["tiny_cloze"]["acc,none"]
    assert results["n-samples"]["tiny_cloze"] == {"original": 36, "effective": 12}  # --limit
    assert accuracy == pytest.approx(direct_accuracy(model_dir, cloze_items()[:12]))
    assert isinstance(results["results"]["tiny_cloze"]["acc_stderr,none"], float)
    # Our tokenizer has no bos: contexts start as in training, after the end-of-document token.
    assert results["headless_megatron"]["prefix_token_id"] == 0
    assert results["eot_token_id"] == 0 and results["tokenizer_pad_token"][0] == "<|pad|>"
    table = (output / "eval_lm.md").read_text()
    assert "| task | metric | value | stderr |" in table and f"| tiny_cloze | acc | {accuracy:.4f} |" in table


def test_missing_model_task_and_eos(workspace, capsys, tmp_path):
    from headless_megatron.evaluate import EvaluationError
    from headless_megatron.evaluate.lm_eval import check_task_names

    _, model_dir, tasks = workspace
    common = ["--tasks", "tiny_cloze", "--include-path", str(tasks), "--output", str(tmp_path / "o")]
    assert "--model /no/such/model: no such directory" in error_of(
        ["eval", "lm", "--model", "/no/such/model", *common], capsys)
    assert "not a Hugging Face model directory (no config.json)" in error_of(
        ["eval", "lm", "--model", str(tasks), *common], capsys)
    assert "--include-path /no/tasks: no such directory" in error_of(
        ["eval", "lm", "--model", str(model_dir), "--tasks", "x", "--include-path", "/no/tasks",
         "--output", str(tmp_path / "o")], capsys)
    with pytest.raises(EvaluationError, match=r"unknown task tiny_clozee .*did you mean tiny_cloze\?"):
        check_task_names(["tiny_cloze", "tiny_clozee"], ["tiny_cloze", "lambada_openai"], str(tasks))
    # A tokenizer without an end-of-text token cannot be used by the harness: said before any work.
    broken = tmp_path / "no_eos"
    shutil.copytree(model_dir, broken)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = broken / name
        if path.exists():
            settings = json.loads(path.read_text())
            settings.pop("eos_token", None)
            path.write_text(json.dumps(settings))
    assert "has no eos (end-of-text) token" in error_of(["eval", "lm", "--model", str(broken), *common], capsys)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["eval", "lm", "--model", str(model_dir), "--output", "o", "--limit", "1.5"])
    assert "expected an integer >= 1 or a fraction" in capsys.readouterr().err
