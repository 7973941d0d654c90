"""BERT-style encoders <-> MegatronBert: names and shapes against transformers, then tiny encoders trained
by the real loop (headless at TP2, vanilla at PP2), exported with Megatron's outputs, imported back exactly."""

from __future__ import annotations

import pytest
import torch
from local_ranks import run_on_ranks
from safetensors.torch import load_file
from test_convert_export import LOGITS_TOLERANCE, TOKENS, VOCAB, pretrain_each
from transformers import MegatronBertConfig, MegatronBertForMaskedLM, MegatronBertModel

from headless_megatron.config import TrainConfig, config_from_dict
from headless_megatron.config.megatron import transformer_config
from headless_megatron.convert import ConversionError
from headless_megatron.convert.export import export_hf
from headless_megatron.convert.importer import import_hf
from headless_megatron.models.bert.hf_megatron_bert import MegatronBertConversion, unsupported_settings
from headless_megatron.models.hf_mapping import megatron_tensor, megatron_to_hf

SPECIAL_TOKENS = {"bos": None, "eos": 0, "pad": 1}
TINY_BERT = "configs/bert_headless_tiny.yaml"


def encoder_config(**overrides) -> TrainConfig:
    values = {"model": "bert", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "ffn_hidden_size": 48,
              "seq_length": 16, "normalization": "LayerNorm", "swiglu": False, "add_bias_linear": True,
              "position_embedding_type": "learned_absolute", "micro_batch_size": 1, "global_batch_size": 1,
              "train_iters": 1, "lr": 1e-3}
    return TrainConfig(**{**values, **overrides})


def checkpoint_tensors(conversion: MegatronBertConversion) -> dict[str, torch.Tensor]:
    """Random tensors shaped like the checkpoint (zero vocabulary padding), from the HF model's shapes."""
    gen = torch.Generator().manual_seed(0)
    config = conversion.config
    layers, hidden, ffn, padded = config.num_layers, config.hidden_size, config.ffn_size, conversion.padded_vocab_size
    shapes = {
        "embedding.word_embeddings.weight": (padded, hidden),
        "embedding.position_embeddings.weight": (config.max_positions, hidden),
        "encoder.layers.self_attention.linear_qkv.weight": (layers, 3 * hidden, hidden),
        "encoder.layers.self_attention.linear_qkv.bias": (layers, 3 * hidden),
        "encoder.layers.self_attention.linear_proj.weight": (layers, hidden, hidden),
        "encoder.layers.mlp.linear_fc1.weight": (layers, ffn, hidden),
        "encoder.layers.mlp.linear_fc1.bias": (layers, ffn),
        "encoder.layers.mlp.linear_fc2.weight": (layers, hidden, ffn),
        "lm_head.dense.weight": (hidden, hidden),
        "output_layer.bias": (padded,),
        "output_layer.weight": (padded, hidden),
    }
    tensors = {}
    for mapping in conversion.mappings("mlm"):
        default = (layers, hidden) if mapping.per_layer else (hidden,)
        tensor = torch.randn(shapes.get(mapping.megatron, default), generator=gen)
        if mapping.megatron.startswith(("embedding.word", "output_layer")):
            tensor[VOCAB:] = 0
        tensors[mapping.megatron] = tensor
    return tensors


