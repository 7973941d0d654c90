"""The memory a run needs per rank, before it is launched (``pretrain --dry-run``).

For each pipeline stage, on one of its ranks (the TP and DP ranks of a stage hold the same amounts):

- **parameters**: the stage's transformer layers (TP-sharded matrices, replicated norms and row-
  parallel biases) and, on the first and last stages, the family's embeddings and head
  (:meth:`~headless_megatron.models.family.ModelFamily.stage_parameters`), counted exactly: the tests
  compare them with the built model;
- **weights, gradients, optimizer state**, in bytes per parameter as Megatron-Core allocates them
  (Megatron-LM's ``theoretical_memory_usage``): weights in the training dtype, gradients in fp32
  (``grad_reduce_in_fp32``), and for Adam two fp32 moments plus, with bf16/fp16, fp32 main weights;
  the distributed optimizer shards the optimizer state over the data-parallel ranks;
- **activations** saved for backward, per micro-batch and layer (Korthikanti et al., "Reducing
  Activation Recomputation in Large Transformer Models", 2022, adapted to this project's layers:
  fused attention that never stores the score matrix, SwiGLU or GELU MLP, rotary positions), divided
  by TP where the tensor is TP-sharded and, with sequence parallelism, everywhere; with full
  recomputation only the groups' inputs, plus one group's activations while it is recomputed
  (not at the same time as the head's buffers); times the micro-batches a stage holds at once under 1F1B
  (``pp - stage``, at most the number of micro-batches; interleaving adds Megatron-LM's
  ``1 + (pp - 1) / (pp x vpp)``);
- **head buffers** of the last stage for one micro-batch: the vocabulary-parallel logits and their
  softmax for cross-entropy, the CWT scores against the in-batch candidates for ``loss: cwt``.

What it leaves out: the allocator's fragmentation and caching, communication buffers, and the
CUDA context (about 0.5-1 GiB per GPU); the plan says so in its output.
"""

from __future__ import annotations

from dataclasses import dataclass

from headless_megatron.config import TrainConfig
from headless_megatron.models.registry import family_of

GIB = 2**30


@dataclass
class StagePlan:
    """The estimate for one rank of pipeline stage ``stage``, in bytes (parameters: a count)."""

    stage: int
    layers: int
    parameters: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    """Saved for backward by the micro-batches in flight (with recomputation: what stays saved)."""
    recomputed: float
    """With full recomputation, what a recomputed group saves while its backward runs."""
    head: float

    @property
    def total(self) -> float:
        # A recomputed group runs its forward after the head's backward has freed the head's buffers.
        return self.weights + self.gradients + self.optimizer + self.activations + max(self.recomputed, self.head)


