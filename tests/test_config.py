"""The typed training configuration: YAML files, flag overrides, checks and the Megatron mapping."""

import argparse
import dataclasses
import math
import re
from pathlib import Path

import pytest

from headless_megatron.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_from_yaml,
    field_docs,
    fields,
    loader,
    parse_config,
)
from headless_megatron.config.megatron import transformer_config
from headless_megatron.config.reporting import ReportingFields
from headless_megatron.models.registry import validate_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
REQUIRED = {
    "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 64,
    "micro_batch_size": 4, "global_batch_size": 16, "train_iters": 100, "lr": 1e-3,
}


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**REQUIRED, "data_path": ["data/tiny"], **overrides})


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def required_yaml(**overrides) -> str:
    return "".join(f"{key}: {value}\n" for key, value in {**REQUIRED, **overrides}.items())


def expect_error(message: str):
    """The one-line ConfigError that starts with message."""
    return pytest.raises(ConfigError, match="^" + re.escape(message))


# ---- Files and flags ----


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    path = write(tmp_path, "num_layers: 4\nhidden_size: 64\nnum_attention_heads: 4\nseq_length: 64\n"
                           "micro_batch_size: 4\nglobal_batch_size: 16\ntrain_iters: 100\nlr: 3e-4\nseed: 5\n")
    config = parse_config(
        ["--config", str(path), "--lr", "1e-3", "--tensor-model-parallel-size", "2"],
        defaults={"seed": 9, "log_interval": 3, "lr": 7.0},
    )
    assert (config.lr, config.tensor_model_parallel_size) == (1e-3, 2)  # flags
    assert config.seed == 5  # the file beats the program's defaults
    assert config.log_interval == 3  # the program's defaults beat the field defaults
    assert config.eval_iters == 10  # field default


def test_yaml_1_1_exponent_floats_are_numbers(tmp_path):
    config = config_from_yaml(write(tmp_path, required_yaml(lr="3e-4")))  # PyYAML reads '3e-4'
    assert config.lr == 3e-4 and isinstance(config.lr, float)


@pytest.mark.parametrize("argv, expected", [
    (["--sequence-parallel"], True),
    (["--sequence-parallel", "true"], True),
    (["--sequence-parallel", "false"], False),
    (["--sequence-parallel", "--no-sequence-parallel"], False),
    (["--no-sequence-parallel", "--sequence-parallel"], True),
])
def test_bool_flags(argv, expected):
    assert parse_config(argv, defaults=REQUIRED).sequence_parallel is expected


def test_bool_flag_turns_off_a_true_file_value(tmp_path):
    path = write(tmp_path, required_yaml(bf16="true"))
    assert parse_config(["--config", str(path), "--no-bf16"]).bf16 is False


def test_bool_flag_rejects_other_values():
    with expect_error("bf16: expected true or false, got 'maybe'"):
        parse_config(["--bf16", "maybe"], defaults=REQUIRED)


@pytest.mark.parametrize("argv, blend", [
    (["--data-path", "data/a"], (["data/a"], None)),
    (["--data-path", "data/a", "data/b"], (["data/a", "data/b"], None)),
    (["--data-path", "0.3", "data/a", "0.7", "data/b"], (["data/a", "data/b"], [0.3, 0.7])),
])
def test_data_path_takes_prefixes_or_weighted_pairs(argv, blend):
    config = parse_config(argv, defaults=REQUIRED)
    assert config.data_path == argv[1:] and config.data_blend() == blend


def test_data_path_in_yaml_as_list_or_string(tmp_path):
    as_list = config_from_yaml(write(tmp_path, required_yaml() + "data_path: [0.3, a, 0.7, b]\n"))
    as_string = config_from_yaml(write(tmp_path, required_yaml() + "data_path: 0.3 a 0.7 b\n"))
    assert as_list.data_path == as_string.data_path == ["0.3", "a", "0.7", "b"]


