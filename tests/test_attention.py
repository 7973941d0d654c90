"""SDPAttention computes what Megatron's DotProductAttention computes: outputs and gradients, for the
core attention alone and inside whole models under TP2 and TP2+SP."""

from __future__ import annotations

import dataclasses

import megatron_helpers as mh
import pytest
import torch
from local_ranks import run_on_ranks
from megatron.core import parallel_state as ps
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from headless_megatron.config import ParallelLayout
from headless_megatron.models.attention import SDPAttention
from headless_megatron.models.bert.model import HeadlessBertModel, make_bert_norms_sequence_parallel_capable
from headless_megatron.models.init import initialize_layout_independent
from headless_megatron.models.specs import gpt_block_spec, local_layer_spec
from headless_megatron.runtime.distributed import init_distributed


def _relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _core_attention_errors(cases):
    """Per case: max relative error of outputs and q/k/v grads, SDPAttention vs DotProductAttention."""
    init_distributed(ParallelLayout(1, 1), seed=mh.SEED)
    errors = {}
    for name, (mask_type, groups, mask_kind) in cases.items():
        config = mh.tiny_config(num_query_groups=groups)
        seq, batch, heads, dim = 24, 3, config.num_attention_heads, config.kv_channels
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(seq, batch, heads, dim, generator=gen)
        k, v = (torch.randn(seq, batch, groups, dim, generator=gen) for _ in range(2))
        lengths = torch.tensor([seq, seq - 5, 7])
        keep = torch.arange(seq)[None, :] < lengths[:, None]  # [b, s], BERT's padding mask
        mask, valid_rows = None, torch.ones(seq, batch, dtype=torch.bool)
        if mask_kind == "b1ss":  # BertModel's mask for DotProductAttention: padding rows all masked
            mask = ~(keep[:, None, :, None] & keep[:, None, None, :])
            valid_rows = keep.t()
        elif mask_kind == "b11s":  # the key-padding mask BertModel gives SDPAttention
            mask = ~keep[:, None, None, :]
        outputs = {}
        for cls in (DotProductAttention, SDPAttention):
            module = cls(config, layer_number=1, attn_mask_type=mask_type, attention_type="self")
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            out = module(*inputs, mask)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
            (out * weights * valid_rows[..., None]).sum().backward()
            outputs[cls] = [out[valid_rows]] + [t.grad for t in inputs]
        errors[name] = [
            _relative_error(sdpa, dpa) for sdpa, dpa in zip(outputs[SDPAttention], outputs[DotProductAttention])
        ]
    return errors


CORE_CASES = {
    "causal": (AttnMaskType.causal, 4, None),
    "causal_gqa": (AttnMaskType.causal, 2, None),
    "causal_mqa": (AttnMaskType.causal, 1, None),
    "padding_b1ss": (AttnMaskType.padding, 4, "b1ss"),
    "padding_b11s": (AttnMaskType.padding, 4, "b11s"),
    "padding_gqa": (AttnMaskType.padding, 2, "b11s"),
    "no_mask": (AttnMaskType.padding, 4, None),
}


def test_core_attention_equals_dot_product_attention():
    errors = run_on_ranks(_core_attention_errors, 1, args=(CORE_CASES,))[0]
    for name, (output, *grads) in errors.items():
        assert output <= 1e-5, f"{name}: output differs by {output:.1e}"
        for which, error in zip("qkv", grads):
            assert error <= 1e-5, f"{name}: d{which} differs by {error:.1e}"


def _with_core_attention(layer_spec, core_attention):
    attention = layer_spec.submodules.self_attention
    attention = dataclasses.replace(
        attention, submodules=dataclasses.replace(attention.submodules, core_attention=core_attention)
    )
    return dataclasses.replace(
        layer_spec, submodules=dataclasses.replace(layer_spec.submodules, self_attention=attention)
    )


