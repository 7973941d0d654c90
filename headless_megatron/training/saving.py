"""How a run's checkpoints are written: at once, or with ``async_save`` in the background (one write
in flight); each publication is logged and followed by retention, and the time the loop spends on a
save goes to Megatron-Core's ``save-checkpoint`` timer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from headless_megatron.config import TrainConfig
from headless_megatron.training.async_save import BackgroundSaves
from headless_megatron.training.checkpoint import save_checkpoint
from headless_megatron.training.retention import apply_retention


class RunSaves:
    """The checkpoints of one run (every call is collective)."""

    def __init__(self, config: TrainConfig, timers, say: Callable[[str], None]):
        self.config = config
        self.timers = timers
        self.say = say
        self.background = BackgroundSaves() if config.async_save else None
        self.latest: str | None = None  # the last checkpoint this run published

    def save(self, iteration: int, model_chunks, optimizer, scheduler, common: dict) -> None:
        """Save ``iteration``: at once, or started in the background (after the write in flight, if
        any, has finished)."""
        state = (self.config.save, iteration, model_chunks, optimizer, scheduler, common)
        self.timers("save-checkpoint").start()
        if self.background is None:
            self._published(save_checkpoint(*state))
        else:
            self._published(self.background.finish())
            self.background.start(*state)
        self.timers("save-checkpoint").stop()

    def poll(self) -> None:
        """After each iteration: publish the background write if it has finished."""
        if self.background is not None:
            self._published(self.background.poll())

    def finish(self) -> None:
        """Wait for the checkpoint being written in the background, if any."""
        if self.background is not None:
            self._published(self.background.finish())

    def _published(self, path: Path | None) -> None:
        if path is None:
            return
        self.latest = str(path)
        self.say(f"saved checkpoint {path}")
        apply_retention(self.config, self.say)
