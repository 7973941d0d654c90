"""Layout-independent initialisation (the cross-layout equality is in test_megatron_layouts.py)."""

import math

import megatron_helpers as mh
from local_ranks import run_on_ranks

from headless_megatron.config import ParallelLayout
from headless_megatron.runtime.distributed import init_distributed


def _initial_weights(seed):
    init_distributed(ParallelLayout(1, 1))
    config = mh.tiny_config()
    model = mh.build_gpt(config, seed=seed)
    return {name: p.detach().clone() for name, p in model.named_parameters()}, config.init_method_std


def test_values_follow_megatron_init_rules_and_the_seed():
    (a, std), (b, _), (c, _) = (run_on_ranks(_initial_weights, 1, args=(s,))[0] for s in (1, 1, 2))
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs for the same seed"
    emb = "embedding.word_embeddings.weight"
    assert not (a[emb] == c[emb]).all()
    assert (a["decoder.final_layernorm.weight"] == 1).all()
    assert abs(a[emb].std().item() - std) < 0.1 * std
    proj = a["decoder.layers.0.self_attention.linear_proj.weight"]
    assert abs(proj.std().item() - std / math.sqrt(2 * 4)) < 0.15 * std / math.sqrt(8)
    # Each layer gets its own draw, not a copy of layer 0.
    qkv = "decoder.layers.{}.self_attention.linear_qkv.weight"
    assert not (a[qkv.format(0)] == a[qkv.format(1)]).all()
