"""The fusions the config adapter switches on for GPUs compute what the unfused layers compute, and the
ones it leaves off would not: Megatron's bias-GeLU is the tanh approximation of GeLU, and its native
fused cross-entropy returns bf16 gradients."""

from __future__ import annotations

from pathlib import Path

import megatron_helpers as mh
import pytest
import torch
import torch.nn.functional as F
from local_ranks import run_on_ranks
from megatron.core import parallel_state as ps
from test_attention import _bert, _gpt, _relative_error

from headless_megatron.config import ParallelLayout, config_from_yaml
from headless_megatron.config.megatron import transformer_config
from headless_megatron.models.attention import SDPAttention
from headless_megatron.runtime.distributed import init_distributed

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FUSIONS = ("bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion")


def _gpu_fusions(model: str) -> dict[str, bool]:
    """The fusions the adapter switches on for a tiny recipe on a GPU without Transformer Engine."""
    config = config_from_yaml(CONFIGS / f"{model}_headless_tiny.yaml")
    megatron = transformer_config(config, "local", on_gpu=True)
    return {name: getattr(megatron, name) for name in FUSIONS}


def test_on_gpus_the_adapter_fuses_swiglu_and_bias_dropout_add_but_not_gelu():
    assert _gpu_fusions("gpt") == {
        "bias_activation_fusion": True, "bias_dropout_fusion": True, "cross_entropy_loss_fusion": False,
    }
    assert _gpu_fusions("bert") == {
        "bias_activation_fusion": False, "bias_dropout_fusion": True, "cross_entropy_loss_fusion": False,
    }


def _models_loss_and_grads(tp, sp, gpt_fusions, bert_fusions):
    """GPT and BERT losses and all gradients without and with the adapter's GPU fusions."""
    init_distributed(ParallelLayout(tp, 1), seed=mh.SEED)
    tokens, labels, loss_mask = mh.global_batch()
    padding = torch.ones_like(tokens)
    padding[1, -5:] = 0
    results = {}
    for fused in (False, True):
        fusions = {name: fused and on for name, on in gpt_fusions.items()}
        gpt = _gpt(mh.tiny_config(sequence_parallel=sp, num_query_groups=2, **fusions), SDPAttention)
        positions = torch.arange(mh.SEQ).unsqueeze(0).expand_as(tokens)
        gpt_loss = (gpt(tokens, positions, None, labels=labels) * loss_mask).sum()
        gpt_loss.backward()
        fusions = {name: fused and on for name, on in bert_fusions.items()}
        bert = _bert(mh.tiny_config(sequence_parallel=sp, llama=False, **fusions), SDPAttention)
        bert_loss = (bert(tokens, padding, lm_labels=labels) * loss_mask * padding).sum()
        bert_loss.backward()
        results[fused] = {
            "gpt_loss": gpt_loss.detach(),
            "bert_loss": bert_loss.detach(),
            **{f"gpt.{n}": p.grad.clone() for n, p in gpt.named_parameters()},
            **{f"bert.{n}": p.grad.clone() for n, p in bert.named_parameters()},
        }
    return results if ps.get_tensor_model_parallel_rank() == 0 else None


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True)], ids=["tp1", "tp2_sp"])
def test_models_equal_with_and_without_the_gpu_fusions(tp, sp):
    gpt_fusions, bert_fusions = _gpu_fusions("gpt"), _gpu_fusions("bert")
    assert any(gpt_fusions.values()) and any(bert_fusions.values())
    results = run_on_ranks(_models_loss_and_grads, tp, args=(tp, sp, gpt_fusions, bert_fusions), timeout=600)[0]
    unfused, fused = results[False], results[True]
    assert set(unfused) == set(fused)
    for name, expected in unfused.items():
        assert _relative_error(fused[name], expected) <= 1e-5, name


def test_megatron_bias_gelu_is_the_tanh_approximation_so_it_stays_off():
    from megatron.core.fusions.fused_bias_gelu import bias_gelu_impl

    x, bias = torch.linspace(-6, 6, 3000).reshape(1000, 3), torch.tensor([0.1, 0.0, -0.1])
    fused = bias_gelu_impl(x, bias)
    assert (fused - F.gelu(x + bias, approximate="tanh")).abs().max() <= 1e-6
    # BertModel's (and Hugging Face's "gelu") activation is the exact, erf-based one: 1000 times
    # fp32's rounding apart
    assert (fused - F.gelu(x + bias)).abs().max() > 1e-4

def _bias_dropout_add_outputs(prob):
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

    gen = torch.Generator().manual_seed(0)
    x, bias = torch.randn(256, 4, 64, generator=gen), torch.randn(64, generator=gen)
    residual = torch.randn(256, 4, 64, generator=gen)
    return x + bias, residual, [get_bias_dropout_add(True, fused)((x, bias), residual, prob) for fused in (False, True)]


def test_fused_bias_dropout_add_without_dropout_equals_the_unfused_one():
    _, _, (unfused, fused) = _bias_dropout_add_outputs(0.0)
    assert _relative_error(fused, unfused) <= 1e-6


def test_fused_bias_dropout_add_drops_at_the_rate_and_scales_the_rest():
    biased, residual, (_, fused) = _bias_dropout_add_outputs(0.1)
    dropped = torch.isclose(fused, residual, rtol=0, atol=1e-6)
    kept = torch.isclose(fused, residual + biased / 0.9, rtol=1e-5, atol=1e-5)
    assert bool((dropped | kept).all())
    assert abs(dropped.float().mean().item() - 0.1) < 0.01  # 65,536 draws: the standard deviation is 0.0012


def _cross_entropy_losses_and_grads(dtype):
    from megatron.core.fusions.fused_cross_entropy import (
        fused_vocab_parallel_cross_entropy,
    )
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    init_distributed(ParallelLayout(1, 1), seed=mh.SEED)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(16, 3, 512, generator=gen) * 4).to(dtype)
    target = torch.randint(0, 512, (16, 3), generator=gen)
    upstream = torch.randn(16, 3, generator=gen)
    results = []
    for cross_entropy in (vocab_parallel_cross_entropy,
                          lambda z, t: fused_vocab_parallel_cross_entropy(z, t, ps.get_tensor_model_parallel_group())):
        leaf = logits.clone().requires_grad_()
        loss = cross_entropy(leaf, target)
        loss.backward(upstream)
        results.append((loss.detach(), leaf.grad))
    return results


def test_fused_cross_entropy_equals_the_unfused_one_in_bf16_but_rounds_fp32_gradients_to_bf16():
    (loss, grad), (fused_loss, fused_grad) = run_on_ranks(_cross_entropy_losses_and_grads, 1, args=(torch.bfloat16,))[0]
    # both round fp32 gradients to bf16, the compiled one sometimes the other way: one bf16 step at most
    assert _relative_error(fused_loss, loss) <= 1e-6 and _relative_error(fused_grad, grad) <= 2**-8
    (loss, grad), (fused_loss, fused_grad) = run_on_ranks(_cross_entropy_losses_and_grads, 1, args=(torch.float32,))[0]
    assert _relative_error(fused_loss, loss) <= 1e-6
    # fp32 logits get fp32 gradients that carry bf16's 8 bits only
    assert fused_grad.dtype == torch.float32 and torch.equal(fused_grad, fused_grad.to(torch.bfloat16).float())
    assert 1e-4 < _relative_error(fused_grad, grad) <= 2**-8