@pytest.mark.parametrize("items, message", [
    (["0.3", "a", "b"], "data_path: expected PREFIX"),
    (["0.3", "a", "0.7"], "data_path: expected PREFIX"),
    (["a", "0.7", "b"], "data_path: expected PREFIX"),
    (["0", "a"], "data_path: weights must be positive"),
    (["nan", "a"], "data_path: weights must be positive finite numbers, got nan for 'a'"),
    (["inf", "a", "1", "b"], "data_path: weights must be positive finite numbers, got inf for 'a'"),
])
def test_malformed_blends_are_refused(items, message):
    with expect_error(message):
        tiny(data_path=items)


def test_optional_fields_are_reset_with_none(tmp_path):
    path = write(tmp_path, required_yaml(save_interval=100))
    assert parse_config(["--config", str(path), "--save-interval", "none"]).save_interval is None


def test_unknown_key_in_file_names_the_file_and_suggests(tmp_path):
    path = write(tmp_path, required_yaml() + "hiden_size: 32\n")
    with expect_error(f"{path}: unknown key 'hiden_size' (did you mean 'hidden_size'?)"):
        config_from_yaml(path)


def test_unknown_flag_suggests_the_closest():
    with expect_error("--hiden-size: unknown flag (did you mean --hidden-size?)"):
        parse_config(["--hiden-size", "32"], defaults=REQUIRED)


def test_megatron_lm_spellings_are_translated(tmp_path):
    with expect_error("--disable-bias-linear: unknown flag (Megatron-LM's --disable-bias-linear is --no-add-bias-linear here)"):
        parse_config(["--disable-bias-linear"], defaults=REQUIRED)
    path = write(tmp_path, required_yaml() + "lr_warmup_fraction: 0.1\n")
    with expect_error(f"{path}: unknown key 'lr_warmup_fraction' (Megatron-LM's lr_warmup_fraction is lr_warmup_iters "
                      "here)"):
        config_from_yaml(path)


def test_flags_are_not_abbreviated():
    with expect_error("--hidden: unknown flag (did you mean --hidden-size?)"):
        parse_config(["--hidden", "32"], defaults=REQUIRED)


def test_bad_values_name_the_file_and_the_key(tmp_path):
    path = write(tmp_path, required_yaml(num_layers="four"))
    with expect_error(f"{path}: num_layers: expected an integer, got 'four'"):
        config_from_yaml(path)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = write(tmp_path, required_yaml() + "lr: 1.0e-3\n")
    with expect_error(f"{path}: key 'lr' appears twice (again at line 9)"):
        config_from_yaml(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    with expect_error(f"{tmp_path / 'absent.yaml'}: cannot read the config file"):
        config_from_yaml(tmp_path / "absent.yaml")
    path = write(tmp_path, "lr: [1\n")
    with expect_error(f"{path}: invalid YAML"):
        config_from_yaml(path)


def test_missing_required_fields_are_named():
    with expect_error("train_iters, lr: required; set in the config file or pass --train-iters, --lr"):
        parse_config([], defaults={k: v for k, v in REQUIRED.items() if k not in ("train_iters", "lr")})


def test_help_lists_every_field_with_its_docstring():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    docs = field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}  # one docstring per field
    for name, (section, doc) in docs.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text and section and doc
    assert "Parallelism: --tensor-model-parallel-size N Tensor-parallel size" in text
    assert "(default: false; --no-sequence-parallel sets false)" in text


def test_a_command_parser_can_host_the_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc-per-node", type=int)
    add_config_arguments(parser)
    args = parser.parse_args(["--nproc-per-node", "2", "--num-layers", "8"])
    config = config_from_args(args, defaults=REQUIRED)
    assert config.num_layers == 8


# ---- Field checks at construction ----


