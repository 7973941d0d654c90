"""Import: a Hugging Face Llama becomes a checkpoint at a chosen layout that Megatron loads with the same
logits, and exporting it again gives back every tensor exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from data_fixtures import tiny_builtin_dataset
from local_ranks import run_on_ranks
from safetensors.torch import load_file, save_file
from test_convert_export import LOGITS_TOLERANCE, TOKENS, VOCAB, lock_holder, megatron_logits, training_argv
from transformers import GPTNeoXConfig, LlamaConfig, LlamaForCausalLM

from headless_megatron.cli import main
from headless_megatron.config import parse_config
from headless_megatron.convert.export import export_hf
from headless_megatron.convert.hf_weights import SafetensorsWeights
from headless_megatron.data.tokenizer import tokenizer_for_dataset
from headless_megatron.runtime.directory_lock import beside

TP2_PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]


def random_llama(directory, tokenizer, tie: bool, max_shard_size: str = "50GB") -> None:
    """A tiny LlamaForCausalLM (grouped-query attention, every weight random, norms included) and its tokenizer."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        bos_token_id=None, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1).add_(1.0 if parameter.dim() == 1 else 0.0)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    tokenizer.save(directory)


@pytest.fixture(scope="module")
def tokenizer(topics_dataset):
    return tokenizer_for_dataset(topics_dataset)


@pytest.fixture(scope="module")
def untied_model(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "untied"
    random_llama(directory, tokenizer, tie=False)
    return directory


@pytest.fixture(scope="module")
def imported(untied_model, tmp_path_factory):
    """The untied model imported by the command at TP2 x PP2."""
    output = tmp_path_factory.mktemp("runs") / "from_hf"
    assert main(["import-hf", "--model", str(untied_model), "--output", str(output), *TP2_PP2]) == 0
    return output


def assert_same_tensors(original_directory, exported_directory) -> None:
    original, exported = SafetensorsWeights(original_directory), SafetensorsWeights(exported_directory)
    assert sorted(exported.names()) == sorted(original.names())
    for name in original.names():
        assert exported(name).dtype == original(name).dtype and torch.equal(exported(name), original(name)), name


def test_the_checkpoint_is_a_training_checkpoint_at_the_chosen_layout(imported):
    assert (imported / "latest_checkpointed_iteration.txt").read_text() == "0\n"
    assert (imported / "tokenizer" / "tokenizer.json").is_file()
    iteration = imported / "iter_0000000"
    assert len(list(iteration.glob("__*.distcp"))) >= 4  # written by 4 ranks
    common = torch.load(iteration / "common.pt", weights_only=True)
    config = common["config"]
    assert (config["tensor_model_parallel_size"], config["pipeline_model_parallel_size"]) == (2, 2)
    assert (config["num_query_groups"], config["ffn_hidden_size"], config["vocab_size"]) == (2, 96, VOCAB)
    assert config["untie_embeddings_and_output_weights"] is True and config["loss"] == "ce"
    assert config["tokenizer"] == str((imported / "tokenizer").resolve())
    assert common["iteration"] == 0 and common["consumed_train_samples"] == 0


def test_megatron_loads_it_with_the_logits_of_the_hf_model(imported, untied_model):
    expected = LlamaForCausalLM.from_pretrained(untied_model, dtype=torch.float32)(TOKENS).logits.detach()
    logits = run_on_ranks(megatron_logits, 1, args=([str(imported)], TOKENS), timeout=300)[0][str(imported)]
    worst = (logits[..., :VOCAB] - expected).abs().max().item()
    print(f"imported at TP2xPP2: max |Megatron - HF| logit difference {worst:.2e}")
    assert worst <= LOGITS_TOLERANCE
    assert not logits[..., VOCAB:].any()  # the padding rows of the output layer are zero


def trainer_start_weights(argv: list[str]) -> dict[str, torch.Tensor]:
    """On one rank: the embedding and output layer a training run starts from."""
    from headless_megatron.training.loop import start_trainer

    stage = start_trainer(parse_config(argv)).model.module
    return {"embedding": stage.embedding.word_embeddings.weight.detach(), "head": stage.output_layer.weight.detach()}


def test_fine_tuning_starts_from_the_imported_weights(imported, untied_model, topics_dataset):
    argv = training_argv(topics_dataset, imported.parent / "finetuned", "--pretrained", str(imported), "--loss", "ce",
                         "--untie-embeddings-and-output-weights", "--ffn-hidden-size", "96")
    start = run_on_ranks(trainer_start_weights, 1, args=(argv,), timeout=300)[0]
    weights = load_file(untied_model / "model.safetensors")
    assert torch.equal(start["embedding"][:VOCAB], weights["model.embed_tokens.weight"])
    assert torch.equal(start["head"][:VOCAB], weights["lm_head.weight"])


def test_import_then_export_reproduces_every_tensor(imported, untied_model, tmp_path):
    result = export_hf(imported, tmp_path / "again")
    assert result.mode == "lm"
    assert_same_tensors(untied_model, result.output)
    original, exported = (json.loads((d / "config.json").read_text()) for d in (untied_model, result.output))
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "eos_token_id"):
        assert exported[key] == original[key], key


