"""Fused core attention for Megatron's local layer specs, without Transformer Engine.

Megatron's local ``DotProductAttention`` materialises the ``[b, heads, s, s]`` score tensor, its
softmax and its dropout mask, and reads them again in backward. :class:`SDPAttention` computes the
same function with ``torch.nn.functional.scaled_dot_product_attention``, so torch chooses a fused
kernel (cuDNN, flash or memory-efficient on GPUs, its flash kernel on CPU) that never stores the
score matrix.

It is a ``DotProductAttention`` subclass with the same constructor, forward signature, tensors
(``[s, b, heads, head_dim]`` in, ``[s, b, heads * head_dim]`` out) and checkpoint entries; it sees
the heads of its TP rank, as Megatron's does. Masks keep Megatron's convention (``True`` = do not
attend): with no mask a causal layer is causal, a padding layer attends everywhere. Grouped-query
attention is SDPA's ``enable_gqa`` (keys and values are not repeated in memory). Dropout draws from
Megatron's model-parallel RNG stream (``get_cuda_rng_tracker().fork()``) without sequence
parallelism and from the default one with it, exactly where ``DotProductAttention`` draws.

:func:`sdpa_supports` names the configurations it does not cover (sliding windows, softmax
offsets); the layer specs keep ``DotProductAttention`` for those.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention


def sdpa_supports(config: TransformerConfig) -> bool:
    """Whether :class:`SDPAttention` computes what ``DotProductAttention`` computes for ``config``."""
    return config.window_size is None and config.softmax_type == "vanilla"


class SDPAttention(DotProductAttention):
    """``DotProductAttention`` computed by ``scaled_dot_product_attention``."""

    def __init__(self, config: TransformerConfig, layer_number: int, *args, **kwargs):
        super().__init__(config, layer_number, *args, **kwargs)
        if not sdpa_supports(config) or is_layer_window_attention(
            config.window_size, config.window_attn_skip_freq, layer_number
        ):
            raise ValueError("SDPAttention: sliding-window attention and softmax offsets need DotProductAttention")
        # DotProductAttention divides its scale by the layer number and multiplies it back inside the
        # fp16 softmax (apply_query_key_layer_scaling); a fused kernel accumulates in fp32 and needs
        # neither half.
        self.sdpa_scale = self.softmax_scale * (self.layer_number if config.apply_query_key_layer_scaling else 1)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention: packed sequences and attention bias need Transformer Engine")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # [s, b, n, d] -> [b, n, s, d]
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        allowed = None
        is_causal = False
        if attention_mask is not None:
            allowed = _attend_allowed(attention_mask)
        elif mask_type == AttnMaskType.causal and query.size(2) > 1:
            is_causal = True
        dropout = self.attention_dropout.p if self.training else 0.0

        def attend():
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=allowed, dropout_p=dropout, is_causal=is_causal,
                scale=self.sdpa_scale,
                enable_gqa=self.num_attention_heads_per_partition != self.num_query_groups_per_partition,
            )

        kernels = _deterministic_kernels() if self.config.deterministic_mode and query.is_cuda \
            else contextlib.nullcontext()
        with kernels:
            if dropout and not self.config.sequence_parallel:
                with tensor_parallel.get_cuda_rng_tracker().fork():
                    context = attend()
            else:
                context = attend()
        # [b, n, s, d] -> [s, b, n * d]
        return context.permute(2, 0, 1, 3).reshape(context.size(2), context.size(0), self.hidden_size_per_partition)


def _deterministic_kernels():
    """SDPA restricted to the kernels whose backward is deterministic on GPUs: flash (torch runs
    its deterministic backward under ``torch.use_deterministic_algorithms``) and math; the
    memory-efficient and cuDNN kernels' backward accumulate with atomics."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def _attend_allowed(megatron_mask: torch.Tensor) -> torch.Tensor:
    """Megatron's boolean mask (``True`` = masked out) as SDPA's (``True`` = attend).

    A query row with every key masked (a padding query under a ``[b, 1, s, s]`` mask) gets uniform
    weights from ``DotProductAttention`` (every score replaced by -10000) and NaN from a fused
    kernel; such rows attend everywhere instead. Their outputs differ, but they are padding: no
    valid query attends to them and they carry no loss.
    """
    allowed = ~megatron_mask.bool()
    return allowed | ~allowed.any(dim=-1, keepdim=True)
