"""The memory plan: its parameter counts equal the built model's on every pipeline stage and layout,
its bytes per parameter follow Megatron-LM's, and its total is within 15% of the peak memory a CPU
run measures (tensors only) for several layouts and sizes."""

from __future__ import annotations

import re

import pytest
from local_ranks import run_on_ranks

from headless_megatron.config import parse_config
from headless_megatron.training.memory_plan import bytes_per_parameter, plan

TINY_GPT, TINY_BERT = "configs/gpt_headless_tiny.yaml", "configs/bert_headless_tiny.yaml"
VARIANTS = {
    "gpt cwt": (TINY_GPT, []),
    "gpt ce untied": (TINY_GPT, ["--loss", "ce", "--untie-embeddings-and-output-weights"]),
    "gpt-2 style": (TINY_GPT, ["--loss", "ce", "--normalization", "LayerNorm", "--add-bias-linear",
                               "--position-embedding-type", "learned_absolute", "--no-swiglu",
                               "--num-query-groups", "2"]),
    "bert ce": (TINY_BERT, ["--loss", "ce"]),
    "bert cwt post-ln": (TINY_BERT, ["--transformer-block-type", "post_ln", "--num-tokentypes", "2"]),
}
LAYOUTS = {"TP1": [], "TP2": ["--tensor-model-parallel-size", "2"], "PP2": ["--pipeline-model-parallel-size", "2"]}


def _config(recipe, flags, layout=()):
    return parse_config(["--config", recipe, "--mock-data", "--vocab-size", "500", *flags, *layout])


def _stage_parameters(argv):
    """On each rank: (pipeline stage, parameters of this rank's stage)."""
    from megatron.core import parallel_state as ps

    from headless_megatron.config import parse_config
    from headless_megatron.config.megatron import transformer_config
    from headless_megatron.models.registry import build_model_stage
    from headless_megatron.runtime.distributed import init_distributed

    config = parse_config(argv)
    init_distributed(config.layout, seed=config.seed)
    stage = build_model_stage(config, transformer_config(config, "local"), config.vocab_size, "local")
    return ps.get_pipeline_model_parallel_rank(), sum(p.numel() for p in stage.parameters())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameters_per_stage_are_the_built_models(variant, layout):
    recipe, flags = VARIANTS[variant]
    argv = ["--config", recipe, "--mock-data", "--vocab-size", "500", *flags, *LAYOUTS[layout]]
    world = 1 if layout == "TP1" else 2
    config = parse_config(argv)
    expected = {stage.stage: stage.parameters for stage in plan(config, world, config.padded_vocab_size(500))}
    for stage, built in run_on_ranks(_stage_parameters, world, args=(argv,)):
        assert built == expected[stage], (variant, layout, stage)


@pytest.mark.parametrize("flags, data_parallel, expected", [
    ([], 1, (4, 4, 8)),  # fp32 Adam: weights, fp32 gradients, two moments
    (["--bf16"], 1, (2, 4, 12)),  # Megatron-LM's 18 bytes: + fp32 main weights
    (["--bf16"], 4, (2, 4, 3)),  # the distributed optimizer's 6 + 12 / dp
    (["--bf16", "--no-use-distributed-optimizer"], 4, (2, 4, 12)),
])
def test_bytes_per_parameter_follow_megatron_lm(flags, data_parallel, expected):
    assert bytes_per_parameter(_config(TINY_GPT, flags), data_parallel) == expected


