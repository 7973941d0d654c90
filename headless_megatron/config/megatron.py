"""The adapter from a :class:`~headless_megatron.config.schema.TrainConfig` to Megatron-Core's
``TransformerConfig``: field names mapped, defaults resolved, fused kernels switched on only where
they can run; and the choice of kernels (Transformer Engine, apex, local) that depends on the node."""

from __future__ import annotations

import importlib.util
import typing
from functools import lru_cache

from headless_megatron.config.fields import fail

if typing.TYPE_CHECKING:
    from megatron.core.transformer.transformer_config import TransformerConfig

    from headless_megatron.config.schema import TrainConfig


@lru_cache(maxsize=None)
def transformer_engine_available() -> bool:
    """TE is used only when its torch extension imports and a GPU is present."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken TE install means: use the local spec
        return False
    return True


@lru_cache(maxsize=None)
def apex_available() -> bool:
    """Whether apex's fused layer norm is importable (Megatron-Core then uses it)."""
    from megatron.core.fusions.fused_layer_norm import HAVE_FUSED_LAYER_NORM

    return bool(HAVE_FUSED_LAYER_NORM)


def kernel_backend(transformer_impl: str = "auto") -> str:
    """``transformer_impl`` (``auto``, ``transformer_engine``, ``local``) resolved on this node to
    ``transformer_engine`` or ``local``; raises a one-line ConfigError when Transformer Engine is
    asked for and cannot run here."""
    if transformer_impl == "auto":
        return "transformer_engine" if transformer_engine_available() else "local"
    if transformer_impl == "transformer_engine" and not transformer_engine_available():
        fail(
            "transformer_impl", "transformer_engine needs a GPU and an importable transformer_engine; "
            "use transformer_impl: local (or auto)"
        )
    return transformer_impl


def transformer_config(config: TrainConfig, backend: str, *, on_gpu: bool | None = None) -> TransformerConfig:
    """Megatron-Core's ``TransformerConfig`` for the run ``config`` describes.

    ``backend`` is the resolved kernel backend, ``transformer_engine`` or ``local``
    (:func:`kernel_backend`); ``on_gpu`` defaults to whether CUDA is
    available. Fused kernels are switched on only where they can run: never on CPU, and the
    CUDA-extension ones only when installed. ``calculate_per_token_loss`` is always on: loss
    functions return (sum, token count) and gradients are scaled by 1/tokens over the whole
    global batch. The loop still sets ``finalize_model_grads_func`` (and ``grad_scale_func`` for
    fp16)."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    if backend not in ("transformer_engine", "local"):
        fail("transformer_impl", f"backend must be transformer_engine or local, got {backend!r}")
    if config.fp8_format is not None and backend != "transformer_engine":
        fail("fp8_format", "needs the transformer_engine backend")
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    te = on_gpu and backend == "transformer_engine"
    dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else torch.float32
    return TransformerConfig(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.ffn_size,
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.query_groups,
        kv_channels=config.head_dim,
        normalization=config.normalization,
        layernorm_epsilon=config.norm_epsilon,
        gated_linear_unit=config.swiglu,
        activation_func=_activation(config),
        add_qkv_bias=config.add_qkv_bias,
        add_bias_linear=config.add_bias_linear,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        init_method_std=config.init_method_std,
        deterministic_mode=config.deterministic_mode,
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=config.virtual_pipeline_model_parallel_size,
        # Megatron-LM's p2p setting with virtual stages: each send and receive on its own,
        # even/odd ranks in opposite orders. Batched, a PP2 rank's two messages to its one
        # neighbour (activation forward, gradient back) can be matched to the wrong receives.
        overlap_p2p_comm=config.virtual_pipeline_model_parallel_size is not None,
        batch_p2p_comm=config.virtual_pipeline_model_parallel_size is None,
        sequence_parallel=config.sequence_parallel,
        bf16=config.bf16,
        fp16=config.fp16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        fp8=config.fp8_format,
        fp8_recipe=config.fp8_recipe,
        fp8_amax_history_len=config.fp8_amax_history_len,
        fp8_amax_compute_algo=config.fp8_amax_compute_algo,
        recompute_granularity=config.recompute_granularity,
        recompute_method=config.recompute_method,
        recompute_num_layers=config.recompute_num_layers,
        use_cpu_initialization=not on_gpu,
        calculate_per_token_loss=True,
        # Compiled functions that need no extension (docs/benchmarks.md, bench layer). Not for
        # GeLU: Megatron's fused bias-GeLU is the tanh approximation, not BertModel's exact GeLU.
        bias_activation_fusion=on_gpu and config.swiglu,
        bias_dropout_fusion=on_gpu,
        # CUDA extensions (apex's or Megatron-LM's) that Megatron requires once asked for: the
        # local attention's fused softmax, and the weight-gradient accumulation of every
        # Megatron linear, including GPTModel's output layer under Transformer Engine too.
        masked_softmax_fusion=on_gpu and _importable("scaled_masked_softmax_cuda"),
        gradient_accumulation_fusion=on_gpu and _importable("fused_weight_gradient_mlp_cuda"),
        apply_rope_fusion=te and config.position_embedding_type == "rope",
    )


def _activation(config: TrainConfig):
    import torch.nn.functional as F
    from megatron.core.transformer.utils import openai_gelu

    if config.swiglu:
        return F.silu
    return openai_gelu if config.openai_gelu else F.gelu


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None

