"""Checkpoints written in the background (``async_save``, Megatron-LM's ``--async-save``): the
training loop is blocked only while the state is staged, not while it is written."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing

from headless_megatron.training.checkpoint import (
    SHARDING_METADATA,
    publish_when_written,
    staged_state,
    start_checkpoint_writer_helper,
)
from headless_megatron.training.run_directory import abandon_save, iteration_dir


class BackgroundSaves:
    """Checkpoints written while training goes on (``async_save``), through Megatron-Core's own
    machinery: ``dist_checkpointing.save(..., async_sharded_save=True)`` returns the write as a
    request, an ``AsyncCallsQueue`` runs it in a forked writer process and finalizes it on every rank
    once every rank's writer has finished (DCP's metadata, then Megatron's); our publication (the
    rename into place and the tracker) is the request's last finalize step, so a checkpoint becomes
    the latest only after every rank's write has finished and been checked, never before.

    At most one write is in flight: a save that comes while one is, waits for it first. Every call
    is collective (each rank at the same iteration).
    """

    def __init__(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.queue = AsyncCallsQueue()
        self.in_flight: tuple[Path, int] | None = None

    def start(self, root: str | Path, iteration: int, model_chunks, optimizer, scheduler, common: dict) -> None:
        """Stage the state of ``iteration`` and start writing it in the background. The write before
        it must have been waited for (:meth:`finish`, whose result the caller reports)."""
        if self.in_flight is not None:
            raise RuntimeError("a background save is in flight: finish() it before starting the next")
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

        try:
            staging, state = staged_state(root, iteration, model_chunks, optimizer, scheduler, common)
            start_checkpoint_writer_helper()
            request = dist_checkpointing.save(state, str(staging), async_sharded_save=True,
                                              content_metadata=SHARDING_METADATA)
            request.add_finalize_fn(partial(publish_when_written, Path(root), iteration))
            self.queue.schedule_async_request(request)
        except (Exception, CheckpointException) as error:
            abandon_save(error, root, iteration, remove_staging=dist.get_rank() == 0)
        self.in_flight = (Path(root), iteration)

    def poll(self, blocking: bool = False) -> Path | None:
        """The checkpoint published by this call (None when none was in flight, or it is still being
        written and not ``blocking``); a one-line CheckpointError when its write failed."""
        if self.in_flight is None:
            return None
        root, iteration = self.in_flight
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            finalized = self.queue.maybe_finalize_async_calls(blocking=blocking)
        except (Exception, CheckpointException) as error:
            self.in_flight = None
            abandon_save(error, root, iteration, remove_staging=dist.get_rank() == 0, background=True)
        if not finalized:
            return None
        self.in_flight = None
        return iteration_dir(root, iteration)

    def finish(self) -> Path | None:
        """Wait for the write in flight, if any, and return what it published."""
        return self.poll(blocking=True)