@pytest.mark.parametrize("loss, untied", [("cwt", False), ("ce", False), ("ce", True)])
def test_names_and_shapes_are_those_of_transformers_megatron_bert_and_import_inverts_export(loss, untied):
    conversion = MegatronBertConversion(encoder_config(loss=loss, untie_embeddings_and_output_weights=untied), VOCAB)
    tensors = checkpoint_tensors(conversion)
    hf = megatron_to_hf(conversion.mappings("mlm"), tensors, num_layers=2)
    hf_config = conversion.hf_config("mlm", SPECIAL_TOKENS, torch.float32)
    model = (
        MegatronBertModel(hf_config, add_pooling_layer=False) if loss == "cwt" else MegatronBertForMaskedLM(hf_config)
    )
    result = model.load_state_dict(hf, strict=False)
    assert result.unexpected_keys == []
    tied_copies = {"cls.predictions.decoder.bias"} | (set() if untied else {"cls.predictions.decoder.weight"})
    assert set(result.missing_keys) == (set() if loss == "cwt" else tied_copies)
    assert conversion.hf_architecture == ("MegatronBertModel" if loss == "cwt" else "MegatronBertForMaskedLM")
    for mapping in conversion.mappings("mlm"):
        layers = range(2) if mapping.per_layer else (None,)
        rebuilt = [megatron_tensor(mapping, hf.__getitem__, layer) for layer in layers]
        rebuilt = torch.stack(rebuilt) if mapping.per_layer else rebuilt[0]
        assert torch.equal(rebuilt, tensors[mapping.megatron]), mapping.megatron


def test_token_type_row_zero_is_folded_into_positions_on_import():
    conversion = MegatronBertConversion(encoder_config(loss="ce"), VOCAB)
    (positions,) = [m for m in conversion.mappings("mlm") if m.megatron == "embedding.position_embeddings.weight"]
    table, token_types = torch.randn(16, 32), torch.randn(2, 32)
    assert torch.equal(positions.to_megatron((table, token_types)), table + token_types[0])


def test_encoders_megatron_bert_cannot_hold_are_named():
    config = encoder_config(normalization="RMSNorm", swiglu=True, add_bias_linear=False, num_query_groups=2)
    assert unsupported_settings(config) == [
        "normalization RMSNorm", "swiglu true", "add_bias_linear false", "num_query_groups 2",
    ]
    with pytest.raises(ConversionError, match="MegatronBert cannot represent position_embedding_type rope"):
        MegatronBertConversion(encoder_config(position_embedding_type="rope"), VOCAB)
    with pytest.raises(ConversionError, match="--mode add_head: a bert checkpoint exports to MegatronBertModel"):
        MegatronBertConversion(encoder_config(loss="cwt"), VOCAB).check_mode("add_head")
    with pytest.raises(ConversionError, match="hidden_act gelu_new has no Megatron equivalent"):
        MegatronBertConversion.train_config_values(MegatronBertConfig(hidden_act="gelu_new"))


def test_hf_config_and_train_config_values_describe_the_same_model():
    config = encoder_config(loss="ce", untie_embeddings_and_output_weights=True, norm_epsilon=1e-12)
    hf_config = MegatronBertConversion(config, VOCAB).hf_config("mlm", SPECIAL_TOKENS, torch.float32)
    values = MegatronBertConversion.train_config_values(hf_config)
    assert values.pop("vocab_size") == VOCAB and values["loss"] == "ce"
    rebuilt = TrainConfig(**values, micro_batch_size=1, global_batch_size=1, train_iters=1, lr=1e-3)
    for field in ("model", "num_layers", "hidden_size", "num_attention_heads", "ffn_size", "max_positions",
                  "norm_epsilon", "untie_embeddings_and_output_weights"):
        assert getattr(rebuilt, field) == getattr(config, field), field


# ---- End to end ----


