"""``torch_dist`` checkpoints through Megatron-Core's ``dist_checkpointing``: what a save holds (model
chunks, optimizer, scheduler, RNG states, the common state), and the adaptations megatron-core
0.16.1 needs on CPU and with torch's Adam. Where a checkpoint goes and how it is published are
:mod:`~headless_megatron.training.run_directory`'s; which one a run starts from is
:mod:`~headless_megatron.training.resume`'s.

The optimizer state is saved ``fully_reshardable`` (each parameter's state in its canonical,
layout-free shape), so a run may resume with another TP/PP/DP layout than the one that saved it.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from headless_megatron.config import config_from_dict
from headless_megatron.errors import first_line
from headless_megatron.quiet import drop_log_records
from headless_megatron.runtime.processes import helper_process_setup
from headless_megatron.training.run_directory import (
    CheckpointError,
    abandon_save,
    checkpoint_problem,
    iteration_dir,
    latest_checkpoint,
    prepare_staging,
    publish,
    read_common,
    staging_dir,
)
from headless_megatron.training.signals import stop_signals_deferred

CHECKPOINT_VERSION = 3.0
# Read back by the loader of the optimizer state; stored in the checkpoint's metadata.json.
SHARDING_METADATA = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "chained_optim_avoid_prefix": True,
    "singleton_local_shards": False,
}


def root_cause(error: BaseException) -> BaseException:
    """DCP reports a failed read as ``CheckpointException({rank: WrappedException})``; the wrapped
    exception is the one worth quoting."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        wrapped = next(iter(failures.values()))
        wrapped = getattr(wrapped, "exc", wrapped)
        if isinstance(wrapped, tuple):  # (exception, its stack summary), as DCP's _wrap_exception makes it
            wrapped = next((item for item in wrapped if isinstance(item, BaseException)), error)
        return wrapped
    return error


