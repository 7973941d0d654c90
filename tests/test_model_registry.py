"""The model registry and the family interface: each family's own config checks, its FLOP terms and
its Hugging Face conversion."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from headless_megatron.config import ConfigError, parse_config
from headless_megatron.models.family import ModelFamily
from headless_megatron.models.registry import FAMILIES, family_of, hf_conversions, validate_config
from headless_megatron.training.metrics import transformer_flops_per_token

ROOT = Path(__file__).parent.parent
RECIPES = sorted(str(path) for path in (ROOT / "configs").glob("*.yaml"))
INTERFACE = ("name", "kind", "objective", "validate", "build_stage", "wrap_data", "forward",
             "attended_positions", "projected_positions", "hf_conversions", "stage_parameters")


def tiny(recipe: str, *flags: str):
    return parse_config(["--config", f"configs/{recipe}.yaml", "--mock-data", "--vocab-size", "512", *flags])


def test_every_registered_family_implements_the_interface():
    assert set(FAMILIES) == {"gpt", "bert"}
    for name, family in FAMILIES.items():
        assert family.name == name
        assert all(hasattr(family, member) for member in INTERFACE)
        assert set(INTERFACE) >= {member for member in vars(ModelFamily) if not member.startswith("_")}


def test_an_unknown_model_is_one_line_naming_the_families():
    config = tiny("gpt_headless_tiny", "--model", "gtp")
    expected = "model: expected one of gpt, bert, got 'gtp' (did you mean 'gpt'?)"
    for check in (lambda: family_of(config), lambda: validate_config(config, 1)):
        with pytest.raises(ConfigError) as error:
            check()
        assert str(error.value) == expected


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: Path(path).stem)
def test_each_recipe_finds_its_family(recipe):
    config = parse_config(["--config", recipe, "--mock-data"])
    assert family_of(config) is FAMILIES[config.model]


@pytest.mark.parametrize("recipe, flags, message", [
    ("gpt_headless_tiny", ["--mlm-project-masked-only"],
     "mlm_project_masked_only: applies to model bert with loss ce only"),
    ("gpt_headless_tiny", ["--mask-prob", "0.3"],
     "mask_prob: applies to model bert only (a GPT learns every next token); remove it"),
    ("gpt_headless_tiny", ["--masking", "paper"],
     "masking: applies to model bert only (a GPT learns every next token); remove it"),
    ("bert_headless_tiny", ["--mlm-project-masked-only"],
     "mlm_project_masked_only: applies to model bert with loss ce only"),
    ("bert_headless_tiny", ["--loss", "ce", "--mlm-project-masked-only", "--tensor-model-parallel-size", "2",
                            "--sequence-parallel"],
     "mlm_project_masked_only: not supported with sequence_parallel; drop one of them"),
])
def test_each_family_refuses_its_keys_in_one_line(recipe, flags, message):
    config = tiny(recipe, *flags)
    with pytest.raises(ConfigError) as error:
        validate_config(config, config.tensor_model_parallel_size)
    assert str(error.value) == message
    with pytest.raises(ConfigError, match=re.escape(message)):
        family_of(config).validate(config)


def test_bert_takes_its_keys_and_gpt_its_own():
    for config in (tiny("bert_headless_tiny", "--loss", "ce", "--mlm-project-masked-only"),
                   tiny("gpt_headless_tiny"), tiny("bert_headless_tiny", "--masking", "paper")):
        validate_config(config, 1)


def test_validation_needs_no_process_group_torch_or_megatron():
    """Validation runs in a launcher before any rank exists; it must stay cheap and self-contained."""
    code = (
        "import sys\n"
        "from headless_megatron.config import ConfigError, parse_config\n"
        "from headless_megatron.models.registry import validate_config\n"
        "config = parse_config(['--config', 'configs/gpt_headless_tiny.yaml', '--mock-data', '--vocab-size', '512',"
        " '--mlm-project-masked-only'])\n"
        "try:\n"
        "    validate_config(config, 1)\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "print(sorted(m for m in ('torch', 'megatron.core') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["mlm_project_masked_only: applies to model bert with loss ce only", "[]"]


def _flops_before_families(config) -> float:
    """The body count as training/metrics.py computed it before the families existed."""
    h, s = config.hidden_size, config.seq_length
    q = config.num_attention_heads * config.head_dim
    kv = config.query_groups * config.head_dim
    attended = s / 2 if config.model == "gpt" else s
    attention = 2 * h * (q + 2 * kv) + 2 * 2 * q * attended + 2 * q * h
    mlp = 2 * h * config.ffn_size * (3 if config.swiglu else 2)
    return 3.0 * config.num_layers * (attention + mlp)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: Path(path).stem)
def test_family_flops_equal_the_former_count(recipe):
    config = parse_config(["--config", recipe, "--mock-data"])
    assert transformer_flops_per_token(config) == _flops_before_families(config)
    masked = 1234
    projected = masked if config.mlm_project_masked_only else config.tokens_per_iteration
    assert family_of(config).projected_positions(config, masked, config.tokens_per_iteration) == projected


def test_attention_and_head_terms_per_family():
    assert FAMILIES["gpt"].attended_positions(512) == 256
    assert FAMILIES["bert"].attended_positions(512) == 512
    gpt = tiny("gpt_headless_tiny", "--loss", "ce")
    bert = tiny("bert_headless_tiny", "--loss", "ce", "--mlm-project-masked-only")
    assert FAMILIES["gpt"].projected_positions(gpt, 7, 4096) == 4096  # every position of the iteration
    assert FAMILIES["bert"].projected_positions(bert, 7, 4096) == 7


def test_gpt_feeds_the_windows_and_bert_masks_them_as_its_keys_say():
    import torch

    from headless_megatron.models.bert.masking import MaskedLMDataset, Masking

    windows = [{"tokens": torch.arange(64) % 500} for _ in range(3)]
    gpt = tiny("gpt_headless_tiny")
    assert FAMILIES["gpt"].wrap_data(gpt, None, windows) is windows
    bert = tiny("bert_headless_tiny", "--masking", "paper", "--mask-prob", "0.3", "--seed", "5")
    samples = FAMILIES["bert"].wrap_data(bert, None, windows)
    assert isinstance(samples, MaskedLMDataset) and samples.windows is windows and samples.seed == 5
    # mock data (no tokenizer): the mask token and the one special id are the vocabulary's last ids
    assert samples.masking == Masking("paper", 0.3, mask_id=510, vocab_size=512, special_ids=(511,))
    assert torch.equal(samples[1]["labels"], windows[1]["tokens"]) and samples[1]["loss_mask"].sum() == 20


def test_each_family_names_its_hugging_face_conversions_and_export_takes_the_first_that_holds_the_checkpoint():
    from headless_megatron.convert import ConversionError
    from headless_megatron.models.bert.hf_bert import BertConversion
    from headless_megatron.models.bert.hf_megatron_bert import MegatronBertConversion
    from headless_megatron.models.gpt.hf_gpt2 import GPT2Conversion
    from headless_megatron.models.gpt.hf_llama import LlamaConversion
    from headless_megatron.models.gpt.hf_mistral import MistralConversion
    from headless_megatron.models.gpt.hf_qwen2 import Qwen2Conversion
    from headless_megatron.models.registry import conversion_for

    assert hf_conversions() == {"llama": LlamaConversion, "qwen2": Qwen2Conversion, "gpt2": GPT2Conversion,
                                "mistral": MistralConversion, "megatron-bert": MegatronBertConversion,
                                "bert": BertConversion}
    gpt2_style = ("--normalization", "LayerNorm", "--no-swiglu", "--position-embedding-type", "learned_absolute",
                  "--add-bias-linear", "--loss", "ce")
    chosen = {
        ("bert_headless_tiny",): MegatronBertConversion,
        ("bert_headless_tiny", "--transformer-block-type", "post_ln"): BertConversion,
        ("gpt_headless_tiny",): LlamaConversion,
        ("gpt_headless_tiny", "--add-qkv-bias"): Qwen2Conversion,
        ("gpt_headless_tiny", *gpt2_style): GPT2Conversion,
    }
    for (recipe, *flags), conversion in chosen.items():
        assert type(conversion_for(tiny(recipe, *flags), 512)) is conversion, flags
    assert type(conversion_for(tiny("gpt_headless_tiny"), 512, "mistral")) is MistralConversion
    with pytest.raises(ConversionError, match="--model-type bert: a gpt checkpoint exports to llama, qwen2, gpt2, "
                                              "mistral"):
        conversion_for(tiny("gpt_headless_tiny"), 512, "bert")
    with pytest.raises(ConversionError, match=r"no Hugging Face class holds this gpt checkpoint: llama cannot hold "
                                              r"normalization LayerNorm; qwen2 cannot hold add_qkv_bias false, "
                                              r"normalization LayerNorm; gpt2 cannot hold swiglu true, "
                                              r"position_embedding_type rope, "
                                              r"add_bias_linear false; mistral cannot hold normalization LayerNorm$"):
        conversion_for(tiny("gpt_headless_tiny", "--normalization", "LayerNorm"), 512)
    assert (FAMILIES["gpt"].kind, FAMILIES["bert"].kind) == ("decoder", "encoder")


def test_only_the_family_folders_branch_on_the_model():
    pattern = re.compile(r"config\.model\s*(==|!=|in\s*\()|\.model\s*==")
    folders = [ROOT / "headless_megatron" / "models" / name for name in FAMILIES]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "headless_megatron").rglob("*.py"))
        if not any(folder in path.parents for folder in folders)
        for number, line in enumerate(path.read_text().splitlines(), start=1) if pattern.search(line)
    ]
    assert hits == []
