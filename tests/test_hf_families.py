"""Every Hugging Face class beyond Llama, proven exact: BERT (post-LN), GPT-2, Qwen2 and Mistral.

For each, a tiny model is built here from an HF config with large random weights (logits far from
uniform; nothing downloaded), imported, and then:

- Megatron's forward of the checkpoint, loaded at TP1, TP2 with sequence parallelism and PP2,
  equals HF's (logits, within 1e-5 of their largest magnitude); the padding rows Megatron adds to
  the vocabulary give zero logits and are never predicted;
- exporting it again gives back every tensor bit for bit, which ``transformers`` loads without a
  missing, unexpected or mismatched key;
- training continues from it, with the CE and the CWT loss, and its first loss is the one the HF
  model gives on the same tokens;
- the names older ``transformers`` wrote (GPT-2 without its head's prefix, BERT's LayerNorm
  ``gamma``/``beta``) import the same, here at TP2 and PP2.

Each family's tests run on one worker (its ``xdist_group``), so its import happens once.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import pytest
import torch
from data_fixtures import TOPICS_VOCAB
from local_ranks import run_on_ranks
from test_convert_importer import assert_same_tensors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from headless_megatron.cli import main
from headless_megatron.config import config_from_dict
from headless_megatron.convert.export import export_hf
from headless_megatron.data.tokenizer import tokenizer_for_dataset

VOCAB = TOPICS_VOCAB
SEQ = 24
RELATIVE_TOLERANCE = 1e-5
SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64)
MODELS = {  # model_type: (HF class, its config)
    "bert": (BertForMaskedLM, lambda special: BertConfig(
        **SHAPE, vocab_size=VOCAB, intermediate_size=96, type_vocab_size=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=special.pad, architectures=["BertForMaskedLM"])),
    "gpt2": (GPT2LMHeadModel, lambda special: GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=64, n_inner=96, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=special.eod, eos_token_id=special.eod,
        architectures=["GPT2LMHeadModel"])),
    "qwen2": (Qwen2ForCausalLM, lambda special: Qwen2Config(
        **SHAPE, vocab_size=VOCAB, intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        eos_token_id=special.eod, pad_token_id=special.pad, architectures=["Qwen2ForCausalLM"])),
    "mistral": (MistralForCausalLM, lambda special: MistralConfig(
        **SHAPE, vocab_size=VOCAB, intermediate_size=96, num_key_value_heads=2, head_dim=8, sliding_window=None,
        tie_word_embeddings=True, eos_token_id=special.eod, pad_token_id=special.pad,
        architectures=["MistralForCausalLM"])),
}
LAYOUTS = {"tp1": (1, 1, False), "tp2_sp": (2, 1, True), "pp2": (1, 2, False)}
FAMILY = [pytest.param(name, marks=pytest.mark.xdist_group(f"hf_{name}")) for name in MODELS]


def random_hf_model(model_type: str, directory, tokenizer) -> torch.nn.Module:
    """The tiny HF model of ``model_type``, every weight drawn large (norms around 1, biases around 0, the
    input embeddings, which are also the head, of unit scale: logits of a few units)."""
    model_class, config = MODELS[model_type]
    torch.manual_seed(0)
    model = model_class(config(tokenizer)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 1.0 if parameter is model.get_input_embeddings().weight else 0.25)
            else:
                parameter.normal_(1.0 if "norm" in name.lower() else 0.0, 0.2)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return model


@pytest.fixture(scope="module")
def tokenizer(topics_dataset):
    return tokenizer_for_dataset(topics_dataset)


@pytest.fixture(scope="module")
def imported(request, tokenizer, tmp_path_factory):
    """model_type -> (HF directory, the HF model, its import at TP1); built on first use per family."""
    cache: dict = {}

    def get(model_type: str):
        if model_type not in cache:
            root = tmp_path_factory.mktemp(model_type)
            model = random_hf_model(model_type, root / "hf", tokenizer)
            assert main(["import-hf", "--model", str(root / "hf"), "--output", str(root / "run")]) == 0
            cache[model_type] = (root / "hf", model, root / "run")
        return cache[model_type]

    return get


def batch_of(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """A micro-batch as the loop gives it, every position a loss position (the MLM labels are the tokens)."""
    ones = torch.ones_like(tokens, dtype=torch.float)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return {"tokens": tokens, "labels": tokens, "loss_mask": ones, "padding_mask": ones, "position_ids": positions}


def megatron_logits(save: str, layout: tuple[int, int, bool], tokens: torch.Tensor) -> torch.Tensor | None:
    """On each rank of a layout (TP, PP, SP): the checkpoint loaded at it, and the full logits ``[b, s,
    padded vocab]`` of ``tokens`` from the last stage's output layer (TP shards gathered), on one
    reporting rank (None on the others)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from headless_megatron.config.megatron import transformer_config
    from headless_megatron.models.registry import build_model_stage, family_of
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import load_checkpoint
    from headless_megatron.training.run_directory import latest_checkpoint

    path = latest_checkpoint(save)
    saved = config_from_dict(torch.load(path / "common.pt", weights_only=True)["config"])
    tp, pp, sp = layout
    config = dataclasses.replace(saved, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 sequence_parallel=sp)
    init_distributed(config.layout)
    model = build_model_stage(config, transformer_config(config, "local", on_gpu=False), config.vocab_size, "local")
    load_checkpoint(path, [model], load_rng=False)
    model.eval()
    captured = []
    if ps.is_pipeline_last_stage():
        # A copy: the vocab-parallel cross-entropy that follows works in place on the logits.
        model.output_layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output[0].clone()))

    def forward_step(data_iterator, chunk):
        output = family_of(config).forward(chunk, next(data_iterator))
        return output, lambda out: (out.sum(), torch.tensor(out.numel()), {"lm loss": out.sum()})

    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([batch_of(tokens)]), model=[model],
            num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
        )
    if not captured:
        return None
    logits = gather_from_tensor_model_parallel_region(captured[0])  # [s, b, padded vocab]
    return logits.transpose(0, 1).contiguous() if ps.get_tensor_model_parallel_rank() == 0 else None


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("model_type", FAMILY)
def test_megatron_forward_equals_hf_at_every_layout_and_padding_is_invisible(model_type, imported):
    _, model, run = imported(model_type)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    expected = hf_logits(model, tokens)
    results = {}
    for layout, (tp, pp, sp) in LAYOUTS.items():
        outputs = run_on_ranks(megatron_logits, tp * pp, args=(str(run), (tp, pp, sp), tokens), timeout=600)
        (results[layout],) = [logits for logits in outputs if logits is not None]
    scale = expected.abs().max().item()
    assert scale > 5, "the logits should be far from uniform"
    for layout, logits in results.items():
        relative = (logits[..., :VOCAB] - expected).abs().max().item() / scale
        print(f"{model_type} {layout}: max |Megatron - HF| / max |HF| logit = {relative:.2e}")
        assert relative <= RELATIVE_TOLERANCE, layout
        assert logits.shape[-1] > VOCAB and torch.isneginf(logits[..., VOCAB:]).all(), "a padded row is predicted"


