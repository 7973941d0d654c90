"""The training configuration's schema: one typed dataclass whose fields are Megatron-LM's argument
names, grouped by concern, with the values derived from them.

Each field's docstring (the string right below it) is also the ``--help`` text of its flag, and the
``# ---- Section ----`` comments group the flags in ``--help``
(:func:`~headless_megatron.config.loader.field_docs`).
Each field is checked when a :class:`TrainConfig` is built (type, choices, range:
:mod:`~headless_megatron.config.fields`); the checks that involve several fields or the world size
are :func:`headless_megatron.config.validation.validate`'s, and a model family checks its own keys
(:func:`headless_megatron.models.registry.validate_config` runs both). What the fields imply
(``ffn_size``, ``layout``, ...) is :class:`~headless_megatron.config.derived.DerivedValues`'.

Adding a key: a field in its section below, named as Megatron-LM names the argument (a
``Literal`` for choices, ``X | None`` for an optional value), with its default and its docstring;
its range, if any, in ``fields._RANGES``; its rules across fields in the ``_validate_*``
function of its concern in :mod:`~headless_megatron.config.validation`, or in its model family's
``validate`` when only one family reads it; its Megatron-Core counterpart, if any, in
:func:`headless_megatron.config.megatron.transformer_config`. The flag, ``--help`` text and YAML key
follow from the field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from headless_megatron.config.derived import DerivedValues
from headless_megatron.config.fields import FieldType, annotated_types, checked_value
from headless_megatron.config.reporting import ReportingFields


@dataclasses.dataclass(kw_only=True)
class TrainConfig(ReportingFields, DerivedValues):
    """Everything a training run needs, flat, with Megatron-LM's argument names.

    Fields without a default are required. Change fields with ``dataclasses.replace`` so the new
    values are checked too.
    """

    # ---- Model architecture ----
    model: str = "gpt"
    """Model family, one of those registered in headless_megatron/models/registry.py: gpt (causal
    decoder, predicts the next token) or bert (bidirectional encoder, predicts masked tokens)."""
    num_layers: int
    """Number of transformer layers."""
    hidden_size: int
    """Width of the residual stream, which is also the width of the embeddings CWT contrasts
    against."""
    ffn_hidden_size: int | None = None
    """Inner width of the MLP. None: 4 x hidden_size, or with swiglu Megatron-LM's
    int(4 x hidden_size x 2/3 / 64) x 64, which keeps the parameter count of the three SwiGLU
    matrices close to that of the two GELU ones."""
    num_attention_heads: int
    """Number of query heads."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention. None: one per query head (multi-head
    attention). Unlike Megatron-LM, no --group-query-attention switch is needed."""
    kv_channels: int | None = None
    """Width of each attention head. None: hidden_size / num_attention_heads."""
    seq_length: int
    """Tokens per training sequence."""
    max_position_embeddings: int | None = None
    """Rows of the learned position table (position_embedding_type learned_absolute).
    None: seq_length."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Normalization layer: RMSNorm (Llama) or LayerNorm (GPT-2, Pythia, BERT)."""
    norm_epsilon: float = 1e-5
    """Epsilon of the normalization layers."""
    swiglu: bool = True
    """SwiGLU MLP (gated, SiLU) as in Llama; false: a GELU MLP as in GPT-2, Pythia and BERT."""
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    """Positions: rope (rotary, Llama and Pythia) or learned_absolute (a learned table, GPT-2 and
    BERT)."""
    rotary_base: int = 10000
    """Base of the rotary frequencies."""
    rotary_percent: float = 1.0
    """Fraction of each head's channels that get rotary positions (Pythia: 0.25)."""
    add_bias_linear: bool = False
    """Biases in the attention and MLP linear layers (GPT-2, Pythia and BERT have them, Llama does
    not). Megatron-LM spells false --disable-bias-linear."""
    add_qkv_bias: bool = False
    """Biases on the query, key and value projections alone, as Qwen2 has (add_bias_linear already
    gives every linear layer one)."""
    openai_gelu: bool = False
    """With swiglu false: the tanh approximation of GELU (GPT-2's gelu_new) instead of the exact
    one (BERT's gelu)."""
    transformer_block_type: Literal["pre_ln", "post_ln"] = "pre_ln"
    """Where each layer normalises: pre_ln (before attention and MLP, with a final norm: GPT-2,
    Llama, Megatron BERT) or post_ln (after each residual add, with a norm on the embeddings and
    no final norm: the original BERT). post_ln applies to model bert; its layers are built from
    Megatron-Core's local modules whatever transformer_impl is (NeMo's key of the same name)."""
    num_tokentypes: int = 0
    """Rows of BERT's token-type (segment) table; 0: none. An imported BERT keeps its table (2
    rows); our data has one segment, so every token uses row 0. Applies to model bert."""
    untie_embeddings_and_output_weights: bool = False
    """Give loss ce its own output layer instead of reusing the input embeddings (Pythia unties,
    GPT-2 and BERT tie). loss cwt has no output layer, so this must stay false with it."""
    hidden_dropout: float = 0.0
    """Dropout on the residual stream. Megatron-LM's default is 0.1; 0 here because Pythia and
    Llama-style pretraining use none (the BERT recipes set 0.1, as bert-base does)."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities (0 here for the same reason as hidden_dropout)."""
    init_method_std: float = 0.02
    """Standard deviation of the normal initial weights (output projections use
    std / sqrt(2 x num_layers), as in Megatron)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary up to a multiple of this. Unlike Megatron-LM the padding is not
    multiplied by tensor_model_parallel_size, so checkpoints reshard across TP sizes; it must
    therefore be divisible by tensor_model_parallel_size."""
    vocab_size: int | None = None
    """Vocabulary size before padding. None: the tokenizer's. Needed with mock_data when no
    tokenizer is given."""
    tokenizer: str | None = None
    """Tokenizer (Hugging Face name or path). None: the copy that preprocessing saved with the
    dataset, which is the one to use with a real dataset."""
    transformer_impl: Literal["auto", "transformer_engine", "local"] = "auto"
    """Layer kernels: transformer_engine (fused attention, FP8; needs a GPU), local (Megatron-Core's
    own modules, runs on CPU) or auto (transformer_engine when it is usable)."""

    # ---- Loss ----
    loss: Literal["cwt", "ce"] = "cwt"
    """Training objective: cwt (headless, Contrastive Weight Tying: each output state picks its
    target's input embedding among the batch's targets, no vocabulary projection) or ce (vanilla
    softmax cross-entropy over the vocabulary)."""
    cwt_temperature: float = 1.0
    """Temperature dividing the CWT scores (the paper uses 1 throughout)."""
    cwt_duplicates: Literal["count", "unique"] = "count"
    """Targets that occur several times in the contrast set: count (as in the paper's code, every
    occurrence is a separate negative) or unique (each token id is one candidate)."""
    cwt_negatives: Literal["micro_batch", "data_parallel"] = "micro_batch"
    """Contrast set: micro_batch (the targets of this rank's micro-batch, as in the paper) or
    data_parallel (the targets of the same micro-batch step on every data-parallel rank)."""

    # ---- Masked language modelling (model bert) ----
    masking: Literal["bert", "paper"] = "bert"
    """bert: each position is chosen with probability mask_prob and becomes the mask token 80%,
    a random token 10%, itself 10% of the time. paper: the headless-lm code (from
    electra-pytorch): exactly ceil(mask_prob x length) positions per sequence, 80% of them masked,
    after 10% of all positions were replaced by random tokens."""
    mask_prob: float = 0.15
    """Fraction of the positions that are predicted."""
    mlm_project_masked_only: bool = False
    """loss ce with model bert: apply the vocabulary projection to the masked positions only
    (fewer FLOPs, same loss) instead of to every position as Megatron's BertModel does."""

    # ---- Parallelism ----
    tensor_model_parallel_size: int = 1
    """Tensor-parallel size (TP): ranks that split each layer's matrices."""
    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size (PP): ranks that split the layers into stages."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Layer chunks per pipeline rank for the interleaved 1F1B schedule (smaller pipeline bubble).
    None: one chunk."""
    sequence_parallel: bool = False
    """Split the activations outside attention and MLP along the sequence over the TP ranks (saves
    memory). Needs tensor_model_parallel_size > 1; unlike Megatron-LM, which drops it silently,
    asking for it without TP is an error."""
    use_distributed_optimizer: bool = True
    """Shard the optimizer state and fp32 master weights over the data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduction with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the next forward pass
    (needs use_distributed_optimizer and overlap_grad_reduce; not with pipeline parallelism and
    tied embeddings, see docs/architecture.md)."""
    distributed_timeout_minutes: float = 10
    """How long a rank waits in a collective (and for the others at start-up) before it gives up
    with an error: the bound on how long a job hangs when a node dies or a rank stops responding.
    Fractions are allowed (tests use a few seconds); must cover the slowest checkpoint save or
    dataset index build, during which the other ranks wait."""

    # ---- Training ----
    micro_batch_size: int
    """Sequences per rank per forward/backward pass. With loss cwt it also sets the number of
    negatives (micro_batch_size x seq_length targets), so CWT loss values are comparable only at
    equal micro_batch_size."""
    global_batch_size: int
    """Sequences per optimizer step over all data-parallel ranks; the gradient is accumulated over
    global_batch_size / (micro_batch_size x data-parallel size) micro-batches."""
    train_iters: int | None = None
    """Optimizer steps to train for. Required unless train_samples is given, which sets it."""
    train_samples: int | None = None
    """Samples to train for, instead of train_iters (Megatron-LM's sample-based training, which
    rampup_batch_size needs): train_iters follows (the ramp's iterations, then full global batches;
    a last partial one is dropped), and the learning-rate schedule counts samples
    (lr_warmup_samples, lr_decay_samples, lr_wsd_decay_samples)."""
    rampup_batch_size: list[int] | None = None
    """Batch-size ramp-up, three numbers: start increment samples (Megatron-LM's): the global batch
    starts at start and grows by increment, evenly over the first samples samples, up to
    global_batch_size; each size must be a multiple of micro_batch_size x data-parallel size.
    Needs train_samples."""
    seed: int = 1234
    """Seed of the initial weights, data order, dropout and masking. The initial weights depend on
    it alone, not on the parallel layout."""
    deterministic_mode: bool = False
    """Deterministic kernels and collectives, so that two runs of the same config on the same
    hardware give bit-identical losses and checkpoints (runtime/determinism.py). On GPUs it costs
    speed: attention keeps to SDPA's flash and math kernels (their backward is deterministic) and
    cuDNN stops benchmarking; NCCL_ALGO defaults to Ring."""
    bf16: bool = False
    """bfloat16 weights and activations with fp32 master weights and gradient reduction."""
    fp16: bool = False
    """float16 weights and activations with dynamic loss scaling (prefer bf16 where supported)."""
    initial_loss_scale: float = 2.0**32
    """Starting loss scale of fp16's dynamic loss scaler."""
    fp8_format: Literal["e4m3", "hybrid"] | None = None
    """FP8 matrix multiplications through Transformer Engine: e4m3, or hybrid (e4m3 forward, e5m2
    gradients). None: no FP8."""
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    """FP8 scaling recipe (mxfp8 needs Blackwell GPUs)."""
    fp8_amax_history_len: int = 1
    """Steps of amax history kept by the delayed-scaling recipe."""
    fp8_amax_compute_algo: Literal["most_recent", "max"] = "most_recent"
    """How the delayed-scaling recipe picks the amax from its history."""
    recompute_granularity: Literal["full", "selective"] | None = None
    """Activation recomputation: selective (attention internals only, cheap) or full (whole
    layers, see recompute_method). None: keep all activations."""
    recompute_method: Literal["uniform", "block"] | None = None
    """With full recomputation: uniform (checkpoint groups of recompute_num_layers layers) or block
    (recompute the first recompute_num_layers layers of each pipeline stage)."""
    recompute_num_layers: int | None = None
    """Layers per group (uniform) or per stage (block) for full recomputation."""

    # ---- Optimizer and learning-rate schedule ----
    optimizer: Literal["adam", "sgd"] = "adam"
    """adam (Megatron's Adam with decoupled weight decay, i.e. AdamW) or sgd."""
    lr: float
    """Peak learning rate, reached at the end of the warmup."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    lr_decay_style: Literal["constant", "linear", "cosine", "inverse-square-root", "WSD"] = "linear"
    """Decay after the warmup, from lr to min_lr over lr_decay_iters. WSD (warmup-stable-decay):
    lr held after the warmup, then decayed to min_lr over the last lr_wsd_decay_iters of
    lr_decay_iters in lr_wsd_decay_style; one long run can be cooled down from several of its
    stable-phase checkpoints (resume with a shorter train_iters, lr_decay_iters and
    --override-opt-param-scheduler)."""
    lr_warmup_iters: int = 0
    """Iterations of linear warmup from 0 to lr."""
    lr_decay_iters: int | None = None
    """Iterations over which the learning rate decays (may exceed train_iters, to stop part-way).
    None: train_iters."""
    lr_wsd_decay_iters: int | None = None
    """With lr_decay_style WSD: iterations of the final decay, at the end of lr_decay_iters."""
    lr_warmup_samples: int = 0
    """With train_samples: samples of linear warmup from 0 to lr (instead of lr_warmup_iters)."""
    lr_decay_samples: int | None = None
    """With train_samples: samples over which the learning rate decays. None: train_samples."""
    lr_wsd_decay_samples: int | None = None
    """With train_samples and lr_decay_style WSD: samples of the final decay."""
    lr_wsd_decay_style: Literal["exponential", "linear", "cosine", "minus_sqrt"] = "exponential"
    """With lr_decay_style WSD: the shape of the final decay (Megatron-Core's; minus_sqrt is
    1 - sqrt(progress))."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and norm weights)."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay (the paper's decoders use 0.95)."""
    adam_eps: float = 1e-8
    """Adam's epsilon."""
    sgd_momentum: float = 0.9
    """Momentum of optimizer sgd."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""

    # ---- Data ----
    data_path: list[str] | None = None
    """Dataset prefixes (files PREFIX.bin and PREFIX.idx), as in Megatron-LM: PREFIX [PREFIX ...]
    for one dataset or an even mix, or WEIGHT PREFIX [WEIGHT PREFIX ...] for a weighted blend. In
    YAML a list or one string of space-separated items. Required unless mock_data."""
    split: str = "969,30,1"
    """Train, validation and test shares of every dataset, comma-separated (normalised to sum to
    1; missing shares are 0)."""
    mock_data: bool = False
    """Synthetic random tokens instead of data_path (which is then ignored), for smoke tests and
    benchmarks. Needs vocab_size or tokenizer."""
    data_cache_path: str | None = None
    """Where Megatron caches the dataset sample indices. None: next to each dataset."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    eod_mask_loss: bool = False
    """Leave out of the loss the positions whose input is the end-of-document token (which would
    predict the first token of an unrelated document)."""

    # ---- Checkpointing ----
    save: str | None = None
    """Directory to save checkpoints to (one iter_NNNNNNN folder per save). None: no checkpoints."""
    load: str | None = None
    """Directory to resume from: its latest checkpoint, with optimizer, scheduler, RNG and
    iteration. Equal to save, a missing or empty directory starts a fresh run (with a line saying
    so), so preemptible jobs resume from their own saves; any other directory without a checkpoint
    is an error. Without a latest_checkpointed_iteration.txt, the newest complete iter_NNNNNNN is
    loaded."""
    load_fallback: bool = False
    """When the latest checkpoint under load is incomplete (a truncated or missing shard), resume
    from the newest complete earlier one instead of stopping with an error."""
    save_interval: int | None = None
    """Save every this many iterations (and at the end of training, and on exit). None: only at
    the end and on exit."""
    keep_last_checkpoints: int | None = None
    """Keep only this many of the newest checkpoints in save: each older one is deleted once a newer
    one is published, never the one latest_checkpointed_iteration.txt names nor one being written.
    None: keep every checkpoint. (Megatron-LM keeps all; torchtitan's keep_latest_k.)"""
    keep_checkpoint_interval: int | None = None
    """With keep_last_checkpoints, also keep every checkpoint whose iteration is a multiple of this
    (a multiple of save_interval), e.g. for evaluations after the run."""
    async_save: bool = False
    """Write checkpoints in the background while training goes on (Megatron-Core's async
    torch_dist strategy): the loop waits only while the state is staged. One write at a time (a
    save that comes first waits for it); a checkpoint becomes the latest once every rank's write
    has finished; a stop signal and the end of training wait for the write in flight."""
    ckpt_format: Literal["torch_dist"] = "torch_dist"
    """Checkpoint format. Only torch_dist (Megatron-Core distributed checkpoints, which reshard
    across TP and PP sizes) is supported."""
    no_load_optim: bool = False
    """When loading, skip the optimizer and scheduler state."""
    no_load_rng: bool = False
    """When loading, skip the RNG state."""
    override_opt_param_scheduler: bool = False
    """When resuming, apply this run's learning-rate schedule (lr, min_lr, lr_warmup_iters,
    lr_decay_iters or train_iters, lr_decay_style, weight_decay) from the checkpoint's iteration on,
    where it differs from the checkpoint's. Without it or use_checkpoint_opt_param_scheduler, a
    changed schedule is refused."""
    use_checkpoint_opt_param_scheduler: bool = False
    """When resuming, keep the checkpoint's learning-rate schedule and ignore this run's schedule
    keys where they differ."""
    override_checkpoint_data: bool = False
    """When resuming, accept another seq_length, vocabulary or tokenizer than the checkpoint's
    (each changes what a sample is; the data position stays counted in samples). Without it such a
    resume is refused."""
    finetune: bool = False
    """Load only the weights from load and start at iteration 0 with a fresh optimizer and
    schedule (Megatron-LM's --finetune)."""
    pretrained: str | None = None
    """Checkpoint directory whose weights start a fine-tuning run (iteration 0, fresh optimizer).
    Used only while load holds no checkpoint, so an interrupted fine-tuning run resumes from its
    own checkpoints. A headless (CWT) model gets its new output layer initialised from its input
    embeddings, as in the paper."""
    freeze_body: bool = False
    """Train only the output layer and keep the rest frozen (a linear probe; the headless-lm code's
    --mode probe). Needs pretrained, loss ce and untie_embeddings_and_output_weights."""
    exit_duration_in_mins: float | None = None
    """Save and stop after this many minutes of training (e.g. the SLURM time limit minus a
    margin). None: no limit."""
    exit_interval: int | None = None
    """Save and stop once the iteration number is a multiple of this (Megatron-LM's
    --exit-interval); resuming continues the same schedule. None: run to train_iters."""
    exit_signal_handler: bool = True
    """On SIGTERM (SLURM preemption, scancel) finish the current iteration, save and exit.
    Megatron-LM's default is false."""
    max_skipped_iters: int = 10
    """Stop with an error after this many consecutive iterations whose gradients were NaN or
    infinite (the optimizer skips such steps)."""

    def __post_init__(self) -> None:
        for name, field_type in field_types().items():
            setattr(self, name, checked_value(name, getattr(self, name), field_type))
        if self.train_iters is None and self.train_samples is not None:
            self.train_iters = self.iterations_for_samples()  # as Megatron-LM's update_train_iters

    # ---- Files ----

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain YAML/JSON-serialisable values, in declaration order with the
        reporting fields (a base class, so declared first) last: the model and the run read first
        (for checkpoints, metrics and config.yaml; :func:`~headless_megatron.config.loader.config_from_dict`
        reads it back)."""
        values = dataclasses.asdict(self)
        reporting = [field.name for field in dataclasses.fields(ReportingFields)]  # a base: listed last
        return {**{k: v for k, v in values.items() if k not in reporting}, **{k: values[k] for k in reporting}}

    def to_yaml(self, path: str | Path) -> None:
        """Write every field to a YAML file that
        :func:`~headless_megatron.config.loader.config_from_yaml` reads back."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---- Field types ----


def field_types() -> dict[str, FieldType]:
    """Each field's :class:`~headless_megatron.config.fields.FieldType`, in declaration order."""
    return annotated_types(TrainConfig)