@pytest.mark.parametrize("field, value, message", [
    ("num_layers", 0, "num_layers: expected a positive integer, got 0"),
    ("lr", -1.0, "lr: expected a positive number, got -1.0"),
    ("cwt_temperature", float("inf"), "cwt_temperature: expected a positive number, got inf"),
    ("cwt_temperature", "nan", "cwt_temperature: expected a positive number, got nan"),
    ("distributed_timeout_minutes", 0, "distributed_timeout_minutes: expected a positive number, got 0"),
    ("hidden_dropout", 1.0, "hidden_dropout: expected a number in [0, 1), got 1.0"),
    ("ckpt_format", "torch", "ckpt_format: expected one of torch_dist, got 'torch'"),
    ("split", "90,x", "split: expected up to three comma-separated shares"),
    ("sequence_parallel", 1, "sequence_parallel: expected true or false, got 1"),
    ("tensor_model_parallel_size", None, "tensor_model_parallel_size: cannot be none"),
])
def test_field_checks_at_construction(field, value, message):
    with expect_error(message):
        tiny(**{field: value})


def test_check_tables_name_real_fields():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(fields._RANGES) <= names
    assert {field for field, _ in loader._MEGATRON_LM_SPELLINGS.values()} <= names


def test_replace_checks_the_new_values():
    with expect_error("loss: expected one of cwt, ce, got 'mse'"):
        dataclasses.replace(tiny(), loss="mse")


# ---- Cross-field checks ----


