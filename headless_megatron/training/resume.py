"""The checkpoint policy at start: which checkpoint a run loads, and what of it.

- ``load`` set (auto-resume): its tracker's checkpoint, verified complete (``load_fallback``: the
  newest complete one), with optimizer, scheduler and RNG states unless ``no_load_optim`` /
  ``no_load_rng``; ``finetune`` loads the weights only and starts at iteration 0. A ``load`` equal
  to ``save`` with nothing in it yet is the first run of an auto-resuming job.
- nothing to resume and ``pretrained`` set: another run's weights, nothing else.
- a run that starts at iteration 0 never writes over another run's directory.
"""

from __future__ import annotations

from pathlib import Path

from headless_megatron.config import TrainConfig
from headless_megatron.training.checkpoint import load_checkpoint, load_pretrained_weights
from headless_megatron.training.run_directory import (
    CheckpointError,
    checkpoint_to_resume,
    refuse_to_overwrite_another_run,
)


def resume(config: TrainConfig, model_chunks, optimizer, scheduler, say) -> int:
    """Load what ``config`` asks to start from into the model chunks (and optimizer and scheduler)
    and return the iteration to continue from; ``say`` prints a line on rank 0."""
    path, note = checkpoint_to_resume(config.load, config.load_fallback) if config.load else (None, "")
    if path is None:
        refuse_to_overwrite_another_run(config)
    if path is None and config.pretrained:
        common = load_pretrained_weights(config.pretrained, model_chunks, config)
        say(f"starting from the weights of {config.pretrained} (iteration {common['iteration']})")
        return 0
    if not config.load:
        return 0
    if path is None:
        if config.save and Path(config.save).resolve() == Path(config.load).resolve():
            say(f"load: no checkpoint in {config.load} yet; starting from iteration 0")
            return 0
        raise CheckpointError(
            f"load: no checkpoint in {config.load} (no latest_checkpointed_iteration.txt); "
            "point load at a save directory, or drop load to start from scratch"
        )
    if note:
        say(note)
    load_optimizer = not (config.no_load_optim or config.finetune)
    common = load_checkpoint(
        path,
        model_chunks,
        optimizer if load_optimizer else None,
        scheduler if load_optimizer else None,
        load_rng=not (config.no_load_rng or config.finetune),
    )
    say(f"loaded {path} (iteration {common['iteration']})")
    if config.finetune:
        refuse_to_overwrite_another_run(config)
        return 0
    return int(common["iteration"])