def test_a_sharded_tied_model_round_trips_at_the_default_layout_and_overwrites_its_earlier_import(tokenizer, tmp_path):
    random_llama(tmp_path / "tied", tokenizer, tie=True, max_shard_size="60KB")
    assert len(json.loads((tmp_path / "tied" / "model.safetensors.index.json").read_text())["weight_map"]) == 38
    assert len(list((tmp_path / "tied").glob("model-*-of-*.safetensors"))) >= 3
    run = tmp_path / "run"
    assert main(["import-hf", "--model", str(tmp_path / "tied"), "--output", str(run), "--tensor-model-parallel-size",
                 "2"]) == 0
    assert main(["import-hf", "--model", str(tmp_path / "tied"), "--output", str(run), "--overwrite"]) == 0
    config = torch.load(run / "iter_0000000" / "common.pt", weights_only=True)["config"]
    assert config["untie_embeddings_and_output_weights"] is False and config["tensor_model_parallel_size"] == 1
    exported = export_hf(run, tmp_path / "again", max_shard_size="60KB").output
    assert (exported / "model.safetensors.index.json").is_file()
    assert_same_tensors(tmp_path / "tied", exported)


def test_bf16_weights_are_stored_exactly_in_float32(tokenizer, tmp_path):
    random_llama(tmp_path / "fp32", tokenizer, tie=False)
    fp32 = load_file(tmp_path / "fp32" / "model.safetensors")
    bf16 = {name: tensor.to(torch.bfloat16) for name, tensor in fp32.items()}
    (tmp_path / "bf16").mkdir()
    save_file(bf16, tmp_path / "bf16" / "model.safetensors", metadata={"format": "pt"})
    for path in (tmp_path / "fp32").iterdir():  # the config and the tokenizer
        if path.suffix != ".safetensors":
            (tmp_path / "bf16" / path.name).write_bytes(path.read_bytes())
    assert main(["import-hf", "--model", str(tmp_path / "bf16"), "--output", str(tmp_path / "run"), *TP2_PP2]) == 0
    exported = SafetensorsWeights(export_hf(tmp_path / "run", tmp_path / "again", dtype=torch.float32).output)
    assert sorted(exported.names()) == sorted(bf16)
    for name, tensor in bf16.items():
        assert exported(name).dtype == torch.float32 and torch.equal(exported(name), tensor.float()), name