def megatron_outputs(save_directories: list[str], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """On one rank: each checkpoint loaded at TP1 PP1 into the loop's encoder; the encoder's output
    ``[b, s, h]`` (headless) or the MLM logits ``[b, s, padded vocabulary]`` (vanilla) for ``tokens``."""
    import dataclasses

    from headless_megatron.config import ParallelLayout
    from headless_megatron.data.tokenizer import tokenizer_for_dataset
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import load_checkpoint
    from headless_megatron.training.loop import build_model_stage
    from headless_megatron.training.run_directory import latest_checkpoint

    init_distributed(ParallelLayout())
    outputs = {}
    for save in save_directories:
        path = latest_checkpoint(save)
        saved = config_from_dict(torch.load(path / "common.pt", weights_only=True)["config"])
        config = dataclasses.replace(saved, tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        vocab = tokenizer_for_dataset(config.data_path[0]).vocab_size
        model = build_model_stage(config, transformer_config(config, "local", on_gpu=False), vocab, "local")
        load_checkpoint(path, [model], load_rng=False)
        model.eval()
        with torch.no_grad():
            hidden = model._encode(tokens, torch.ones_like(tokens), None)  # [s, b, h], after the final norm
            if config.loss == "ce":
                hidden, _ = model.output_layer(model.lm_head(hidden_states=hidden),
                                               weight=model.shared_embedding_or_output_weight())
        outputs[save] = hidden.transpose(0, 1)
    return outputs


def training_argv(dataset: str, save, *flags: str) -> list[str]:
    return ["--config", TINY_BERT, "--data-path", dataset, "--split", "1", "--save", str(save), "--train-iters", "3",
            "--lr-warmup-iters", "1", "--eval-iters", "0", "--num-workers", "0", "--log-interval", "3", *flags]


@pytest.fixture(scope="module")
def checkpoints(topics_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {"headless": root / "headless_tp2", "vanilla": root / "vanilla_pp2"}
    argvs = [training_argv(topics_dataset, runs["headless"], "--tensor-model-parallel-size", "2"),
             training_argv(topics_dataset, runs["vanilla"], "--pipeline-model-parallel-size", "2", "--loss", "ce")]
    run_on_ranks(pretrain_each, 2, args=(argvs,), timeout=900)
    return runs


@pytest.fixture(scope="module")
def reference_outputs(checkpoints):
    paths = [str(path) for path in checkpoints.values()]
    return run_on_ranks(megatron_outputs, 1, args=(paths, TOKENS), timeout=600)[0]


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: export_hf(save, root / kind).output for kind, save in checkpoints.items()}


def test_the_headless_encoder_exports_with_megatron_outputs(checkpoints, reference_outputs, exported):
    model, loading = MegatronBertModel.from_pretrained(exported["headless"], output_loading_info=True)
    assert loading["missing_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}  # HF's own, random
    assert not loading["unexpected_keys"] and not loading["mismatched_keys"]
    with torch.no_grad():
        states = model(TOKENS).last_hidden_state
    worst = (states - reference_outputs[str(checkpoints["headless"])]).abs().max().item()
    print(f"headless encoder trained at TP2: max |HF - Megatron| output difference {worst:.2e}")
    assert worst <= LOGITS_TOLERANCE
    assert "feature-extraction" in (exported["headless"] / "README.md").read_text()


def test_the_vanilla_encoder_exports_with_megatron_logits_and_fills_masks(checkpoints, reference_outputs, exported):
    from transformers import pipeline

    model, loading = MegatronBertForMaskedLM.from_pretrained(exported["vanilla"], output_loading_info=True)
    assert not any(loading.values()), loading
    with torch.no_grad():
        logits = model(TOKENS).logits
    worst = (logits - reference_outputs[str(checkpoints["vanilla"])][..., :VOCAB]).abs().max().item()
    print(f"vanilla encoder trained at PP2: max |HF - Megatron| logit difference {worst:.2e}")
    assert worst <= LOGITS_TOLERANCE
    fill = pipeline("fill-mask", model=str(exported["vanilla"]))
    assert len(fill(f"def add(a, b): return a {fill.tokenizer.mask_token} b")) == 5


@pytest.mark.parametrize("kind, layout", [("headless", (1, 1)), ("vanilla", (2, 2))])
def test_import_then_export_reproduces_every_tensor(kind, layout, exported, tmp_path):
    imported = import_hf(exported[kind], tmp_path / "run", *layout)
    again = export_hf(imported.output, tmp_path / "again")
    assert again.architecture == ("MegatronBertModel" if kind == "headless" else "MegatronBertForMaskedLM")
    original, exported_again = (load_file(d / "model.safetensors") for d in (exported[kind], again.output))
    assert sorted(exported_again) == sorted(original)
    assert all(torch.equal(exported_again[name], tensor) for name, tensor in original.items())