@pytest.mark.parametrize("overrides, world_size, message", [
    ({"tensor_model_parallel_size": 4}, 6,
     "tensor_model_parallel_size: the world size 6 is not divisible by tensor x pipeline model-parallel size = 4 x 1 = 4"),
    ({"global_batch_size": 96}, 5,
     "global_batch_size: 96 is not divisible by micro_batch_size x data-parallel size = 4 x 5 = 20; use a multiple of 20"),
    ({"num_attention_heads": 6, "hidden_size": 96, "tensor_model_parallel_size": 4}, 4,
     "num_attention_heads: 6 is not divisible by tensor_model_parallel_size 4"),
    ({"num_query_groups": 3}, 1, "num_query_groups: 3 does not divide num_attention_heads 4"),
    ({"num_query_groups": 1, "tensor_model_parallel_size": 2}, 2,
     "num_query_groups: 1 is not divisible by tensor_model_parallel_size 2"),
    ({"hidden_size": 66}, 1, "hidden_size: 66 is not divisible by num_attention_heads 4"),
    ({"num_layers": 6, "pipeline_model_parallel_size": 4}, 4, "num_layers: 6 is not divisible by pipeline_model_parallel_size 4"),
    ({"num_layers": 4, "pipeline_model_parallel_size": 2, "virtual_pipeline_model_parallel_size": 4}, 2,
     "num_layers: 4 is not divisible by pipeline x virtual pipeline size = 2 x 4 = 8"),
    ({"virtual_pipeline_model_parallel_size": 2}, 1, "virtual_pipeline_model_parallel_size: needs pipeline_model_parallel_size > 1"),
    ({"pipeline_model_parallel_size": 2, "virtual_pipeline_model_parallel_size": 2, "global_batch_size": 12}, 2,
     "global_batch_size: gives 3 micro-batches per step"),
    ({"make_vocab_size_divisible_by": 128, "tensor_model_parallel_size": 3, "num_attention_heads": 6, "hidden_size": 96,
          "ffn_hidden_size": 192}, 3,
     "make_vocab_size_divisible_by: 128 is not divisible by tensor_model_parallel_size 3; the padded vocabulary is split evenly over TP ranks: use a multiple of 3, e.g. 384"),
    ({"sequence_parallel": True}, 1, "sequence_parallel: needs tensor_model_parallel_size > 1"),
    ({"sequence_parallel": True, "tensor_model_parallel_size": 4, "seq_length": 66}, 4, "seq_length: 66 is not divisible"),
    ({"bf16": True, "fp16": True}, 1, "fp16: cannot be combined with bf16"),
    ({"optimizer": "sgd"}, 1, "optimizer: sgd needs use_distributed_optimizer false"),
    ({"openai_gelu": True}, 1, "openai_gelu: chooses the GELU of a non-gated MLP; set swiglu false with it"),
    ({"transformer_block_type": "post_ln"}, 1, "transformer_block_type: post_ln applies to model bert only"),
    ({"num_tokentypes": 2}, 1, "num_tokentypes: applies to model bert only"),
    ({"data_path": None}, 1, "data_path: required unless mock_data"),
    ({"data_path": None, "mock_data": True}, 1, "vocab_size: mock_data needs vocab_size or tokenizer"),
    ({"lr_warmup_iters": 100}, 1, "lr_warmup_iters: 100 must be below lr_decay_iters 100"),
    ({"min_lr": 1.0}, 1, "min_lr: 1.0 is above lr 0.001"),
    ({"split": "100,0,0"}, 1, "eval_iters: 10 validation batches, but split '100,0,0' leaves no validation data"),
    ({"loss": "cwt", "untie_embeddings_and_output_weights": True}, 1, "untie_embeddings_and_output_weights: loss cwt scores"),
    ({"mlm_project_masked_only": True}, 1, "mlm_project_masked_only: applies to model bert with loss ce only"),
    ({"freeze_body": True, "loss": "ce", "untie_embeddings_and_output_weights": True}, 1, "freeze_body: needs pretrained"),
    ({"freeze_body": True, "pretrained": "runs/x"}, 1, "freeze_body: trains an output layer only"),
    ({"finetune": True}, 1, "finetune: needs load"),
    ({"overlap_param_gather": True}, 1, "overlap_param_gather: needs use_distributed_optimizer and overlap_grad_reduce"),
    ({"overlap_param_gather": True, "overlap_grad_reduce": True, "pipeline_model_parallel_size": 2}, 4,
     "overlap_param_gather: cannot be combined with pipeline_model_parallel_size > 1 and loss cwt"),
    ({"recompute_granularity": "full"}, 1, "recompute_granularity: full needs recompute_method"),
    ({"recompute_method": "uniform"}, 1, "recompute_method: applies only with recompute_granularity full"),
    ({"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 5}, 1,
     "recompute_num_layers: 5 exceeds the 4 layers of each pipeline stage"),
    ({"fp8_format": "hybrid", "transformer_impl": "local"}, 1, "fp8_format: needs Transformer Engine"),
    ({"hidden_size": 16, "num_attention_heads": 2}, 1, "ffn_hidden_size: the SwiGLU default"),
    ({"position_embedding_type": "learned_absolute", "max_position_embeddings": 32}, 1,
     "max_position_embeddings: 32 is below seq_length 64; a learned position table needs a row per position"),
    ({"position_embedding_type": "rope", "max_position_embeddings": 32}, 1,
     "max_position_embeddings: 32 is below seq_length 64; the model (and its Hugging Face export) would claim fewer "
     "positions"),
    ({"override_opt_param_scheduler": True, "use_checkpoint_opt_param_scheduler": True}, 1,
     "override_opt_param_scheduler: and use_checkpoint_opt_param_scheduler contradict each other"),
    ({"keep_checkpoint_interval": 100, "save": "runs/x"}, 1,
     "keep_checkpoint_interval: only thins out checkpoints with keep_last_checkpoints"),
    ({"keep_last_checkpoints": 2}, 1, "keep_last_checkpoints: needs save"),
    ({"keep_last_checkpoints": 2, "keep_checkpoint_interval": 150, "save": "runs/x", "save_interval": 100}, 1,
     "keep_checkpoint_interval: 150 is not a multiple of save_interval 100, so most of the checkpoints it would keep "
     "are never saved; use a multiple of 100"),
])
def test_inconsistent_values_name_the_key(overrides, world_size, message):
    config = tiny(**overrides)
    with expect_error(message) as error:
        validate_config(config, world_size)
    assert "\n" not in str(error.value)


def test_a_consistent_layout_validates():
    config = tiny(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, sequence_parallel=True,
                  num_query_groups=2, global_batch_size=32)
    validate_config(config, 8)
    assert config.data_parallel_size(8) == 2 and config.num_microbatches(8) == 4


def test_overlap_param_gather_is_refused_only_where_cwt_reads_the_last_stages_tied_copy():
    # PP2 x DP2 with the distributed optimizer: CWT reads the last stage's copy of the embeddings
    # without running the output layer's forward, where Megatron waits for its all-gather.
    overlapped = dict(overlap_grad_reduce=True, overlap_param_gather=True, use_distributed_optimizer=True)
    with expect_error("overlap_param_gather: cannot be combined with pipeline_model_parallel_size > 1 and loss cwt"):
        validate_config(tiny(loss="cwt", pipeline_model_parallel_size=2, **overlapped), 4)
    validate_config(tiny(loss="ce", pipeline_model_parallel_size=2, **overlapped), 4)  # the output layer's forward runs
    validate_config(tiny(loss="cwt", pipeline_model_parallel_size=1, tensor_model_parallel_size=2, **overlapped), 4)
    validate_config(tiny(loss="cwt", pipeline_model_parallel_size=2, overlap_grad_reduce=True), 4)


def test_distributed_timeout_minutes_takes_fractions():
    assert parse_config(["--data-path", "d", "--micro-batch-size", "1", "--global-batch-size", "1",
                         "--train-iters", "1", "--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "1",
                         "--seq-length", "8", "--lr", "1e-3", "--distributed-timeout-minutes", "0.25"]).distributed_timeout_minutes == 0.25
    assert tiny().distributed_timeout_minutes == 10  # Megatron-LM's default


# ---- Derived values ----


@pytest.mark.parametrize("vocab, padded", [(50277, 50304), (50304, 50304), (119547, 119552), (1, 128)])
def test_padded_vocab_is_independent_of_tp(vocab, padded):
    for tp in (1, 2, 4, 8):
        assert tiny(tensor_model_parallel_size=tp).padded_vocab_size(vocab) == padded


@pytest.mark.parametrize("overrides, ffn", [
    ({"hidden_size": 512, "num_attention_heads": 8}, 1344),  # int(512 * 8/3 / 64) * 64
    ({"hidden_size": 768, "num_attention_heads": 12, "swiglu": False}, 3072),
    ({"ffn_hidden_size": 100}, 100),
])
def test_ffn_size_defaults(overrides, ffn):
    assert tiny(**overrides).ffn_size == ffn


def test_resolved_defaults():
    config = tiny(lr_decay_iters=None, save="runs/x")
    assert (config.head_dim, config.query_groups, config.max_positions, config.decay_iters) == (16, 4, 64, 100)
    assert config.tokens_per_iteration == 16 * 64
    assert config.metrics_dir == "runs/x" and config.share_embeddings_and_output_weights
    assert not config.wandb_enabled and tiny(wandb_project="p").wandb_enabled


def test_to_dict_from_dict_round_trip(tmp_path):
    config = tiny(data_path=["0.3", "a", "0.7", "b"], fp8_format="hybrid", bf16=True, save_interval=7)
    assert config_from_dict(config.to_dict()) == config
    config.to_yaml(tmp_path / "full.yaml")
    assert config_from_yaml(tmp_path / "full.yaml") == config
    reporting = [f.name for f in dataclasses.fields(ReportingFields)]
    run = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in reporting]
    assert list(config.to_dict()) == run + reporting and run[0] == "model" and reporting[0] == "log_interval"


