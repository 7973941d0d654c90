"""Export end to end: tiny decoders trained at TP2, PP2 and TP2xPP2 become LlamaForCausalLM models whose
logits are Megatron's, for a headless model (add_head) and a vanilla one with its own head (lm)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from data_fixtures import TOPICS_VOCAB, tiny_builtin_dataset
from file_systems import small_disk
from local_ranks import run_on_ranks

from headless_megatron.cli import main
from headless_megatron.config import config_from_dict, parse_config
from headless_megatron.config.megatron import transformer_config
from headless_megatron.convert import ConversionError
from headless_megatron.convert.export import export_hf
from headless_megatron.data.tokenizer import tokenizer_for_dataset
from headless_megatron.runtime.directory_lock import beside
from headless_megatron.training.loop import pretrain

TINY = "configs/gpt_headless_tiny.yaml"
LAYOUTS = {  # name: (world size, flags)
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "tp2_pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
}
OBJECTIVES = {  # export mode: the training that gives a checkpoint to export that way
    "add_head": ["--loss", "cwt"],
    "lm": ["--loss", "ce", "--untie-embeddings-and-output-weights"],
}
VOCAB = TOPICS_VOCAB  # the tokenizer's size; the checkpoints pad it to 512
TOKENS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
LOGITS_TOLERANCE = 1e-4


def training_argv(dataset: str, save: Path, *flags: str) -> list[str]:
    """Three iterations of the tiny recipe with grouped-query attention (4 heads, 2 key/value groups), all
    documents in the training split (the 79 of python-topics leave Megatron an empty test split)."""
    return ["--config", TINY, "--data-path", dataset, "--split", "1", "--save", str(save), "--train-iters", "3",
            "--lr-warmup-iters", "1", "--eval-iters", "0", "--num-workers", "0", "--num-query-groups", "2",
            "--log-interval", "3", *flags]


def pretrain_each(argvs: list[list[str]]) -> None:
    """On every rank: train one run after the other (one rank start-up for several checkpoints)."""
    for argv in argvs:
        pretrain(parse_config(argv))


def megatron_logits(save_directories: list[str], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """On one rank: each checkpoint loaded (resharded to TP1 PP1) into Megatron's GPTModel, as the
    training loop loads it, and its logits ``[b, s, padded vocabulary]`` for ``tokens``. A headless
    checkpoint is tied, so GPTModel's logits are hidden states x input embeddings: the add_head LM."""
    import dataclasses

    from headless_megatron.config import ParallelLayout
    from headless_megatron.data.tokenizer import load_tokenizer, tokenizer_for_dataset
    from headless_megatron.models.gpt.model import build_gpt_stage
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import load_checkpoint
    from headless_megatron.training.run_directory import latest_checkpoint

    init_distributed(ParallelLayout())
    logits = {}
    for save in save_directories:
        path = latest_checkpoint(save)
        saved = config_from_dict(torch.load(path / "common.pt", weights_only=True)["config"])
        config = dataclasses.replace(saved, tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else tokenizer_for_dataset(config.data_path[0])
        model = build_gpt_stage(
            transformer_config(config, "local", on_gpu=False), config.padded_vocab_size(tokenizer.vocab_size),
            config.max_positions, config.seed, position_embedding_type=config.position_embedding_type,
            share_embeddings_and_output_weights=config.share_embeddings_and_output_weights,
        )
        load_checkpoint(path, [model], load_rng=False)
        model.eval()
        with torch.no_grad():
            logits[save] = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
    return logits


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model, loading = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched tensor
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def checkpoints(topics_dataset, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Save directories by (layout, mode), trained by the real loop (each world size started once)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {(layout, mode): root / f"{layout}_{mode}" for layout in LAYOUTS for mode in OBJECTIVES}
    argvs_by_world = defaultdict(list)
    for (layout, mode), save in runs.items():
        world, flags = LAYOUTS[layout]
        argvs_by_world[world].append(training_argv(topics_dataset, save, *flags, *OBJECTIVES[mode]))
    for world, argvs in argvs_by_world.items():
        run_on_ranks(pretrain_each, world, args=(argvs,), timeout=900)
    return runs


@pytest.fixture(scope="module")
def reference_logits(checkpoints) -> dict[str, torch.Tensor]:
    return run_on_ranks(megatron_logits, 1, args=([str(path) for path in checkpoints.values()], TOKENS), timeout=600)[0]


@pytest.mark.parametrize("mode", list(OBJECTIVES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_exported_logits_equal_megatron_logits(layout, mode, checkpoints, reference_logits, tmp_path):
    save = checkpoints[layout, mode]
    result = export_hf(save, tmp_path / "hf", mode=mode)
    assert (result.mode, result.iteration, result.vocab_size) == (mode, 3, VOCAB)
    logits = hf_logits(result.output, TOKENS)
    expected = reference_logits[str(save)]
    assert expected.shape[-1] == 512 and logits.shape == (*TOKENS.shape, VOCAB)
    worst = (logits - expected[..., :VOCAB]).abs().max().item()
    print(f"{layout} {mode}: max |HF - Megatron| logit difference {worst:.2e}")
    assert worst <= LOGITS_TOLERANCE


def test_command_writes_a_loadable_model_with_tokenizer_and_model_card_and_generates(checkpoints, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "headless"
    assert main(["export-hf", "--checkpoint", str(checkpoints["tp2_pp2", "add_head"]), "--output", str(output)]) == 0
    assert "LlamaForCausalLM, mode add_head, iteration 3" in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json",
    ]
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (config["num_key_value_heads"], config["vocab_size"]) == (2, VOCAB)
    card = (output / "README.md").read_text()
    for expected in ("Contrastive Weight Tying", "temperature 1.0", "mode `add_head`", "cwt_duplicates: count",
                     "num_query_groups: 2", "tensor_model_parallel_size: 2", "3 iterations"):
        assert expected in card, expected
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForCausalLM.from_pretrained(output)
    ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 8)
    assert generated[0, ids.shape[1]] == model(ids).logits[0, -1].argmax()
    assert isinstance(tokenizer.decode(generated[0]), str) and tokenizer.eos_token_id == config["eos_token_id"]


def test_a_chosen_iteration_and_dtype_through_the_tools_script(checkpoints, tmp_path, monkeypatch):
    import runpy

    output = tmp_path / "bf16"
    monkeypatch.setattr("sys.argv", ["convert_checkpoint.py", "--checkpoint", str(checkpoints["pp2", "lm"]),
                                     "--output", str(output), "--iteration", "3", "--dtype", "bfloat16"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path("tools/convert_checkpoint.py", run_name="__main__")
    assert exit_status.value.code == 0
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(ConversionError, match=r"no iteration 7 \(found: iter_0000003\)"):
        export_hf(checkpoints["pp2", "lm"], tmp_path / "other", iteration=7)


# ---- Checkpoints that cannot be exported: a clear message, nothing written ----


def damaged_copy(save: Path, tmp_path: Path, **config_changes) -> Path:
    """A copy of ``save`` whose saved config has ``config_changes`` (a key set to None is removed)."""
    copy = tmp_path / "damaged"
    shutil.copytree(save, copy)
    if config_changes:
        common_file = next(copy.glob("iter_*")) / "common.pt"
        common = torch.load(common_file, weights_only=True)
        common["config"].update(config_changes)
        torch.save(common, common_file)
    return copy


def assert_fails_cleanly(argv: list[str], message: str, output: Path, capsys) -> str:
    """Runs export-hf, which must fail with one line holding ``message`` and write nothing; returns the line."""
    assert main(["export-hf", *argv, "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("headless-megatron export-hf: error: ") and error.count("\n") == 1, error
    assert message in error, error
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*")), "something was written"
    return error.removeprefix("headless-megatron export-hf: error: ").removesuffix("\n")


def lock_holder(lock) -> str:
    """How the lock's message names its holder (this test process): its PID, host and start."""
    lease = json.loads(lock.lock_file.read_text())
    assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    return f"PID {lease['pid']} on {lease['host']} (started {lease['started']})"


def test_incomplete_checkpoints_are_refused(checkpoints, tmp_path, capsys):
    copy = damaged_copy(checkpoints["tp2_pp2", "lm"], tmp_path)
    iteration = copy / "iter_0000003"
    shard = max(iteration.glob("__*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    assert_fails_cleanly(
        ["--checkpoint", str(copy)], f"incomplete checkpoint: {shard.name} is truncated", tmp_path / "out", capsys
    )
    shard.unlink()
    assert_fails_cleanly(
        ["--checkpoint", str(iteration)], f"incomplete checkpoint: {shard.name} is missing", tmp_path / "out", capsys
    )
    (copy / "latest_checkpointed_iteration.txt").write_text("5\n")
    assert_fails_cleanly(["--checkpoint", str(copy)], "names iteration 5, but", tmp_path / "out", capsys)


def test_checkpoints_of_other_models_are_refused(checkpoints, tmp_path, capsys):
    save = checkpoints["tp2", "add_head"]
    foreign = damaged_copy(save, tmp_path / "megatron_lm")
    torch.save({"args": None, "iteration": 3}, foreign / "iter_0000003" / "common.pt")  # Megatron-LM's own trainer
    assert_fails_cleanly(["--checkpoint", str(foreign)], "not a headless-megatron checkpoint", tmp_path / "out", capsys)
    encoder = damaged_copy(save, tmp_path / "bert", model="bert")
    assert_fails_cleanly(["--checkpoint", str(encoder)], "no Hugging Face class holds this bert checkpoint: "
                         "megatron-bert cannot hold normalization RMSNorm, swiglu true, position_embedding_type rope, "
                         "add_bias_linear false", tmp_path / "out", capsys)
    layer_norm = damaged_copy(save, tmp_path / "neox", normalization="LayerNorm", swiglu=False)
    assert_fails_cleanly(["--checkpoint", str(layer_norm)],
                         "no Hugging Face class holds this gpt checkpoint: llama cannot hold normalization LayerNorm, "
                         "swiglu false;", tmp_path / "out", capsys)
    assert_fails_cleanly(["--checkpoint", str(layer_norm), "--model-type", "llama"],
                         "LlamaForCausalLM cannot represent normalization LayerNorm, swiglu false", tmp_path / "out",
                         capsys)
    assert_fails_cleanly(
        ["--checkpoint", str(save), "--mode", "lm"], "this checkpoint is headless", tmp_path / "out", capsys
    )


def test_a_missing_or_wrong_tokenizer_is_refused(checkpoints, tmp_path, capsys):
    moved = damaged_copy(checkpoints["tp2", "lm"], tmp_path / "moved", data_path=[str(tmp_path / "gone_text_document")])
    assert_fails_cleanly(["--checkpoint", str(moved)], "no tokenizer: ", tmp_path / "out", capsys)
    assert_fails_cleanly(["--checkpoint", str(moved)], "(give one with --tokenizer)", tmp_path / "out", capsys)
    smaller = tokenizer_for_dataset(tiny_builtin_dataset(tmp_path / "data", vocab_size=300, corpus="python-topics"))
    assert_fails_cleanly(["--checkpoint", str(moved), "--tokenizer", str(smaller.save(tmp_path / "tokenizer300"))],
                         "the embedding has 512 rows, but a vocabulary of 300 pads to 384", tmp_path / "out", capsys)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(checkpoints, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "512k") as disk:  # the weights take 850 kB: the fifth file fills it
        output = disk / "hf"
        argv = ["--checkpoint", str(checkpoints["tp2", "lm"]), "--max-shard-size", "100KB"]
        message = assert_fails_cleanly(argv, "", output, capsys)
        assert message == (f"output {output}: cannot write it: Error while serializing: I/O error: No space left on "
                           "device (os error 28)")
        assert list(disk.iterdir()) == []


def test_an_output_that_another_conversion_writes_is_refused_until_it_ends(checkpoints, tmp_path, capsys):
    output = tmp_path / "hf"
    argv = ["--checkpoint", str(checkpoints["tp2", "lm"])]
    with beside(output, "another export") as lock:
        assert main(["export-hf", *argv, "--output", str(output)]) == 2
        assert capsys.readouterr().err == (f"headless-megatron export-hf: error: output {output}: in use by "
                                           f"{lock_holder(lock)}; wait for it to end, or give this one another "
                                           "directory\n")
        assert [p.name for p in tmp_path.iterdir()] == [lock.lock_file.name]
    assert main(["export-hf", *argv, "--output", str(output)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # its own lock is gone with it


# ---- Sharded weights: HF's file names and index, split as save_pretrained splits ----


def test_a_small_max_shard_size_splits_the_weights_as_save_pretrained_does(checkpoints, reference_logits, tmp_path):
    import inspect

    from safetensors import safe_open
    from transformers import LlamaForCausalLM, PreTrainedModel

    from headless_megatron.convert.export import DEFAULT_MAX_SHARD_SIZE

    assert (
        DEFAULT_MAX_SHARD_SIZE
        == inspect.signature(PreTrainedModel.save_pretrained).parameters["max_shard_size"].default
    )
    save = checkpoints["tp2_pp2", "lm"]
    lines = []
    result = export_hf(save, tmp_path / "sharded", max_shard_size="100KB", progress=lines.append)
    files = sorted(p.name for p in result.output.glob("*.safetensors"))
    assert result.weight_files == len(files) == len(lines) >= 3
    assert files == [f"model-{k:05d}-of-{len(files):05d}.safetensors" for k in range(1, len(files) + 1)]
    index = json.loads((result.output / "model.safetensors.index.json").read_text())
    assert sorted(index) == ["metadata", "weight_map"] and sorted(set(index["weight_map"].values())) == files
    sizes = {}
    for file in files:
        with safe_open(result.output / file, framework="pt") as weights:
            assert weights.metadata() == {"format": "pt"}
            in_file = {name: weights.get_tensor(name).nbytes for name in weights.keys()}
        assert all(index["weight_map"][name] == file for name in in_file)
        assert sum(in_file.values()) <= 100_000 or len(in_file) == 1  # a tensor above the limit is alone
        sizes.update(in_file)
    assert index["metadata"] == {"total_size": sum(sizes.values()), "total_parameters": result.parameters}
    # transformers loads it, with the same logits as Megatron, and re-saving it gives the same index
    model = LlamaForCausalLM.from_pretrained(result.output, dtype=torch.float32)
    with torch.no_grad():
        logits = model(TOKENS).logits
    assert (logits - reference_logits[str(save)][..., :VOCAB]).abs().max().item() <= LOGITS_TOLERANCE
    model.save_pretrained(tmp_path / "resaved", max_shard_size="100KB")
    resaved = json.loads((tmp_path / "resaved" / "model.safetensors.index.json").read_text())
    assert resaved["metadata"] == index["metadata"] and sorted(resaved["weight_map"]) == sorted(index["weight_map"])
    single = export_hf(save, tmp_path / "single")  # the default fits: one model.safetensors, no index
    assert single.weight_files == 1 and not (single.output / "model.safetensors.index.json").exists()
    assert (single.output / "model.safetensors").is_file()


# ---- The run it reads is never written into or deleted (--output inside, around or equal to it) ----


def test_the_run_read_is_never_the_output_nor_replaced(checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpoints["tp2", "lm"], run)
    (run / "metrics.jsonl").write_text("{}\n")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for checkpoint, output, relation in [
        (run, run, "is the checkpoint"),                        # the README's own example, with the run as output
        (run / "iter_0000003", run, "is the checkpoint"),       # the iteration read, the run around it
        (run / "iter_0000003", run / "iter_0000003", "is the checkpoint"),
        (run, run / "hf", "is inside the checkpoint"),
        (run, tmp_path, "contains the checkpoint"),
    ]:
        for overwrite in (["--overwrite"], []):  # the destructive case first: before the fix it deleted the run
            argv = ["export-hf", "--checkpoint", str(checkpoint), "--output", str(output), *overwrite]
            assert main(argv) == 2, argv
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and f"output {output}: {relation}" in error, error
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_overwrite_replaces_only_an_earlier_export(checkpoints, tmp_path, capsys):
    save = checkpoints["tp2", "lm"]
    export = tmp_path / "hf"
    assert main(["export-hf", "--checkpoint", str(save), "--output", str(export)]) == 0
    assert main(["export-hf", "--checkpoint", str(save), "--output", str(export), "--overwrite",
                 "--max-shard-size", "100KB"]) == 0  # an earlier export: replaced
    assert (export / "model.safetensors.index.json").is_file() and not (export / "model.safetensors").exists()
    other_run = tmp_path / "other_run"
    shutil.copytree(save, other_run)
    (export / "notes.txt").write_text("mine")
    for output, reason in [(other_run, "not an earlier export: it holds directories (iter_0000003)"),
                           (tmp_path / "home", "not an earlier export: no config.json")]:
        output.mkdir(exist_ok=True)
        (output / "thesis.tex").write_text("years of work")
        kept = sorted(p.name for p in output.iterdir())
        capsys.readouterr()
        assert main(["export-hf", "--checkpoint", str(save), "--output", str(output), "--overwrite"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1, error
        assert "--overwrite replaces only an earlier output" in error and reason in error, error
        assert sorted(p.name for p in output.iterdir()) == kept
    (export / "README.md").write_text("# somebody else's model card\n")
    assert main(["export-hf", "--checkpoint", str(save), "--output", str(export), "--overwrite"]) == 2
    assert "no README.md written by headless-megatron export-hf" in capsys.readouterr().err
