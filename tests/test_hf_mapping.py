"""Tensor mappings and Megatron's fused layouts (QKV per query group, SwiGLU [gate; up], padded vocabulary)."""

from __future__ import annotations

import pytest
import torch

from headless_megatron.models.hf_mapping import (
    TensorMapping,
    megatron_region,
    megatron_tensor,
    megatron_to_hf,
    merge_gated_fc1,
    merge_qkv,
    pad_vocab,
    qkv_mapping,
    split_gated_fc1,
    split_qkv,
    unpad_vocab,
    vocab_rows_mapping,
)


def labelled_qkv(num_heads: int, num_groups: int, head_dim: int, hidden: int) -> torch.Tensor:
    """A fused weight whose rows say what they are: 1000 x group + 100 x slot + row in head."""
    per_group = num_heads // num_groups
    rows = [
        1000 * group + 100 * slot + row
        for group in range(num_groups) for slot in range(per_group + 2) for row in range(head_dim)
    ]
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(1).expand(-1, hidden).contiguous()


def test_split_qkv_reads_megatron_grouped_layout_for_grouped_query_attention():
    # nq=4, ng=2: Megatron stores q1 q2 k1 v1 | q3 q4 k2 v2.
    query, key, value = split_qkv(labelled_qkv(4, 2, head_dim=2, hidden=3), num_heads=4, num_groups=2, head_dim=2)
    assert query[:, 0].tolist() == [0, 1, 100, 101, 1000, 1001, 1100, 1101]
    assert key[:, 0].tolist() == [200, 201, 1200, 1201]
    assert value[:, 0].tolist() == [300, 301, 1300, 1301]
    assert query.shape == (8, 3) and key.shape == value.shape == (4, 3)


@pytest.mark.parametrize("num_heads, num_groups", [(4, 4), (4, 2), (4, 1), (6, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_merge_qkv_inverts_split_qkv(num_heads, num_groups, bias):
    head_dim, hidden = 3, 5
    fused = torch.randn(num_groups * (num_heads // num_groups + 2) * head_dim, *(() if bias else (hidden,)))
    parts = split_qkv(fused, num_heads, num_groups, head_dim)
    assert torch.equal(merge_qkv(*parts, num_heads, num_groups, head_dim), fused)


def test_gated_fc1_is_gate_then_up():
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    fused = merge_gated_fc1(gate, up)
    assert torch.equal(fused[:6], gate)
    assert all(torch.equal(a, b) for a, b in zip(split_gated_fc1(fused), (gate, up)))


def test_vocabulary_padding_is_zero_rows_and_dropped_again():
    table = torch.randn(500, 8)
    padded = pad_vocab(table, 512)
    assert padded.shape == (512, 8) and not padded[500:].any()
    assert torch.equal(unpad_vocab(padded, 500), table)
    with pytest.raises(ValueError, match="does not fit"):
        pad_vocab(table, 256)
    with pytest.raises(ValueError, match="cannot hold"):
        unpad_vocab(table, 501)


def test_per_layer_mappings_name_each_layer_and_give_unshared_tensors():
    mapping = TensorMapping(
        "decoder.layers.mlp.linear_fc1.weight", ("layers.{layer}.gate", "layers.{layer}.up"),
        split_gated_fc1, lambda parts: merge_gated_fc1(*parts),
    )
    final_norm = TensorMapping("decoder.final_layernorm.weight", ("norm",))
    stacked = torch.randn(3, 8, 4)
    tensors = {mapping.megatron: stacked, final_norm.megatron: torch.randn(4)}
    hf = megatron_to_hf([mapping, final_norm], tensors, num_layers=3)
    assert sorted(hf) == ["layers.0.gate", "layers.0.up", "layers.1.gate", "layers.1.up", "layers.2.gate",
                          "layers.2.up", "norm"]
    assert torch.equal(hf["layers.2.up"], stacked[2, 4:])
    pointers = {tensor.untyped_storage().data_ptr() for tensor in hf.values()}
    assert len(pointers) == len(hf) and all(tensor.is_contiguous() for tensor in hf.values())
    assert torch.equal(megatron_tensor(mapping, hf.__getitem__, layer=1), stacked[1])
    assert torch.equal(megatron_tensor(final_norm, hf.__getitem__), tensors[final_norm.megatron])


def test_mapping_checks_layer_naming_and_layer_count():
    with pytest.raises(ValueError, match="per-layer keys"):
        TensorMapping("decoder.layers.mlp.linear_fc2.weight", ("down_proj",))
    with pytest.raises(ValueError, match="per-layer keys"):
        TensorMapping("embedding.word_embeddings.weight", ("layers.{layer}.embed",))
    mapping = TensorMapping("decoder.layers.mlp.linear_fc2.weight", ("layers.{layer}.down",))
    with pytest.raises(ValueError, match="2 stacked layers, expected 3"):
        megatron_to_hf([mapping], {mapping.megatron: torch.zeros(2, 4, 4)}, num_layers=3)
    with pytest.raises(ValueError, match="layer index"):
        megatron_tensor(mapping, lambda name: torch.zeros(4, 4))


class DictRegions(dict):
    """HF tensors in a dict, as a RegionReader that records what it was asked for."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads = []

    def __call__(self, name):
        self.reads.append((name, None))
        return self[name]

    def shape(self, name):
        return tuple(self[name].shape)

    def region(self, name, index):
        self.reads.append((name, index))
        return self[name][index]


def test_a_region_reads_only_its_part_of_plain_and_vocabulary_tensors():
    hf = DictRegions({"embed": torch.randn(10, 4), "proj.0": torch.randn(6, 4),
                      "q.0": torch.randn(4, 4), "k.0": torch.randn(2, 4), "v.0": torch.randn(2, 4)})
    cases = [
        (vocab_rows_mapping("embedding.word_embeddings.weight", "embed", 10, 16), None, (slice(8, 16), slice(0, 4))),
        (vocab_rows_mapping("embedding.word_embeddings.weight", "embed", 10, 16), None, (slice(0, 8), slice(2, 4))),
        (vocab_rows_mapping("embedding.word_embeddings.weight", "embed", 10, 16), None, (slice(12, 16), slice(0, 4))),
        (TensorMapping("decoder.layers.proj", ("proj.{layer}",)), 0, (slice(3, 6), slice(0, 4))),
        (qkv_mapping("decoder.layers.qkv", ("q.{layer}", "k.{layer}", "v.{layer}"), 2, 1, 2), 0,
         (slice(0, 4), slice(0, 4))),
    ]
    for mapping, layer, index in cases:
        hf.reads.clear()
        shape, read_region = megatron_region(mapping, hf, layer, index)
        assert hf.reads == []  # the shape alone reads nothing
        region = read_region()
        fused = mapping.megatron == "decoder.layers.qkv"  # built whole from its HF tensors; the others read a part
        assert all((read_index is None) == fused for _, read_index in hf.reads), hf.reads
        full = megatron_tensor(mapping, hf, layer)
        assert shape == tuple(full.shape) and torch.equal(region, full[index]), (mapping.megatron, index)
    hf.reads.clear()
    megatron_region(vocab_rows_mapping("e", "embed", 10, 16), hf, None, (slice(8, 16), slice(0, 4)))[1]()
    assert hf.reads == [("embed", (slice(8, 10), slice(0, 4)))]