def _measured_memory(argv):
    """On each rank: (pipeline stage, bytes held by weights, gradients and optimizer state after two
    steps, peak bytes of the tensors the forward passes saved for backward, live at once across the
    in-flight micro-batches), measured on the trainer's own tensors and through saved-tensor hooks."""
    import weakref

    import torch
    from megatron.core import parallel_state as ps

    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    parameters = {p.untyped_storage().data_ptr() for chunk in trainer.model_chunks for p in chunk.parameters()}
    live, peak, holders = [0], [0], {}

    def released(pointer):
        holders[pointer][1] -= 1
        if not holders[pointer][1]:
            live[0] -= holders.pop(pointer)[0]

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            if pointer not in holders:
                holders[pointer] = [tensor.untyped_storage().nbytes(), 0]
                live[0] += holders[pointer][0]
                peak[0] = max(peak[0], live[0])
            holders[pointer][1] += 1
            weakref.finalize(tensor, released, pointer)
        return tensor

    data = trainer.train_data_iterator()
    trainer.train_step(data)  # the optimizer's state comes with its first step
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.train_step(data)
    storages = {}
    for chunk in trainer.model_chunks:
        for tensor in [*chunk.parameters(), *(buffer.grad_data for buffer in chunk.buffers)]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    for optimizer in getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer]):
        for state in optimizer.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.numel() > 1:
                    storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return ps.get_pipeline_model_parallel_rank(), sum(storages.values()), peak[0]


MEASURED = {  # config flags, ranks
    "swiglu rope rmsnorm": (["--ffn-hidden-size", "512"], 1),
    "gelu learned layernorm bias, ce": (["--no-swiglu", "--normalization", "LayerNorm", "--add-bias-linear",
                                         "--position-embedding-type", "learned_absolute", "--loss", "ce"], 1),
    "wider, full recompute": (["--hidden-size", "384", "--recompute-granularity", "full", "--recompute-num-layers", "1",
                               "--recompute-method",
                               "uniform"], 1),
    "TP2 + SP": (["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2),
    "PP2, 4 micro-batches": (["--pipeline-model-parallel-size", "2", "--global-batch-size", "16"], 2),
}


@pytest.mark.parametrize("case", MEASURED)
def test_the_plan_is_within_15_percent_of_the_memory_a_cpu_run_holds(case):
    flags, world = MEASURED[case]
    argv = ["--config", TINY_GPT, "--mock-data", "--vocab-size", "2000", "--eval-iters", "0", "--save", "none",
            "--num-workers", "0", "--hidden-size", "256", "--num-attention-heads", "8", "--seq-length", "256",
            "--micro-batch-size", "4", "--global-batch-size", str(4 * world), *flags]
    config = parse_config(argv)
    stages = {stage.stage: stage for stage in plan(config, world, config.padded_vocab_size(2000))}
    for stage, persistent, saved in run_on_ranks(_measured_memory, world, args=(argv,), timeout=600):
        estimate = stages[stage]
        assert estimate.weights + estimate.gradients + estimate.optimizer == pytest.approx(persistent, rel=0.02)
        held = estimate.activations + max(estimate.recomputed, estimate.head)
        assert held == pytest.approx(saved, rel=0.15), (case, stage)
        assert estimate.total == pytest.approx(persistent + saved, rel=0.15), (case, stage)


def test_dry_run_prints_the_plan_per_stage_and_the_resolved_config_without_starting_a_rank(capsys, monkeypatch):
    import yaml

    from headless_megatron import cli
    from headless_megatron.config import config_from_dict

    monkeypatch.setattr(cli, "launch_local_ranks", lambda *args: pytest.fail("--dry-run started ranks"))
    flags = ["--config", TINY_GPT, "--mock-data", "--vocab-size", "500", "--tensor-model-parallel-size", "2",
             "--pipeline-model-parallel-size", "2", "--global-batch-size", "32"]
    assert cli.main(["--nproc-per-node", "8", "pretrain", *flags, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    table, resolved = printed.split("\nresolved config:\n")
    assert table.splitlines()[0].startswith("memory plan: 8 ranks = TP2 x PP2 x DP2, 4 micro-batches of 4 x 64")
    rows = [line for line in table.splitlines() if re.match(r"\s+\d+ \|", line)]
    config = parse_config(flags)
    assert [int(row.split("|")[2].replace(",", "")) for row in rows] == [
        stage.parameters for stage in plan(config, 8, config.padded_vocab_size(500))]
    assert config_from_dict(yaml.safe_load(resolved)) == config
    assert cli.main(["pretrain", *flags, "--dry-run", "3"]) == 2  # 3 ranks cannot hold TP2 x PP2
    assert "tensor_model_parallel_size" in capsys.readouterr().err