def _load(state: dict, path: Path, what: str = "") -> dict:
    """``dist_checkpointing.load`` with its failures in one line: a shard that cannot be read is
    damaged data (the completeness check sees sizes, not bytes), anything else a model that does
    not fit the checkpoint (a shape or a key)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        return dist_checkpointing.load(state, str(path))
    except (Exception, CheckpointException) as error:  # noqa: BLE001 - each kind gets its one line below
        cause = root_cause(error)
        unreadable = (pickle.UnpicklingError, EOFError, UnicodeDecodeError)
        if isinstance(cause, unreadable) or "PytorchStreamReader" in str(cause):
            raise CheckpointError(
                f"{what}{path}: damaged: a shard cannot be read ({type(cause).__name__}); resume from an earlier "
                "checkpoint (point latest_checkpointed_iteration.txt at it)"
            ) from error
        raise CheckpointError(f"{what}{path}: cannot be loaded into this model: {first_line(cause)}") from error


def _unwrap(chunk):
    """The Megatron module under DDP (``Float16Module`` forwards ``sharded_state_dict`` itself)."""
    return getattr(chunk, "module", chunk)


def _rng_state() -> ShardedObject:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject(
        "rng_state",
        [state],
        (pp, tp),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(),
    )


def _restore_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _let_torch_adam_load_reshardable_state() -> None:
    """Work around megatron-core 0.16.1 failing to load a reshardable distributed-optimizer state
    into torch's Adam (the optimizer used without TE or apex).

    ``DistributedOptimizer.load_state_dict`` first sets torch Adam's per-parameter ``step`` from
    the checkpoint, then copies each parameter's loaded tensors into *every* key of its optimizer
    state; the loaded tensors deliberately leave ``step`` out, so the copy raises ``KeyError:
    'step'``. The wrapper hands the already-restored ``step`` back as its own source.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "restores_torch_adam_step", False):
        return

    def set_states_keeping_step(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state.get(main_param, {})
        if "step" in state and "step" not in tensors:
            tensors = {**tensors, "step": state["step"]}
        original(self, model_param, tensors)

    set_states_keeping_step.restores_torch_adam_step = True
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states_keeping_step


def _unshare_torch_adam_steps(optimizer) -> None:
    """After loading, give each parameter its own ``step`` tensor again.

    megatron-core 0.16.1 restores torch Adam's ``step`` by putting one tensor object into every
    parameter's state; torch's Adam increments each parameter's ``step`` in place, so a shared
    tensor would advance once per parameter per iteration and skew Adam's bias correction.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in inner.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def _materialize_optimizer_state(optimizer) -> None:
    """Create the (zero) optimizer state a checkpoint is loaded into.

    Megatron's optimizers describe their state for ``dist_checkpointing`` from the state that
    exists. With TE's or apex's Adam it exists from construction; torch's Adam (the fallback without
    them: CPU, or a GPU without TE/apex) creates it lazily at the first step, so an optimizer that
    has not stepped yet could neither be saved nor describe what to load into. Megatron's own
    ``init_state_fn`` creates the (zero) moments; torch's Adam also keeps a ``step`` per parameter.
    Zero state and step 0 are exactly what the first step would start from.
    """
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if inner.init_state_fn is not None:
            inner.init_state_fn(inner.optimizer, inner.config)
        if HAVE_APEX_OR_TE:  # their Adam keeps the step in its param groups
            continue
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                inner.optimizer.state[param].setdefault("step", torch.tensor(0.0))


def sharded_checkpoint_state(model_chunks, optimizer, scheduler, common: dict, is_loading: bool, with_rng: bool):
    state = dict(common)
    # Megatron-LM's names: "model", or "model0", "model1"... for the chunks of virtual pipeline stages
    # (their tensors carry global layer offsets, so any chunking reshards into any other).
    model_state: dict = {}
    for index, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        state[key] = model_state[key] = _unwrap(chunk).sharded_state_dict(metadata=SHARDING_METADATA)
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata=SHARDING_METADATA
        )
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_state()
    return state


_writer_manager = None


def start_checkpoint_writer_helper() -> None:
    """Start the helper process of Megatron's torch_dist writer ourselves, set up to ignore stop
    signals and to die with this rank.

    megatron-core 0.16.1 starts it on the first save as a bare spawn-context ``Manager()`` that
    holds the writer's results queue: it died of the SIGTERM SLURM sends to every process (failing
    the stop-save) and outlived a killed rank, with the resource tracker, forever. Setting the
    module's queue first makes Megatron use ours.
    """
    global _writer_manager
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    import multiprocessing
    from multiprocessing.managers import SyncManager

    _writer_manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    _writer_manager.start(initializer=helper_process_setup)
    filesystem_async._results_queue = _writer_manager.Queue()


def quiet_writer_log() -> None:
    """Our one line says why a write failed; the torch_dist writer's own log line would come first."""
    drop_log_records("megatron.core.dist_checkpointing.strategies.filesystem_async", r"^Local process \d+ encounter")