def layer_parameters(config: TrainConfig, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank."""
    h, f = config.hidden_size, config.ffn_size
    q, kv = config.num_attention_heads * config.head_dim, config.query_groups * config.head_dim
    fc1 = f * (2 if config.swiglu else 1)
    biased = config.add_bias_linear
    qkv = (h + int(biased or config.add_qkv_bias)) * (q + 2 * kv) // tp
    projection = q * h // tp + (h if biased else 0)  # a row-parallel bias is whole on every rank
    mlp = (h + int(biased)) * fc1 // tp + f * h // tp + (h if biased else 0)
    return 2 * config.norm_parameters + qkv + projection + mlp


def bytes_per_parameter(config: TrainConfig, data_parallel: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes per parameter on one rank."""
    mixed = config.bf16 or config.fp16
    weights = 2 if mixed else 4
    main_weights = 4 if mixed else 0
    moments = 8 if config.optimizer == "adam" else 4 if config.sgd_momentum else 0
    optimizer = main_weights + moments
    if config.use_distributed_optimizer:
        optimizer /= data_parallel
    return weights, 4, optimizer


def layer_activation_elements(config: TrainConfig, tp: int) -> float:
    """Elements per token that one layer saves for backward on one TP rank, as this project's layers
    save them (measured with saved-tensor hooks in ``tests/test_training_memory_plan.py``):

    - each norm's input, the normalised input for RMSNorm (built from torch ops), and its output,
      which the next linear saves: 2 x 2h with LayerNorm, 2 x 3h with RMSNorm; sharded over TP only
      with sequence parallelism (a linear then saves its sequence shard, not the gathered input);
    - attention: the QKV projection's output (q + 2 kv), the rotated q and k with rotary positions
      (q + kv), the fused kernel's output (q); the score matrix is never stored;
    - MLP: fc1's output and the activation's outputs: 5 f with SwiGLU (both halves, SiLU, product),
      2 f with GELU.
    """
    h, f = config.hidden_size, config.ffn_size
    q, kv = config.num_attention_heads * config.head_dim, config.query_groups * config.head_dim
    sequence_parallel = tp if config.sequence_parallel else 1
    norms = (4 if config.normalization == "LayerNorm" else 6) * h / sequence_parallel
    rotated = q + kv if config.position_embedding_type == "rope" else 0
    attention = (q + 2 * kv + rotated + q) / tp
    mlp = (5 if config.swiglu else 2) * f / tp
    return norms + attention + mlp


def activation_bytes(config: TrainConfig, tp: int, layers: int) -> tuple[float, float]:
    """(bytes one micro-batch's forward keeps for backward, bytes a recomputed group saves while
    its backward runs) on one rank of a stage of ``layers``. Full recomputation keeps each group's
    input: ``uniform`` groups of ``recompute_num_layers``, ``block`` the first ``recompute_num_layers``
    layers one by one (the others keep everything)."""
    tokens = config.seq_length * config.micro_batch_size
    size = 2 if config.bf16 or config.fp16 else 4
    sequence_parallel = tp if config.sequence_parallel else 1
    masks = (2 * config.hidden_size / sequence_parallel) if config.hidden_dropout > 0 else 0  # 1-byte masks
    full = tokens * (layer_activation_elements(config, tp) * size + masks)
    if config.recompute_granularity != "full":
        return layers * full, 0.0
    group_input = tokens * config.hidden_size / sequence_parallel * size
    group = min(config.recompute_num_layers or 1, layers)
    if config.recompute_method == "uniform":
        return -(-layers // group) * group_input, group * full
    return group * group_input + (layers - group) * full, full


def head_bytes(config: TrainConfig, padded_vocab: int, tp: int, data_parallel: int = 1) -> float:
    """What the last stage saves after its layers, for one micro-batch: the final norm's input (and
    RMSNorm's normalised input); for CE the output layer's input and the fp32 softmax over this TP
    rank's vocabulary; for CWT the queries, the candidates' embeddings and the fp32 scores of every
    position against every candidate (at most one per position, of every data-parallel rank with
    ``cwt_negatives: data_parallel``), vocab-sharded over TP."""
    h, positions = config.hidden_size, config.seq_length * config.micro_batch_size
    size = 2 if config.bf16 or config.fp16 else 4
    sequence_parallel = tp if config.sequence_parallel else 1
    final_norm = (1 if config.normalization == "LayerNorm" else 2) * positions * h / sequence_parallel * size
    if config.loss == "cwt":
        gathered = data_parallel if config.cwt_negatives == "data_parallel" else 1
        candidates = min(padded_vocab, positions * gathered) / tp
        return final_norm + positions * candidates * 4 + (positions + candidates) * h * size
    return final_norm + positions * h / sequence_parallel * size + positions * padded_vocab / tp * 4


def in_flight_micro_batches(config: TrainConfig, stage: int, num_microbatches: int) -> float:
    """Micro-batches whose activations a rank of ``stage`` holds at once under 1F1B."""
    pp, vpp = config.pipeline_model_parallel_size, config.virtual_pipeline_model_parallel_size
    held = min(num_microbatches, pp - stage)
    if vpp:
        held *= 1 + (pp - 1) / (pp * vpp)
    return held


def plan(config: TrainConfig, world_size: int, padded_vocab: int) -> list[StagePlan]:
    """One :class:`StagePlan` per pipeline stage for a launch of ``world_size`` ranks."""
    tp, pp = config.tensor_model_parallel_size, config.pipeline_model_parallel_size
    dp = config.data_parallel_size(world_size)
    microbatches = config.num_microbatches(world_size)
    weight_bytes, gradient_bytes, optimizer_bytes = bytes_per_parameter(config, dp)
    family = family_of(config)
    layers = config.num_layers // pp
    stages = []
    for stage in range(pp):
        first, last = stage == 0, stage == pp - 1
        parameters = layers * layer_parameters(config, tp) + family.stage_parameters(
            config, padded_vocab, tp, first=first, last=last)
        kept, recomputed = activation_bytes(config, tp, layers)
        stages.append(StagePlan(
            stage=stage, layers=layers, parameters=parameters, weights=parameters * weight_bytes,
            gradients=parameters * gradient_bytes, optimizer=parameters * optimizer_bytes,
            activations=in_flight_micro_batches(config, stage, microbatches) * kept, recomputed=recomputed,
            head=head_bytes(config, padded_vocab, tp, dp) if last else 0.0,
        ))
    return stages


def plan_table(config: TrainConfig, world_size: int, padded_vocab: int) -> str:
    """The plan as the lines ``pretrain --dry-run`` prints."""
    tp, pp = config.tensor_model_parallel_size, config.pipeline_model_parallel_size
    dp = config.data_parallel_size(world_size)
    lines = [
        f"memory plan: {world_size} ranks = TP{tp} x PP{pp} x DP{dp}"
        + (f" (VPP{config.virtual_pipeline_model_parallel_size})" if config.virtual_pipeline_model_parallel_size
           else "")
        + f", {config.num_microbatches(world_size)} micro-batches of {config.micro_batch_size} x "
        f"{config.seq_length} per step, {'bf16' if config.bf16 else 'fp16' if config.fp16 else 'fp32'}, "
        f"{config.optimizer}{' (distributed)' if config.use_distributed_optimizer else ''}"
        + (f", recompute {config.recompute_granularity}" if config.recompute_granularity else "")
        + (", sequence parallel" if config.sequence_parallel else ""),
        "stage | layers | parameters | weights GiB | gradients GiB | optimizer GiB | activations GiB | "
        "recomputed GiB | head GiB | total GiB",
    ]
    for stage in plan(config, world_size, padded_vocab):
        lines.append(
            f"{stage.stage:>5} | {stage.layers:>6} | {stage.parameters:>10,} | {stage.weights / GIB:>11.2f} | "
            f"{stage.gradients / GIB:>13.2f} | {stage.optimizer / GIB:>13.2f} | {stage.activations / GIB:>15.2f} | "
            f"{stage.recomputed / GIB:>14.2f} | {stage.head / GIB:>8.2f} | {stage.total / GIB:>9.2f}"
        )
    lines.append("per rank of each stage; not counted: the allocator's caching and fragmentation, communication "
                 "buffers, the CUDA context (0.5-1 GiB per GPU)")
    return "\n".join(lines)