def test_from_dict_refuses_unknown_keys():
    with expect_error("unknown key 'lrr' (did you mean 'lr'?)"):
        config_from_dict({**REQUIRED, "lrr": 1})


# ---- Recipes ----


def _plausible_world_size(config: TrainConfig) -> int:
    """Up to one 8-GPU node of data parallelism that divides the recipe's batch."""
    model_parallel = config.tensor_model_parallel_size * config.pipeline_model_parallel_size
    dp = math.gcd(config.global_batch_size // config.micro_batch_size, max(1, 8 // model_parallel))
    return model_parallel * dp


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_recipe_loads_and_validates(path):
    config = config_from_yaml(path)
    if config.data_path is None:
        config = dataclasses.replace(config, data_path=["data/mock_text_document"])
    validate_config(config, _plausible_world_size(config))
    validate_config(config, config.tensor_model_parallel_size * config.pipeline_model_parallel_size)


def test_recipes_cover_the_paper_pairs():
    names = {path.stem for path in CONFIGS}
    for size in ("70m", "160m"):
        headless = config_from_yaml(CONFIGS[0].parent / f"gpt_headless_{size}.yaml")
        vanilla = config_from_yaml(CONFIGS[0].parent / f"gpt_vanilla_{size}.yaml")
        assert (headless.loss, vanilla.loss) == ("cwt", "ce")
        differing = {k for k, v in headless.to_dict().items() if vanilla.to_dict()[k] != v}
        assert differing == {"loss", "untie_embeddings_and_output_weights", "save", "load"}
    assert {"gpt_headless_tiny", "bert_headless_tiny", "gpt_headless_ft", "bert_headless_multilingual"} <= names


# ---- Megatron-Core ----


@pytest.mark.parametrize("name", ["gpt_headless_tiny", "bert_headless_tiny"])
def test_transformer_config_builds_on_cpu_for_the_tiny_recipes(name):
    import torch.nn.functional as F

    config = config_from_yaml(CONFIGS[0].parent / f"{name}.yaml")
    megatron = transformer_config(config, "local", on_gpu=False)
    llama = config.swiglu
    assert megatron.gated_linear_unit is llama
    assert megatron.activation_func is (F.silu if llama else F.gelu)
    assert megatron.normalization == config.normalization and megatron.layernorm_epsilon == config.norm_epsilon
    assert (megatron.num_layers, megatron.hidden_size, megatron.ffn_hidden_size) == (4, 64, config.ffn_size)
    assert megatron.add_bias_linear is config.add_bias_linear
    assert megatron.calculate_per_token_loss and megatron.use_cpu_initialization
    assert not (megatron.masked_softmax_fusion or megatron.bias_activation_fusion
                or megatron.gradient_accumulation_fusion or megatron.apply_rope_fusion)


def test_transformer_config_maps_parallelism_precision_and_gqa():
    import torch

    config = tiny(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, sequence_parallel=True, bf16=True,
                  num_query_groups=2, recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    megatron = transformer_config(config, "local", on_gpu=True)
    assert (megatron.tensor_model_parallel_size, megatron.pipeline_model_parallel_size) == (2, 2)
    assert megatron.sequence_parallel and megatron.num_query_groups == 2 and megatron.kv_channels == 16
    assert megatron.params_dtype == megatron.pipeline_dtype == torch.bfloat16 and megatron.bf16
    assert (megatron.recompute_granularity, megatron.recompute_method, megatron.recompute_num_layers) == ("full", "uniform", 1)
    assert not megatron.use_cpu_initialization and megatron.bias_activation_fusion


def test_fp8_needs_transformer_engine():
    with expect_error("fp8_format: needs the transformer_engine backend"):
        transformer_config(tiny(fp8_format="hybrid"), "local", on_gpu=True)


def test_transformer_engine_where_it_cannot_run_is_refused_at_validation():
    from headless_megatron.config.megatron import transformer_engine_available

    if transformer_engine_available():
        pytest.skip("Transformer Engine is usable on this machine")
    with expect_error("transformer_impl: transformer_engine needs a GPU and an importable transformer_engine"):
        validate_config(tiny(transformer_impl="transformer_engine"), 1)
    with expect_error("fp8_format: needs Transformer Engine, which needs a GPU and an importable transformer_engine"):
        validate_config(tiny(fp8_format="hybrid", bf16=True), 1)