def staged_state(root: str | Path, iteration: int, model_chunks, optimizer, scheduler,
                 common: dict) -> tuple[Path, dict]:
    """The staging directory of ``iteration`` (emptied by rank 0, every rank past that point) and
    the sharded state to write into it: what every save, at once or in the background, starts with."""
    common = {**common, "iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION}
    state = sharded_checkpoint_state(model_chunks, optimizer, scheduler, common, is_loading=False, with_rng=True)
    quiet_writer_log()
    if dist.get_rank() == 0:
        prepare_staging(root, iteration)
    dist.barrier()
    return staging_dir(root, iteration), state


def save_checkpoint(root: str | Path, iteration: int, model_chunks, optimizer, scheduler, common: dict,
                    sharded_strategy=None) -> Path:
    """Write ``iter_<iteration>`` under ``root`` from every rank, then publish it atomically.

    ``sharded_strategy``: how ``dist_checkpointing`` writes the tensors (default: Megatron's torch_dist
    strategy; an import passes one that reads each tensor from the source model as it is written)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        staging, state = staged_state(root, iteration, model_chunks, optimizer, scheduler, common)
        with stop_signals_deferred():  # a save is never cut in half; see signals.stop_signals_deferred
            if sharded_strategy is None:  # the helper serves Megatron's default writer only
                start_checkpoint_writer_helper()
            dist_checkpointing.save(state, str(staging), sharded_strategy, content_metadata=SHARDING_METADATA)
        publish_when_written(root, iteration)
    except (Exception, CheckpointException) as error:
        abandon_save(error, root, iteration, remove_staging=dist.get_rank() == 0)
    return iteration_dir(root, iteration)


def publish_when_written(root: str | Path, iteration: int) -> None:
    """Publish the checkpoint of ``iteration`` once every rank has written its part; collective,
    the last step of every save (in the background: the write request's last finalize step)."""
    dist.barrier()
    if dist.get_rank() == 0:
        publish(root, iteration)
    dist.barrier()


def load_checkpoint(path: Path, model_chunks, optimizer=None, scheduler=None, load_rng: bool = True,
                    common: dict | None = None) -> dict:
    """Load model weights (and optimizer, scheduler, RNG when given/asked) in this run's layout.

    Returns the checkpoint's common state (``iteration``, ``consumed_train_samples``, ``config``...);
    ``common``: that state, when the caller has read it already.
    """
    common = read_common(path) if common is None else common
    saved = common.get("config", {})
    same_layout = (
        saved.get("tensor_model_parallel_size") == ps.get_tensor_model_parallel_world_size()
        and saved.get("pipeline_model_parallel_size") == ps.get_pipeline_model_parallel_world_size()
    )
    with_rng = load_rng and same_layout  # RNG streams belong to (PP, TP) ranks; they do not reshard
    state = sharded_checkpoint_state(model_chunks, optimizer, scheduler, {}, is_loading=True, with_rng=with_rng)
    loaded = _load(state, path)
    for index, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        _unwrap(chunk).load_state_dict(loaded[key])
    if optimizer is not None:
        _let_torch_adam_load_reshardable_state()
        optimizer.load_state_dict(loaded["optimizer"])
        _unshare_torch_adam_steps(optimizer)
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if with_rng:
        _restore_rng(loaded["rng_state"][0])
    return common


# What must agree between a pretrained checkpoint and the model that starts from it (resolved
# values: an unset ffn_hidden_size and its explicit default are the same architecture).
ARCHITECTURE_KEYS = (
    "model", "num_layers", "hidden_size", "ffn_size", "num_attention_heads", "query_groups",
    "head_dim", "normalization", "swiglu", "add_bias_linear", "add_qkv_bias", "openai_gelu",
    "position_embedding_type", "transformer_block_type", "num_tokentypes", "make_vocab_size_divisible_by",
)


def changed_architecture_key(config, saved) -> str | None:
    """The first of ``ARCHITECTURE_KEYS`` whose value differs between ``config`` and the ``saved``
    config of a checkpoint (a model it cannot be), or None."""
    return next((key for key in ARCHITECTURE_KEYS if getattr(config, key) != getattr(saved, key)), None)


def load_pretrained_weights(root: str | Path, model_chunks, config) -> dict:
    """Start ``model_chunks`` from the weights of another run's latest checkpoint under ``root``.

    Only the weights are read (no optimizer, scheduler, RNG or iteration). An untied output layer
    that the checkpoint does not have (a headless model, whose head is its input-embedding table)
    is initialised from the checkpoint's input embeddings, as the paper does to turn a headless
    model into a language model; each rank reads the rows of its own vocab shard, on whatever
    pipeline stage holds the output layer.
    """
    path = latest_checkpoint(root) or Path(root)
    problem = checkpoint_problem(path)  # what --load's resume checks too (a truncated shard, a common.pt)
    if problem is not None:
        raise CheckpointError(f"pretrained: {problem}")
    common = read_common(path)
    saved = config_from_dict(common["config"])
    key = changed_architecture_key(config, saved)
    if key is not None:
        raise CheckpointError(
            f"{key}: {getattr(config, key)!r} differs from the pretrained checkpoint's {getattr(saved, key)!r} ({path})"
        )
    head_from_embeddings = saved.share_embeddings_and_output_weights
    state = {}
    for index, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        state[key] = _unwrap(chunk).sharded_state_dict()
        head = state[key].get("output_layer.weight")
        if head_from_embeddings and head is not None:
            head.key = "embedding.word_embeddings.weight"
            # A second reader of the embedding shard, not its owner (as Megatron marks the tied copy).
            head.replica_id = (1, *head.replica_id[1:]) if isinstance(head.replica_id, tuple) else 1
    loaded = _load(state, path, "pretrained: ")
    for index, chunk in enumerate(model_chunks):
        _unwrap(chunk).load_state_dict(loaded["model" if len(model_chunks) == 1 else f"model{index}"])
    return common