def _gpt(config, core_attention):
    from megatron.core.models.gpt import GPTModel

    block = gpt_block_spec(config, "local")
    assert block.layer_specs[0].submodules.self_attention.submodules.core_attention is SDPAttention
    block = dataclasses.replace(block, layer_specs=[_with_core_attention(s, core_attention) for s in block.layer_specs])
    model = GPTModel(config=config, transformer_layer_spec=block, vocab_size=mh.VOCAB, max_sequence_length=mh.SEQ,
                     position_embedding_type="rope", pre_process=True, post_process=True)
    initialize_layout_independent(model, config, mh.SEED)
    return model


def _bert(config, core_attention):
    make_bert_norms_sequence_parallel_capable()
    spec = _with_core_attention(local_layer_spec(bert_layer_local_spec, config), core_attention)
    model = HeadlessBertModel(config=config, num_tokentypes=0, transformer_layer_spec=spec, vocab_size=mh.VOCAB,
                              max_sequence_length=mh.SEQ, pre_process=True, post_process=True,
                              add_binary_head=False)
    initialize_layout_independent(model, config, mh.SEED)
    return model


def _models_loss_and_grads(tp, sp):
    """GPT (GQA, causal) and BERT (padding) losses and all gradients with each core attention."""
    init_distributed(ParallelLayout(tp, 1), seed=mh.SEED)
    tokens, labels, loss_mask = mh.global_batch()
    padding = torch.ones_like(tokens)
    padding[1, -5:] = 0
    padding[3, -9:] = 0
    results = {}
    for core_attention in (DotProductAttention, SDPAttention):
        gpt_config = mh.tiny_config(sequence_parallel=sp, num_query_groups=2)
        gpt = _gpt(gpt_config, core_attention)
        positions = torch.arange(mh.SEQ).unsqueeze(0).expand_as(tokens)
        gpt_loss = (gpt(tokens, positions, None, labels=labels) * loss_mask).sum()
        gpt_loss.backward()
        bert = _bert(mh.tiny_config(sequence_parallel=sp, llama=False), core_attention)
        bert_loss = (bert(tokens, padding, lm_labels=labels) * loss_mask * padding).sum()
        bert_loss.backward()
        results[core_attention.__name__] = {
            "gpt_loss": gpt_loss.item(),
            "bert_loss": bert_loss.item(),
            **{f"gpt.{n}": p.grad.clone() for n, p in gpt.named_parameters()},
            **{f"bert.{n}": p.grad.clone() for n, p in bert.named_parameters()},
        }
    return results if ps.get_tensor_model_parallel_rank() == 0 else None


@pytest.mark.parametrize("tp,sp", [(1, False), (2, False), (2, True)], ids=["tp1", "tp2", "tp2_sp"])
def test_models_equal_with_either_core_attention(tp, sp):
    results = run_on_ranks(_models_loss_and_grads, tp, args=(tp, sp))[0]
    unfused, fused = results["DotProductAttention"], results["SDPAttention"]
    assert set(unfused) == set(fused)
    for name, expected in unfused.items():
        if isinstance(expected, float):
            assert abs(fused[name] - expected) <= 1e-5 * abs(expected), name
        else:
            assert expected.abs().sum() > 0, f"{name}: no gradient"
            assert _relative_error(fused[name], expected) <= 1e-5, name


def _dropout_outputs():
    init_distributed(ParallelLayout(1, 1), seed=mh.SEED)
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    module = SDPAttention(mh.tiny_config(), layer_number=1, attn_mask_type=AttnMaskType.causal,
                          attention_type="self", attention_dropout=0.5)
    q, k, v = (torch.randn(16, 2, 4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    outputs = []
    for _ in range(2):
        model_parallel_cuda_manual_seed(mh.SEED)
        torch.manual_seed(mh.SEED)
        outputs.append(module(q, k, v, None))
    module.eval()
    outputs.append(module(q, k, v, None))
    return outputs


def test_dropout_is_applied_in_training_only_and_is_reproducible():
    first, second, evaluation = run_on_ranks(_dropout_outputs, 1)[0]
    assert torch.equal(first, second)
    assert not torch.allclose(first, evaluation)