@pytest.mark.parametrize("model_type", FAMILY)
def test_export_after_import_gives_back_every_tensor_and_transformers_loads_it_cleanly(model_type, imported, tmp_path):
    directory, model, run = imported(model_type)
    result = export_hf(run, tmp_path / "again", model_type=model_type)
    assert result.architecture == type(model).__name__
    assert_same_tensors(directory, result.output)
    original, exported = (json.loads((d / "config.json").read_text()) for d in (directory, result.output))
    for key in set(original) - {"transformers_version", "dtype", "torch_dtype", "bos_token_id", "pad_token_id",
                                "eos_token_id", "initializer_range", "use_cache"}:
        assert exported.get(key) == original[key], key
    auto = AutoModelForMaskedLM if model_type == "bert" else AutoModelForCausalLM

    def load(path):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded, info = auto.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        return loaded, info, sorted(str(warning.message) for warning in caught)

    loaded, info, caught = load(result.output)
    assert not any(info.values()), info
    assert caught == load(directory)[2]  # no warning beyond those HF prints for the original
    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(2))
    assert torch.equal(hf_logits(loaded, tokens), hf_logits(model, tokens))


def first_iteration(config_values: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """On one rank: the loss of the first training iteration from the imported weights, and its batch."""
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(config_from_dict(config_values))
    samples = [trainer.train_data[i] for i in range(trainer.config.global_batch_size)]
    batch = {key: torch.stack([torch.as_tensor(sample[key]) for sample in samples]) for key in samples[0]}
    loss, _, _ = trainer.train_step(trainer.train_data_iterator())
    trainer.finish_saves()
    return loss, batch


def hf_first_loss(model: torch.nn.Module, model_type: str, loss: str, batch: dict, cwt_options) -> float:
    """The loss our objective gives with the HF model's outputs on ``batch``: cross-entropy of its
    logits, or the CWT loss of its last hidden states against its input embeddings."""
    from headless_megatron.cwt import cwt_loss

    tokens, labels, mask = batch["tokens"], batch["labels"], batch["loss_mask"].float()
    inputs = {"attention_mask": batch["padding_mask"]} if model_type == "bert" else {}
    with torch.no_grad():
        if loss == "ce":
            logits = model(tokens, **inputs).logits
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        else:
            hidden = model.base_model(tokens, **inputs).last_hidden_state
            per_token = cwt_loss(hidden.transpose(0, 1).contiguous(), labels.t(), model.get_input_embeddings().weight,
                                 loss_mask=mask.t(), temperature=cwt_options.cwt_temperature,
                                 duplicates=cwt_options.cwt_duplicates, negatives=cwt_options.cwt_negatives).t()
    return ((per_token * mask).sum() / mask.sum()).item()


@pytest.mark.parametrize("loss", ["ce", "cwt"])
@pytest.mark.parametrize("model_type", FAMILY)
def test_training_continues_from_the_import_with_the_hf_models_first_loss(model_type, loss, imported, topics_dataset,
                                                                          tmp_path):
    _, model, run = imported(model_type)
    saved = config_from_dict(torch.load(run / "iter_0000000" / "common.pt", weights_only=True)["config"])
    config = dataclasses.replace(
        saved, pretrained=str(run), loss=loss, data_path=[topics_dataset], split="1", seq_length=SEQ,
        max_position_embeddings=saved.max_positions, micro_batch_size=2, global_batch_size=2, train_iters=2,
        lr=1e-4, lr_warmup_iters=0, eval_iters=0, num_workers=0, log_interval=1, save=str(tmp_path / "run"),
        untie_embeddings_and_output_weights=saved.untie_embeddings_and_output_weights and loss == "ce",
        # The dataset's own tokenizer: transformers reads the import's through the class of its model_type
        # (Qwen2's splits text its own way), and the loop checks that the data was made with the one it uses.
        tokenizer=None,
    )
    first_loss, batch = run_on_ranks(first_iteration, 1, args=(config.to_dict(),), timeout=600)[0]
    expected = hf_first_loss(model, model_type, loss, batch, config)
    print(f"{model_type} {loss}: first loss {first_loss:.6f}, HF {expected:.6f}")
    assert abs(first_loss - expected) <= RELATIVE_TOLERANCE * abs(expected)


LEGACY_SPELLINGS = {  # model_type: how its original checkpoints on the Hub spell the names transformers now writes
    "gpt2": lambda name: name.removeprefix("transformer."),  # saved as GPT2Model, without the head's prefix
    "bert": lambda name: name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                     "LayerNorm.beta"),
}
IMPORT_LAYOUTS = {"gpt2": ["--tensor-model-parallel-size", "2"], "bert": ["--pipeline-model-parallel-size", "2"]}


@pytest.mark.parametrize("model_type", [param for param in FAMILY if param.values[0] in LEGACY_SPELLINGS])
def test_checkpoints_with_the_names_of_older_transformers_import_the_same_at_another_layout(model_type, imported,
                                                                                           tmp_path):
    from safetensors.torch import load_file, save_file

    directory, _, _ = imported(model_type)
    shutil.copytree(directory, tmp_path / "legacy")
    weights = load_file(directory / "model.safetensors")
    save_file({LEGACY_SPELLINGS[model_type](name): tensor for name, tensor in weights.items()},
              tmp_path / "legacy" / "model.safetensors", metadata={"format": "pt"})
    assert main(["import-hf", "--model", str(tmp_path / "legacy"), "--output", str(tmp_path / "run"),
                 *IMPORT_LAYOUTS[model_type]]) == 0
    assert_same_tensors(directory, export_hf(tmp_path / "run", tmp_path / "again", model_type=model_type).output)
