"""The streamed torch_dist save: a model on the meta device saved from tensor sources gives the checkpoint
that the materialised model gives with Megatron's own strategy, each source called once, and the
tensors made are freed as the writer moves on (memory does not grow with the number of layers)."""

from __future__ import annotations

import json

import pytest
import torch
from local_ranks import run_on_ranks
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def save_both_ways(default_root: str, streamed_root: str, llama: bool) -> dict:
    """On each of 4 ranks (TP2 x PP2): a tiny model saved by ``save_checkpoint`` as a training run saves
    it, then the same model's meta-device twin saved with every shard from a source that copies the
    real shard; returns, per source call, its shard and how many tensors of earlier calls were alive."""
    from megatron.core.dist_checkpointing.mapping import is_main_replica
    from megatron_helpers import build_bert, build_gpt, tiny_config
    from torch.multiprocessing.reductions import StorageWeakRef

    from headless_megatron.config import ParallelLayout
    from headless_megatron.convert.streamed_save import StreamedSaveStrategy
    from headless_megatron.models.init import sharded_tensors
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import SHARDING_METADATA, save_checkpoint

    init_distributed(ParallelLayout(2, 2), seed=3)
    build = build_gpt if llama else build_bert
    config = tiny_config(llama=llama)
    model = build(config)
    common = {"config": {"layout": "tp2 pp2"}}
    save_checkpoint(default_root, 0, [model], None, None, common)
    with torch.device("meta"):
        geometry = build(config)
    shards = {
        (shard.key, tuple(shard.global_offset)): shard
        for shard in sharded_tensors(model.sharded_state_dict(metadata=SHARDING_METADATA))
    }
    calls, made = [], []

    def source(shard_id):
        def make():
            calls.append((shard_id, sum(not storage.expired() for storage in made)))
            tensor = shards[shard_id].data.detach().clone()
            made.append(StorageWeakRef(tensor.untyped_storage()))
            return tensor
        return make

    strategy = StreamedSaveStrategy({shard_id: source(shard_id) for shard_id in shards})
    save_checkpoint(streamed_root, 0, [geometry], None, None, common, sharded_strategy=strategy)
    main = sorted(shard_id for shard_id, shard in shards.items() if is_main_replica(shard.replica_id))
    return {"calls": calls, "main_replicas": main}


def full_tensors(iteration_directory) -> dict[str, torch.Tensor]:
    """Every model tensor of a torch_dist checkpoint, assembled in full by DCP."""
    metadata = FileSystemReader(str(iteration_directory)).read_metadata()
    state = {
        key: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    load(state, storage_reader=FileSystemReader(str(iteration_directory)), no_dist=True)
    return state


@pytest.mark.parametrize("llama", [True, False], ids=["llama", "bert"])
def test_a_streamed_save_is_the_checkpoint_megatron_saves(llama, tmp_path):
    default_root, streamed_root = tmp_path / "default", tmp_path / "streamed"
    ranks = run_on_ranks(save_both_ways, 4, args=(str(default_root), str(streamed_root), llama), timeout=300)
    default, streamed = default_root / "iter_0000000", streamed_root / "iter_0000000"

    assert json.loads((streamed / "metadata.json").read_text()) == json.loads((default / "metadata.json").read_text())
    assert torch.load(streamed / "common.pt", weights_only=True) == torch.load(default / "common.pt", weights_only=True)
    expected_metadata = FileSystemReader(str(default)).read_metadata().state_dict_metadata
    streamed_metadata = FileSystemReader(str(streamed)).read_metadata().state_dict_metadata
    assert sorted(streamed_metadata) == sorted(expected_metadata)
    for key, entry in expected_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            assert streamed_metadata[key].size == entry.size and streamed_metadata[key].chunks == entry.chunks, key
    expected = full_tensors(default)
    tensors = full_tensors(streamed)
    assert any(".layers.mlp.linear_fc1.weight" in key for key in tensors) and sorted(tensors) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(tensors[key], tensor), key

    for rank in ranks:
        called = [shard_id for shard_id, _ in rank["calls"]]
        # Replicas (TP-replicated norms, the tied embedding copy) are not written, hence never made.
        assert sorted(called) == rank["main_replicas"]
        # Alive when a source is called: at most one tensor per key written before (PyTorch's writer
        # keeps the last tensor of each key until its file is closed); earlier layers' are freed.
        for position, (_, alive) in enumerate(rank["calls"]):
            assert alive <= len({key for key, _ in called[:position]}), rank["calls"]
        assert len(called) > len({key for key, _ in called})  # stacked layers: several shards of a key