def test_the_model_read_and_other_directories_are_never_replaced(untied_model, tmp_path, capsys):
    model_files = sorted(p.name for p in untied_model.iterdir())
    for output, message in [(untied_model, f"output {untied_model}: is the model directory"),
                            (untied_model / "run", "is inside the model directory"),
                            (untied_model.parent, "contains the model directory")]:
        assert main(["import-hf", "--model", str(untied_model), "--output", str(output), "--overwrite"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, error
    assert sorted(p.name for p in untied_model.iterdir()) == model_files
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "metrics.jsonl").write_text("{}\n")
    assert main(["import-hf", "--model", str(untied_model), "--output", str(trained), "--overwrite"]) == 2
    assert "not an earlier import: it also holds metrics.jsonl" in capsys.readouterr().err
    assert (trained / "metrics.jsonl").read_text() == "{}\n"


# ---- Models that cannot be imported: a clear message, nothing written ----


def assert_fails_cleanly(argv: list[str], message: str, output, capsys) -> str:
    """Runs import-hf, which must fail with one line holding ``message`` and write nothing; returns the line."""
    assert main(["import-hf", *argv, "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("headless-megatron import-hf: error: ") and error.count("\n") == 1, error
    assert message in error, error
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*")), "something was written"
    return error.removeprefix("headless-megatron import-hf: error: ").removesuffix("\n")


def test_other_architectures_and_incomplete_directories_are_refused(untied_model, tmp_path, capsys):
    output = tmp_path / "out"
    assert_fails_cleanly(["--model", str(tmp_path / "nope")], "no such model directory", output, capsys)
    neox = tmp_path / "neox"
    GPTNeoXConfig().save_pretrained(neox)
    assert_fails_cleanly(["--model", str(neox)], "model_type gpt_neox cannot be imported; supported: llama, qwen2, "
                         "gpt2, mistral, megatron-bert, bert", output, capsys)
    bare = tmp_path / "bare"
    LlamaConfig.from_pretrained(untied_model).save_pretrained(bare)
    assert_fails_cleanly(["--model", str(bare)], "no tokenizer: ", output, capsys)
    assert_fails_cleanly(
        ["--model", str(bare), "--tokenizer", str(untied_model)], "no model.safetensors", output, capsys
    )


def test_weights_that_do_not_match_the_config_are_refused(untied_model, tmp_path, capsys):
    output = tmp_path / "out"
    weights = load_file(untied_model / "model.safetensors")
    changed = tmp_path / "changed"
    LlamaConfig.from_pretrained(untied_model).save_pretrained(changed)
    save_file({name: t for name, t in weights.items() if name != "model.layers.3.mlp.up_proj.weight"},
              changed / "model.safetensors")
    argv = ["--model", str(changed), "--tokenizer", str(untied_model)]
    assert_fails_cleanly(argv, "the weights lack model.layers.3.mlp.up_proj.weight", output, capsys)
    save_file({**weights, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, changed / "model.safetensors")
    assert_fails_cleanly(argv, "no place for: model.layers.0.self_attn.q_proj.bias", output, capsys)


def test_layouts_the_model_cannot_split_into_are_refused(untied_model, tmp_path, capsys):
    assert_fails_cleanly(["--model", str(untied_model), "--tensor-model-parallel-size", "4"],
                         "num_query_groups: 2 is not divisible by tensor_model_parallel_size 4", tmp_path / "out",
                         capsys)
    assert_fails_cleanly(["--model", str(untied_model), "--pipeline-model-parallel-size", "3"],
                         "num_layers: 4 is not divisible by pipeline_model_parallel_size 3", tmp_path / "out", capsys)


def test_a_tokenizer_with_more_ids_than_the_embedding_is_refused_and_one_with_fewer_accepted(untied_model, tmp_path,
                                                                                            capsys):
    def trained_tokenizer(vocab_size: int):
        prefix = tiny_builtin_dataset(tmp_path / f"data{vocab_size}", vocab_size=vocab_size, corpus="python-topics")
        return tokenizer_for_dataset(prefix).save(tmp_path / f"tokenizer{vocab_size}")

    larger = trained_tokenizer(2 * VOCAB)
    message = assert_fails_cleanly(["--model", str(untied_model), "--tokenizer", str(larger)], "", tmp_path / "out",
                                   capsys)
    assert message == (f"--tokenizer {larger}: the tokenizer has {2 * VOCAB} ids but the model's vocab_size is "
                       f"{VOCAB}; give the tokenizer the model was trained with (at most {VOCAB} ids) with --tokenizer")
    smaller = trained_tokenizer(300)
    assert main(["import-hf", "--model", str(untied_model), "--tokenizer", str(smaller), "--output",
                 str(tmp_path / "out")]) == 0
    assert f"vocabulary {VOCAB}" in capsys.readouterr().out


def test_a_truncated_weight_file_is_named(untied_model, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(untied_model, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    message = assert_fails_cleanly(["--model", str(damaged)], "", tmp_path / "out", capsys)
    assert message == (f"{weights}: not a complete safetensors file (Error while deserializing header: incomplete "
                       "metadata, file not fully covered); download or save the model again")


def test_an_output_that_another_conversion_writes_is_refused(untied_model, tmp_path, capsys):
    output = tmp_path / "out"
    with beside(output, "another import") as lock:
        assert main(["import-hf", "--model", str(untied_model), "--output", str(output)]) == 2
        assert capsys.readouterr().err == (f"headless-megatron import-hf: error: output {output}: in use by "
                                           f"{lock_holder(lock)}; wait for it to end, or give this one another "
                                           "directory\n")
        assert [p.name for p in tmp_path.iterdir()] == [lock.lock_file.name]
