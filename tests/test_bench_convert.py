"""The conversion benchmark: a random HF model imported at TP2 x PP2 and exported back bit for bit, its
table; the random directories of each HF class it covers (Llama, GPT-2, BERT, MegatronBert) as
``transformers`` loads them; at the 1B and BERT-base shapes (slow tier, ``pytest -m slow``) with export
and import within the memory bound."""

from __future__ import annotations

import json

import pytest

from headless_megatron.benchmarks.convert import SHAPES, round_trip, write_random_model
from headless_megatron.commands.bench import main_for_tool


def test_the_table_reports_a_sharded_bit_equal_round_trip(capsys):
    assert main_for_tool("convert", ["--shapes", "tiny", "--max-shard-size", "40KB"]) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    cells = dict(zip(columns, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
    assert cells["shape"] == "tiny" and cells["shard GB"] == "0.00"
    assert int(cells["files"]) > 1  # 40 KB files: the embedding alone is 131 KB
    equal, total = map(int, cells["bit-equal"].split("/"))
    assert equal == total == 38  # 4 layers x 9 tensors, the embeddings and the final norm
    assert float(cells["import s"]) > 0 and float(cells["export s"]) > 0


# The shapes' classes at a few kilobytes (the round trips themselves: tests/test_hf_families.py).
TINY_CLASSES = {
    "gpt2-124m": dict(n_embd=32, n_layer=2, n_head=4, n_positions=16),
    "bert-base-uncased": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=16),
    "bert-base": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=16),
    "tiny": dict(num_hidden_layers=2, max_position_embeddings=16),
}


@pytest.mark.parametrize("shape", list(TINY_CLASSES))
def test_the_random_model_is_what_transformers_loads(shape, tmp_path, monkeypatch):
    import torch
    import transformers

    from headless_megatron.convert.hf_weights import SafetensorsWeights

    architecture, values = SHAPES[shape]
    monkeypatch.setitem(SHAPES, shape, (architecture, {**values, **TINY_CLASSES[shape], "vocab_size": 600}))
    directory = tmp_path / "hf"
    sizes = write_random_model(shape, directory, max_shard_bytes=10**9)
    model, info = getattr(transformers, architecture).from_pretrained(directory, output_loading_info=True)
    # A pooler (MegatronBertModel's) is what an import leaves out, so the directory has none: HF adds it.
    assert all(key.startswith("pooler.") for key in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    weights, state = SafetensorsWeights(directory), model.state_dict()
    assert weights.names() == set(sizes)
    for name in weights.names():
        assert torch.equal(weights(name), state[name]), name
    norms = [name for name in sizes if name.endswith(("norm.weight", "LayerNorm.weight", "ln.weight", "ln_1.weight",
                                                      "ln_2.weight", "ln_f.weight"))]
    assert norms and all(abs(weights(name).mean() - 1) < 0.1 for name in norms)
    token_types = [weights(name) for name in sizes if "token_type" in name]
    if architecture == "GPT2LMHeadModel":  # Conv1D: [in, out]
        assert weights("transformer.h.0.mlp.c_fc.weight").shape == (32, 128)
    if architecture == "BertForMaskedLM":  # kept by the import: random, both rows
        assert token_types[0].shape == (2, 32) and token_types[0].std() > 0.01
    if architecture == "MegatronBertModel":  # added to the positions by the import: zero
        assert token_types[0].shape == (1, 32) and not token_types[0].any()


@pytest.fixture(scope="module")
def ranks_start_up(tmp_path_factory) -> int:
    """Bytes: the tiny shape's import peak, which is its ranks' own start-up (interpreters, torch,
    Megatron-Core), as the benchmark's table subtracts it."""
    tiny = round_trip("tiny", tmp_path_factory.mktemp("tiny"), max_shard_bytes=10**9, layout=(2, 2))
    return tiny.import_step.peak_above_baseline


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["1b", "bert-base"])
def test_recipe_shapes_round_trip_bit_for_bit_within_the_memory_bound(shape, tmp_path, ranks_start_up):
    result = round_trip(shape, tmp_path, max_shard_bytes=10**9, layout=(2, 2), progress=print)
    export_peak = result.export_step.peak_above_baseline
    import_peak = result.import_step.peak_above_baseline - ranks_start_up
    print(f"{shape}: {result.parameters:,} parameters ({result.model_bytes / 1e9:.2f} GB fp32), largest tensor "
          f"{result.largest_tensor_bytes / 1e9:.3f} GB, bound {result.bound / 1e9:.2f} GB; import "
          f"{result.import_step.seconds:.0f} s, peak +{import_peak / 1e9:.2f} GB beyond the ranks' start-up "
          f"({ranks_start_up / 1e9:.2f} GB); export {result.export_step.seconds:.0f} s, "
          f"peak +{export_peak / 1e9:.2f} GB, "
          f"{result.weight_files} files")
    assert result.mismatched == [] and result.tensors > 100
    assert export_peak <= result.bound and import_peak <= result.bound
    if shape == "1b":
        assert result.weight_files >= 4
        assert export_peak < result.model_bytes / 2 and import_peak < result.model_bytes / 2
        index = json.loads((tmp_path / "exported" / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == result.model_bytes
