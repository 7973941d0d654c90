"""The training configuration: one typed dataclass whose fields are Megatron-LM's argument names.

A run is described by a YAML file (``configs/*.yaml``) whose keys are field names, overridden by
command-line flags spelled the Megatron-LM way::

    headless-megatron pretrain --config configs/gpt_headless_160m.yaml \\
        --tensor-model-parallel-size 2 --lr 3e-4 --data-path 0.3 owt2_text 0.7 wiki_text

Precedence, lowest first: the field defaults, ``defaults`` given by the program, the YAML file, the
flags. Flag conventions:

- every field ``x_y`` is the flag ``--x-y``; abbreviations are refused (Megatron-LM does the same);
- a bool field is ``--x`` (true), ``--no-x`` (false) or ``--x true|false`` (for scripts);
- an optional field is reset with ``--x none``;
- a list field takes several values: ``--data-path PREFIX`` or ``--data-path W1 P1 W2 P2``.

Every mistake stops before any work with a one-line :class:`ConfigError` that starts with the key
(and the file, for file errors), says what is expected and, for a typo, suggests the closest key.
Each field is checked when a :class:`TrainConfig` is built (type, choices, range);
:meth:`TrainConfig.validate` adds the checks that involve several fields or the world size.

Each field's docstring (the string right below it) is also the ``--help`` text of its flag, and the
``# ---- Section ----`` comments group the flags in ``--help``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib.util
import inspect
import itertools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from headless_megatron.errors import UserError

if typing.TYPE_CHECKING:
    from megatron.core.transformer.transformer_config import TransformerConfig


class ConfigError(UserError):
    """A configuration mistake, in one line that starts with the key (or file) at fault."""


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run needs, flat, with Megatron-LM's argument names.

    Fields without a default are required. Change fields with ``dataclasses.replace`` so the new
    values are checked too.
    """

    # ---- Model architecture ----
    model: Literal["gpt", "bert"] = "gpt"
    """Network: gpt (causal decoder, predicts the next token) or bert (bidirectional encoder,
    predicts masked tokens)."""
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
    train_iters: int
    """Optimizer steps to train for."""
    seed: int = 1234
    """Seed of the initial weights, data order, dropout and masking. The initial weights depend on
    it alone, not on the parallel layout."""
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
    lr_decay_style: Literal["constant", "linear", "cosine", "inverse-square-root"] = "linear"
    """Decay after the warmup, from lr to min_lr over lr_decay_iters."""
    lr_warmup_iters: int = 0
    """Iterations of linear warmup from 0 to lr."""
    lr_decay_iters: int | None = None
    """Iterations over which the learning rate decays (may exceed train_iters, to stop part-way).
    None: train_iters."""
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
    ckpt_format: Literal["torch_dist"] = "torch_dist"
    """Checkpoint format. Only torch_dist (Megatron-Core distributed checkpoints, which reshard
    across TP and PP sizes) is supported."""
    no_load_optim: bool = False
    """When loading, skip the optimizer and scheduler state."""
    no_load_rng: bool = False
    """When loading, skip the RNG state."""
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

    # ---- Logging and evaluation ----
    log_interval: int = 10
    """Print and record the training metrics every this many iterations."""
    eval_interval: int = 1000
    """Evaluate on the validation split every this many iterations (and at the end)."""
    eval_iters: int = 10
    """Validation batches (of global_batch_size sequences) per evaluation; 0 disables
    evaluation."""
    log_dir: str | None = None
    """Directory for the metrics log. None: the save directory (no metrics file when both are
    unset)."""
    wandb_project: str | None = None
    """Weights & Biases project to log to. None: no W&B logging."""
    wandb_exp_name: str | None = None
    """Weights & Biases run name. None: W&B picks one."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    """Weights & Biases mode, used only when wandb_project is set."""

    def __post_init__(self) -> None:
        for name in _field_types():
            setattr(self, name, _checked_value(name, getattr(self, name)))

    # ---- Construction ----

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a mapping of field names (such as :meth:`to_dict`'s), checked field by
        field; raises :class:`ConfigError` on an unknown key, a bad value or a missing required
        key."""
        return _build(_checked_mapping(values, "key"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """A config from a YAML file; errors start with the file's path."""
        values = _read_yaml(path)
        try:
            return _build(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain YAML/JSON-serialisable values, in declaration order (for
        checkpoints and metrics; :meth:`from_dict` reads it back)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write every field to a YAML file that :meth:`from_yaml` reads back."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ---- Derived values ----

    @property
    def ffn_size(self) -> int:
        """The MLP's inner width, with ffn_hidden_size's default resolved."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.swiglu:
            return int((4 * self.hidden_size * 2 / 3) / 64) * 64
        return 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        """Width of each attention head, with kv_channels' default resolved."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        """Key/value heads, with num_query_groups' default resolved."""
        return self.num_query_groups or self.num_attention_heads

    @property
    def max_positions(self) -> int:
        """Rows of the position table, with max_position_embeddings' default resolved."""
        return self.max_position_embeddings or self.seq_length

    @property
    def decay_iters(self) -> int:
        """Iterations of learning-rate decay, with lr_decay_iters' default resolved."""
        return self.lr_decay_iters or self.train_iters

    @property
    def tokens_per_iteration(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return self.global_batch_size * self.seq_length

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        """The argument of that name of Megatron's GPTModel and BertModel."""
        return not self.untie_embeddings_and_output_weights

    @property
    def metrics_dir(self) -> str | None:
        """Where the metrics log goes: log_dir, else save, else nowhere (None)."""
        return self.log_dir or self.save

    @property
    def wandb_enabled(self) -> bool:
        """Whether to log to Weights & Biases."""
        return self.wandb_project is not None and self.wandb_mode != "disabled"

    def data_blend(self) -> tuple[list[str], list[float] | None] | None:
        """data_path as Megatron's dataset blend: (prefixes, weights or None); None without
        data_path."""
        return None if self.data_path is None else _parse_blend(self.data_path)

    def padded_vocab_size(self, vocab_size: int) -> int:
        """vocab_size rounded up to a multiple of make_vocab_size_divisible_by (50277 -> 50304
        at 128). Independent of the TP size, so checkpoints reshard across TP sizes."""
        if vocab_size < 1:
            _fail("vocab_size", f"expected a positive integer, got {vocab_size}")
        multiple = self.make_vocab_size_divisible_by
        return -(-vocab_size // multiple) * multiple

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks in a launch of world_size ranks."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if world_size < 1 or world_size % (tp * pp):
            _fail(
                "tensor_model_parallel_size", f"the world size {world_size} is not divisible by "
                f"tensor x pipeline model-parallel size = {tp} x {pp} = {tp * pp}; launch a "
                f"multiple of {tp * pp} ranks or change the parallel sizes"
            )
        return world_size // (tp * pp)

    def num_microbatches(self, world_size: int) -> int:
        """Micro-batches each rank accumulates per optimizer step."""
        dp = self.data_parallel_size(world_size)
        per_pass = self.micro_batch_size * dp
        if self.global_batch_size % per_pass:
            _fail(
                "global_batch_size", f"{self.global_batch_size} is not divisible by "
                f"micro_batch_size x data-parallel size = {self.micro_batch_size} x {dp} = "
                f"{per_pass}; use a multiple of {per_pass} or change micro_batch_size"
            )
        return self.global_batch_size // per_pass

    # ---- Cross-field checks ----

    def validate(self, world_size: int) -> None:
        """Check what involves several fields or the world size; raises :class:`ConfigError`."""
        self._validate_model()
        self._validate_objective()
        self._validate_training()
        self._validate_layout(world_size)

    def _validate_model(self) -> None:
        tp = self.tensor_model_parallel_size
        heads, groups = self.num_attention_heads, self.query_groups
        if self.kv_channels is None and self.hidden_size % heads:
            _fail(
                "hidden_size", f"{self.hidden_size} is not divisible by num_attention_heads "
                f"{heads}; change one of them or set kv_channels"
            )
        if heads % groups:
            _fail("num_query_groups", f"{groups} does not divide num_attention_heads {heads}")
        if self.ffn_size < 1:
            _fail(
                "ffn_hidden_size", f"the SwiGLU default int(4 x {self.hidden_size} x 2/3 / 64) x 64 "
                "is 0 for so small a hidden_size; set ffn_hidden_size"
            )
        if self.position_embedding_type == "learned_absolute" and self.max_positions < self.seq_length:
            _fail(
                "max_position_embeddings", f"{self.max_positions} is below seq_length "
                f"{self.seq_length}; a learned position table needs a row per position"
            )
        for key, size, what in (
            ("num_attention_heads", heads, "attention heads"),
            ("num_query_groups", groups, "key/value heads"),
            ("ffn_hidden_size", self.ffn_size, "MLP columns"),
        ):
            if size % tp:
                _fail(
                    key, f"{size} is not divisible by tensor_model_parallel_size {tp}; each TP "
                    f"rank holds an equal share of the {what}"
                )
        if self.make_vocab_size_divisible_by % tp:
            _fail(
                "make_vocab_size_divisible_by", f"{self.make_vocab_size_divisible_by} is not "
                f"divisible by tensor_model_parallel_size {tp}; the padded vocabulary is split "
                f"evenly over TP ranks: use a multiple of {tp}, e.g. "
                f"{math.lcm(self.make_vocab_size_divisible_by, tp)}"
            )
        if self.fp8_format is not None and self.transformer_impl == "local":
            _fail("fp8_format", "needs Transformer Engine; set transformer_impl auto or transformer_engine")

    def _validate_objective(self) -> None:
        if self.loss == "cwt" and self.untie_embeddings_and_output_weights:
            _fail(
                "untie_embeddings_and_output_weights", "loss cwt scores against the input "
                "embeddings and has no output layer to untie; set it false or use loss ce"
            )
        if self.mlm_project_masked_only and (self.model, self.loss) != ("bert", "ce"):
            _fail("mlm_project_masked_only", "applies to model bert with loss ce only")
        if self.freeze_body:
            if self.pretrained is None:
                _fail("freeze_body", "needs pretrained (the checkpoint whose body stays frozen)")
            if self.loss != "ce" or not self.untie_embeddings_and_output_weights:
                _fail(
                    "freeze_body", "trains an output layer only: set loss ce and "
                    "untie_embeddings_and_output_weights true"
                )

    def _validate_training(self) -> None:
        if self.bf16 and self.fp16:
            _fail("fp16", "cannot be combined with bf16; choose one")
        if self.data_path is None and not self.mock_data:
            _fail("data_path", "required unless mock_data; pass --data-path PREFIX (or --mock-data)")
        if self.mock_data and self.vocab_size is None and self.tokenizer is None:
            _fail("vocab_size", "mock_data needs vocab_size or tokenizer to know the vocabulary")
        if self.eval_iters and _split_shares(self.split)[1] == 0:
            _fail(
                "eval_iters", f"{self.eval_iters} validation batches, but split '{self.split}' "
                "leaves no validation data; set eval_iters 0 or give split a validation share"
            )
        if self.lr_warmup_iters >= self.decay_iters:
            _fail(
                "lr_warmup_iters", f"{self.lr_warmup_iters} must be below lr_decay_iters "
                f"{self.decay_iters} (train_iters when unset), as Megatron's scheduler requires"
            )
        if self.min_lr > self.lr:
            _fail("min_lr", f"{self.min_lr} is above lr {self.lr}")
        if self.overlap_param_gather and not (self.use_distributed_optimizer and self.overlap_grad_reduce):
            _fail("overlap_param_gather", "needs use_distributed_optimizer and overlap_grad_reduce")
        # Megatron DDP waits for a parameter's all-gather in the forward pre-hook of the module that
        # owns it; with loss cwt the last stage's tied copy of the embeddings belongs to an output
        # layer whose forward never runs, so CWT would read it before its all-gather finished.
        if self.overlap_param_gather and self.pipeline_model_parallel_size > 1 and self.loss == "cwt":
            _fail(
                "overlap_param_gather", "cannot be combined with pipeline_model_parallel_size > 1 and "
                "loss cwt (the last stage's copy of the embeddings would be read before its all-gather); "
                "drop --overlap-param-gather"
            )
        if self.finetune and self.load is None:
            _fail(
                "finetune", "needs load (the checkpoint whose weights to start from); to start "
                "from another run's checkpoint set pretrained instead"
            )
        self._validate_recompute()

    def _validate_recompute(self) -> None:
        granularity, method, count = (
            self.recompute_granularity, self.recompute_method, self.recompute_num_layers,
        )
        if granularity == "full" and (method is None or count is None):
            _fail(
                "recompute_granularity", "full needs recompute_method (uniform or block) and "
                "recompute_num_layers"
            )
        if granularity != "full" and (method is not None or count is not None):
            key = "recompute_method" if method is not None else "recompute_num_layers"
            _fail(key, "applies only with recompute_granularity full")
        layers_per_chunk = self.num_layers // (
            self.pipeline_model_parallel_size * (self.virtual_pipeline_model_parallel_size or 1)
        )
        if count is not None and count > layers_per_chunk:
            _fail(
                "recompute_num_layers", f"{count} exceeds the {layers_per_chunk} layers of each "
                "pipeline stage"
            )

    def _validate_layout(self, world_size: int) -> None:
        tp, pp, vpp = (
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.virtual_pipeline_model_parallel_size,
        )
        if self.sequence_parallel and tp == 1:
            _fail(
                "sequence_parallel", "needs tensor_model_parallel_size > 1; pass "
                "--no-sequence-parallel or raise --tensor-model-parallel-size"
            )
        if self.sequence_parallel and self.seq_length % tp:
            _fail(
                "seq_length", f"{self.seq_length} is not divisible by tensor_model_parallel_size "
                f"{tp}, which sequence_parallel splits it over"
            )
        if vpp is not None and pp == 1:
            _fail("virtual_pipeline_model_parallel_size", "needs pipeline_model_parallel_size > 1")
        chunks = pp * (vpp or 1)
        if self.num_layers % chunks:
            stages = f"pipeline_model_parallel_size {pp}" if vpp is None else (
                f"pipeline x virtual pipeline size = {pp} x {vpp} = {chunks}"
            )
            _fail("num_layers", f"{self.num_layers} is not divisible by {stages}")
        microbatches = self.num_microbatches(world_size)
        if vpp is not None and microbatches % pp:
            _fail(
                "global_batch_size", f"gives {microbatches} micro-batches per step, which the "
                f"interleaved schedule needs to be a multiple of pipeline_model_parallel_size {pp}"
            )

    # ---- Megatron-Core ----

    def transformer_config(self, backend: str, *, on_gpu: bool | None = None) -> TransformerConfig:
        """Megatron-Core's ``TransformerConfig`` for this run.

        ``backend`` is the resolved kernel backend, ``transformer_engine`` or ``local``
        (``models.specs.kernel_backend(transformer_impl)``); ``on_gpu`` defaults to whether CUDA is
        available. Fused kernels are switched on only where they can run: never on CPU, and the
        CUDA-extension ones only when installed. ``calculate_per_token_loss`` is always on: loss
        functions return (sum, token count) and gradients are scaled by 1/tokens over the whole
        global batch. The loop still sets ``finalize_model_grads_func`` (and ``grad_scale_func`` for
        fp16)."""
        import torch
        import torch.nn.functional as F
        from megatron.core.transformer.transformer_config import TransformerConfig

        if backend not in ("transformer_engine", "local"):
            _fail("transformer_impl", f"backend must be transformer_engine or local, got {backend!r}")
        if self.fp8_format is not None and backend != "transformer_engine":
            _fail("fp8_format", "needs the transformer_engine backend")
        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        te = on_gpu and backend == "transformer_engine"
        dtype = torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.query_groups,
            kv_channels=self.head_dim,
            normalization=self.normalization,
            layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=self.swiglu,
            activation_func=F.silu if self.swiglu else F.gelu,
            add_bias_linear=self.add_bias_linear,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=self.virtual_pipeline_model_parallel_size,
            # Megatron-LM's p2p setting with virtual stages: each send and receive on its own,
            # even/odd ranks in opposite orders. Batched, a PP2 rank's two messages to its one
            # neighbour (activation forward, gradient back) can be matched to the wrong receives.
            overlap_p2p_comm=self.virtual_pipeline_model_parallel_size is not None,
            batch_p2p_comm=self.virtual_pipeline_model_parallel_size is None,
            sequence_parallel=self.sequence_parallel,
            bf16=self.bf16,
            fp16=self.fp16,
            params_dtype=dtype,
            pipeline_dtype=dtype,
            fp8=self.fp8_format,
            fp8_recipe=self.fp8_recipe,
            fp8_amax_history_len=self.fp8_amax_history_len,
            fp8_amax_compute_algo=self.fp8_amax_compute_algo,
            recompute_granularity=self.recompute_granularity,
            recompute_method=self.recompute_method,
            recompute_num_layers=self.recompute_num_layers,
            use_cpu_initialization=not on_gpu,
            calculate_per_token_loss=True,
            # Compiled functions that need no extension (docs/benchmarks.md, bench layer). Not for
            # GeLU: Megatron's fused bias-GeLU is the tanh approximation, not BertModel's exact GeLU.
            bias_activation_fusion=on_gpu and self.swiglu,
            bias_dropout_fusion=on_gpu,
            # CUDA extensions (apex's or Megatron-LM's) that Megatron requires once asked for: the
            # local attention's fused softmax, and the weight-gradient accumulation of every
            # Megatron linear, including GPTModel's output layer under Transformer Engine too.
            masked_softmax_fusion=on_gpu and _importable("scaled_masked_softmax_cuda"),
            gradient_accumulation_fusion=on_gpu and _importable("fused_weight_gradient_mlp_cuda"),
            apply_rope_fusion=te and self.position_embedding_type == "rope",
        )


# ---- Field types, checks and documentation ----


class _FieldType(NamedTuple):
    kind: type  # bool, int, float, str or list (of str)
    optional: bool
    choices: tuple[str, ...] | None


@functools.cache
def _field_types() -> dict[str, _FieldType]:
    types_by_name = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if optional:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if typing.get_origin(hint) is Literal:
            types_by_name[name] = _FieldType(str, optional, typing.get_args(hint))
        else:
            types_by_name[name] = _FieldType(typing.get_origin(hint) or hint, optional, None)
    return types_by_name


def _required_fields() -> list[str]:
    return [
        f.name for f in dataclasses.fields(TrainConfig)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


_SECTION = re.compile(r"^\s*# -+ (.+?) -+$")


@functools.cache
def field_docs() -> dict[str, tuple[str, str]]:
    """``{field: (section, docstring)}`` read from this module's source: the docstring right below
    each field and the ``# ---- Section ----`` comment above it."""
    lines, _ = inspect.getsourcelines(TrainConfig)
    sections = {}
    section = ""
    for number, line in enumerate(lines, start=1):
        match = _SECTION.match(line)
        section = match.group(1) if match else section
        sections[number] = section
    docs = {}
    body = ast.parse("".join(lines)).body[0].body
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(inspect.cleandoc(following.value.value).split())
            docs[node.target.id] = (sections[node.lineno], text)
    return docs


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _is_positive(value) -> bool:
    return value > 0


def _is_non_negative(value) -> bool:
    return value >= 0


def _is_fraction(value) -> bool:
    return 0 <= value < 1


def _is_open_fraction(value) -> bool:
    return 0 < value < 1


def _is_positive_fraction(value) -> bool:
    return 0 < value <= 1


# Range checks of single fields, done whenever a TrainConfig is built: (predicate, what is expected).
_RANGES = {
    **dict.fromkeys(
        (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
            "kv_channels", "seq_length", "max_position_embeddings", "rotary_base",
            "make_vocab_size_divisible_by", "vocab_size", "tensor_model_parallel_size",
            "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
            "micro_batch_size", "global_batch_size", "train_iters", "fp8_amax_history_len",
            "recompute_num_layers", "lr_decay_iters", "save_interval", "max_skipped_iters",
            "log_interval", "eval_interval", "exit_interval",
        ),
        (_is_positive, "a positive integer"),
    ),
    **dict.fromkeys(
        (
            "norm_epsilon", "init_method_std", "cwt_temperature", "initial_loss_scale", "lr",
            "adam_eps", "exit_duration_in_mins", "distributed_timeout_minutes",
        ),
        (_is_positive, "a positive number"),
    ),
    **dict.fromkeys(
        ("seed", "lr_warmup_iters", "num_workers", "eval_iters"), (_is_non_negative, "an integer >= 0")
    ),
    **dict.fromkeys(("min_lr", "weight_decay", "clip_grad"), (_is_non_negative, "a number >= 0")),
    **dict.fromkeys(
        ("hidden_dropout", "attention_dropout", "adam_beta1", "adam_beta2", "sgd_momentum"),
        (_is_fraction, "a number in [0, 1)"),
    ),
    "mask_prob": (_is_open_fraction, "a number in (0, 1)"),
    "rotary_percent": (_is_positive_fraction, "a number in (0, 1]"),
}


def _fail(key: str, problem: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {problem}")


def _closest(word: str, candidates) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _checked_value(name: str, value: Any) -> Any:
    """value converted to the field's type (strings from flags and YAML 1.1's '3e-4' included) and
    checked against its choices and range."""
    field_type = _field_types()[name]
    if value is None or (
        field_type.optional and isinstance(value, str) and value.lower() in ("none", "null")
    ):
        if field_type.optional:
            return None
        _fail(name, "cannot be none; leave the key out for its default")
    kind = field_type.kind
    if kind is bool:
        value = _as_bool(name, value)
    elif kind is int:
        value = _as_int(name, value)
    elif kind is float:
        value = _as_float(name, value)
    elif kind is list:
        value = _as_string_list(name, value)
    else:
        value = _as_string(name, value, field_type.choices)
    predicate, expected = _RANGES.get(name, (None, None))
    if predicate is not None and not predicate(value):
        _fail(name, f"expected {expected}, got {value}")
    if name == "data_path":
        _parse_blend(value)
    if name == "split":
        _split_shares(value)
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    _fail(name, f"expected true or false, got {value!r}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    _fail(name, f"expected an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:  # PyYAML reads 3e-4 as a string (YAML 1.1 wants 3.0e-4); accept it as a number
            return float(value)
        except ValueError:
            pass
    _fail(name, f"expected a number, got {value!r}")


def _as_string(name: str, value: Any, choices: tuple[str, ...] | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        _fail(name, f"expected {'one of ' + ', '.join(choices) if choices else 'a string'}, got {value!r}")
    value = str(value)
    if choices and value not in choices:
        close = _closest(value, choices)
        hint = f" (did you mean {close!r}?)" if close else ""
        _fail(name, f"expected one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def _as_string_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or any(
        isinstance(item, (bool, list, dict)) or item is None for item in value
    ):
        _fail(name, f"expected one or more values, got {value!r}")
    return [str(item) for item in value]


def _parse_blend(items: list[str]) -> tuple[list[str], list[float] | None]:
    def weight(item: str) -> float | None:
        try:
            return float(item)
        except ValueError:
            return None

    example = "expected PREFIX [PREFIX ...] or WEIGHT PREFIX [WEIGHT PREFIX ...]"
    if weight(items[0]) is None:
        stray = next((item for item in items if weight(item) is not None), None)
        if stray is not None:
            _fail("data_path", f"{example}; {stray!r} is a weight but the first item is a prefix")
        return list(items), None
    weights, prefixes = items[0::2], items[1::2]
    if len(weights) != len(prefixes):
        _fail("data_path", f"{example}; the last weight {weights[-1]!r} has no prefix")
    for w, prefix in zip(weights, prefixes):
        if weight(w) is None or weight(prefix) is not None:
            _fail("data_path", f"{example}; got {w!r} {prefix!r} where a WEIGHT PREFIX pair belongs")
        if weight(w) <= 0:
            _fail("data_path", f"weights must be positive, got {w} for {prefix!r}")
    return prefixes, [weight(w) for w in weights]


def _split_shares(split: str) -> list[float]:
    """split as three shares (train, validation, test); raises on a malformed split."""
    try:
        shares = [float(part) for part in split.split(",")]
    except ValueError:
        shares = []
    if not 1 <= len(shares) <= 3 or any(share < 0 for share in shares) or shares[0] <= 0:
        _fail("split", f"expected up to three comma-separated shares with train > 0 (e.g. 969,30,1), got {split!r}")
    return shares + [0.0] * (3 - len(shares))


# Megatron-LM arguments that are spelled differently here: key -> (field, value to give it or None).
_MEGATRON_LM_SPELLINGS = {
    "disable_bias_linear": ("add_bias_linear", False),
    "group_query_attention": ("num_query_groups", None),
    "use_rotary_position_embeddings": ("position_embedding_type", "rope"),
    "layernorm_epsilon": ("norm_epsilon", None),
    "fp8": ("fp8_format", None),
    "num_layers_per_virtual_pipeline_stage": ("virtual_pipeline_model_parallel_size", None),
    "tokenizer_type": ("tokenizer", None),
    "tokenizer_model": ("tokenizer", None),
    "vocab_file": ("tokenizer", None),
    "pretrained_checkpoint": ("pretrained", None),
    "tensorboard_dir": ("log_dir", None),
    "train_samples": ("train_iters", None),
    "lr_warmup_samples": ("lr_warmup_iters", None),
    "lr_warmup_fraction": ("lr_warmup_iters", None),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unknown_key_hint(key: str, as_flag: bool) -> str:
    if key in _MEGATRON_LM_SPELLINGS:
        field, value = _MEGATRON_LM_SPELLINGS[key]
        if as_flag:
            spelled = (
                _flag(field) if value is None
                else _flag(("" if value else "no_") + field) if isinstance(value, bool)
                else f"{_flag(field)} {value}"
            )
            return f" (Megatron-LM's {_flag(key)} is {spelled} here)"
        spelled = field if value is None else f"{field}: {str(value).lower() if isinstance(value, bool) else value}"
        return f" (Megatron-LM's {key} is {spelled} here)"
    close = _closest(key, _field_types())
    if close is None:
        return ""
    return f" (did you mean {_flag(close)}?)" if as_flag else f" (did you mean {close!r}?)"


def _checked_mapping(values: dict, what: str) -> dict[str, Any]:
    """values with unknown keys refused and each value checked; what names a key in messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of field names to values, got {type(values).__name__}")
    for key in values:
        if key not in _field_types():
            raise ConfigError(f"unknown {what} {key!r}{_unknown_key_hint(str(key), as_flag=False)}")
    return {key: _checked_value(key, value) for key, value in values.items()}


def _build(values: dict[str, Any]) -> TrainConfig:
    missing = [name for name in _required_fields() if name not in values]
    if missing:
        flags = ", ".join(_flag(name) for name in missing)
        _fail(", ".join(missing), f"required; set in the config file or pass {flags}")
    return TrainConfig(**values)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config with a key twice is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (again at line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The checked field values of a YAML config file; errors start with the path."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a YAML text file (byte {error.start} is not UTF-8)") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        return _checked_mapping(values, "key")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---- Command line ----


class _BoolFlag(argparse.Action):
    """``--x`` or ``--x true|false``; the matching ``--no-x`` is a separate, store-false flag."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=True, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one flag per :class:`TrainConfig` field, grouped by section, with
    the field docstrings as help. Flags default to absent, so only the given ones override the
    file. Also turns off argparse's prefix matching, as Megatron-LM does: ``--hidden`` would
    otherwise silently mean ``--hidden-size``."""
    parser.allow_abbrev = False
    parser.add_argument(
        "--config", metavar="FILE",
        help="YAML file of field: value pairs (see configs/); the flags below override it",
    )
    required = set(_required_fields())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    groups = {}
    for name, (section, doc) in field_docs().items():
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        group = groups[section]
        field_type = _field_types()[name]
        shown = "required" if name in required else f"default: {_yaml_scalar(defaults[name])}"
        help_text = f"{doc} ({shown})".replace("%", "%%")
        if field_type.kind is bool:
            group.add_argument(
                _flag(name), action=_BoolFlag, dest=name, default=argparse.SUPPRESS,
                metavar="true|false", help=f"{help_text[:-1]}; {_flag('no_' + name)} sets false)",
            )
            group.add_argument(
                _flag("no_" + name), action="store_false", dest=name, default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            metavar = (
                "{" + ",".join(field_type.choices) + "}" if field_type.choices
                else _METAVARS[field_type.kind]
            )
            group.add_argument(
                _flag(name), dest=name, default=argparse.SUPPRESS, metavar=metavar, help=help_text,
                nargs="+" if field_type.kind is list else None,
            )


_METAVARS = {int: "N", float: "NUM", str: "STR", list: "ITEM"}


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "none"  # as the flags spell it
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def reject_unknown_flags(extra_argv: list[str]) -> None:
    """Raise :class:`ConfigError` for what ``parser.parse_known_args`` left over: an unknown flag
    (with the closest known one) or a stray value."""
    if not extra_argv:
        return
    flag = next((token for token in extra_argv if token.startswith("-")), None)
    if flag is None:
        raise ConfigError(f"{extra_argv[0]}: unexpected value; every value follows a --flag")
    flag = flag.split("=", 1)[0]
    hint = _unknown_key_hint(flag.lstrip("-").replace("-", "_"), as_flag=True)
    raise ConfigError(f"{flag}: unknown flag{hint}")


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The config described by a namespace parsed with :func:`add_config_arguments`'s flags:
    ``defaults`` < ``--config`` file < flags. Other attributes of the namespace are ignored."""
    values = {}
    if defaults:
        try:
            values.update(_checked_mapping(defaults, "default"))
        except ConfigError as error:
            raise ConfigError(f"defaults: {error}") from None
    if getattr(args, "config", None):
        values.update(_read_yaml(args.config))
    values.update(_checked_mapping(
        {name: getattr(args, name) for name in _field_types() if hasattr(args, name)}, "flag",
    ))
    return _build(values)


def parse_config(argv: list[str], defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The config given by a command line: ``[--config FILE] [--flag value ...]`` (see the module
    docstring for the flag conventions)."""
    parser = argparse.ArgumentParser(
        prog="headless-megatron pretrain", usage="%(prog)s [--config FILE] [--flag VALUE ...]"
    )
    add_config_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    reject_unknown_flags(extra)
    return config_from_args(args, defaults)
