"""``headless-megatron eval glue``: GLUE fine-tuning of a tiny ``megatron-bert`` encoder, offline.

Tiny CoLA-, STS-B- and MNLI-shaped datasets are written here in GLUE's own TSV layout (CoLA without
header, STS-B with it) and as JSON lines with the Hub's field names and label names (MNLI).
"""

from __future__ import annotations

import json
import os
import random
import statistics

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from headless_megatron.cli import main
from headless_megatron.evaluate import EvaluationError
from headless_megatron.evaluate.glue.data import NLI3, TASKS, load_task_data

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ate", "bone", "good", "movie", "bad", "film", "red", "car",
         "drove", "fast"]
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


def write_data(root, rng: random.Random) -> None:
    (root / "CoLA").mkdir(parents=True)
    (root / "STS-B").mkdir()
    (root / "mnli").mkdir()
    for split, count in (("train", 24), ("dev", 12)):
        with (root / "CoLA" / f"{split}.tsv").open("w") as stream:
            for i in range(count):
                stream.write(f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\t{sentence(rng)}\n")
        with (root / "STS-B" / f"{split}.tsv").open("w") as stream:
            stream.write(STSB_HEADER)
            for i in range(count):
                stream.write(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{sentence(rng)}\t{sentence(rng)}\t"
                             f"{rng.uniform(0, 5):.3f}\n")
    for split, count in (("train", 24), ("validation_matched", 9), ("validation_mismatched", 9)):
        with (root / "mnli" / f"{split}.jsonl").open("w") as stream:
            for i in range(count):
                label = NLI3[i % 3] if i % 2 else i % 3  # names and ids both accepted
                stream.write(json.dumps({"premise": sentence(rng), "hypothesis": sentence(rng), "label": label,
                                         "idx": i}) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import torch
    import transformers

    from headless_megatron.data.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp("eval_glue")
    rng = random.Random(0)
    tokenizer = train_tokenizer("bpe", 300, [sentence(rng) for _ in range(200)])
    model_dir = root / "model"
    tokenizer.save(model_dir)
    config = transformers.MegatronBertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad,
    )
    torch.manual_seed(0)
    transformers.MegatronBertForMaskedLM(config).save_pretrained(model_dir)
    write_data(root / "data", rng)
    return root, model_dir, root / "data"


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("headless-megatron eval: error: "), error
    return error


def test_glue_metrics_per_task_and_average(workspace, capsys):
    root, model_dir, data = workspace
    output = root / "out"
    argv = ["eval", "glue", "--model", str(model_dir), "--tasks", "cola,stsb,mnli", "--data-dir", str(data),
            "--seeds", "2", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "glue cola seed 0: best MCC" in printed and "| **average** (without RTE) |" in printed
    results = json.loads((output / "glue.json").read_text())
    tasks = results["tasks"]
    assert {name: tasks[name]["metric"] for name in tasks} == {"cola": "mcc", "stsb": "spearman", "mnli": "accuracy"}
    assert results["seeds"] == [0, 1] and results["settings"]["balanced_ce"] is True
    for task in tasks.values():
        runs = task["runs"]
        assert [run["seed"] for run in runs] == [0, 1]
        for run in runs:
            assert [epoch["epoch"] for epoch in run["epochs"]] == [1, 2]
            assert run["score"] == max(epoch["score"] for epoch in run["epochs"])  # best epoch
            assert -100 <= run["score"] <= 100
        assert task["score"] == pytest.approx(statistics.fmean(run["score"] for run in runs))
        assert task["std"] == pytest.approx(statistics.stdev(run["score"] for run in runs))
    mnli = tasks["mnli"]
    assert {"matched", "mismatched"} <= set(mnli) and {"matched", "mismatched"} <= set(mnli["runs"][0])
    for run in mnli["runs"]:  # the MNLI score is the accuracy on both validation sets together (equal sizes)
        assert run["score"] == pytest.approx((run["matched"] + run["mismatched"]) / 2)
    assert tasks["cola"]["runs"][0]["train_examples"] == 24
    average = results["average"]
    assert average["tasks"] == ["cola", "stsb", "mnli"] and average["excluded"] == []
    assert average["score"] == pytest.approx(statistics.fmean(tasks[n]["score"] for n in tasks))
    table = (output / "glue.md").read_text()
    assert "| cola | MCC |" in table and "| stsb | Spearman |" in table and "| mnli-mm | accuracy |" in table


def test_glue_files_and_errors(workspace, tmp_path, capsys):
    _, model_dir, data = workspace
    mnli_tsv = tmp_path / "MNLI"
    mnli_tsv.mkdir()
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    rows = ["0\t1\t1e\tfiction\tA man.\tA person.\tentailment\tentailment\n",
            "1\t2\t2n\tfiction\tA \"quoted\" man.\tNobody.\tcontradiction\tcontradiction\n",
            "2\t3\t3c\tfiction\tbroken line\n"]
    for split in ("train", "dev_matched", "dev_mismatched"):
        (mnli_tsv / f"{split}.tsv").write_text(header + "".join(rows))
    examples = load_task_data(TASKS["mnli"], tmp_path)
    assert examples["validation_mismatched"].texts == [["A man.", 'A "quoted" man.'], ["A person.", "Nobody."]]
    assert examples["train"].labels == [0, 2]
    cola = load_task_data(TASKS["cola"], data)["validation"]
    assert len(cola) == 12 and cola.labels[:2] == [0, 1]

    (mnli_tsv / "train.tsv").write_text(header + "0\t1\t1\tg\tx\ty\tmaybe\tmaybe\n")
    with pytest.raises(EvaluationError, match=r"train.tsv: line/record 2: label 'maybe' is not a class id 0-2"):
        load_task_data(TASKS["mnli"], tmp_path)

    common = ["--model", str(model_dir), "--output", str(tmp_path / "o")]
    assert "unknown GLUE task wnli" in error_of(["eval", "glue", *common, "--tasks", "cola,wnli"], capsys)
    assert "no folder sst2/ or SST-2/ for task sst2" in error_of(
        ["eval", "glue", *common, "--tasks", "sst2", "--data-dir", str(data)], capsys)
    assert "--model /no/model: no such directory" in error_of(
        ["eval", "glue", "--model", "/no/model", "--output", "o", "--tasks", "cola"], capsys)
    assert "give --data-dir with local files" in error_of(  # HF_DATASETS_OFFLINE=1: the Hub is out of reach
        ["eval", "glue", *common, "--tasks", "cola"], capsys)
    assert not (tmp_path / "o").exists()
