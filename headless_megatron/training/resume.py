"""The checkpoint policy at start: which checkpoint a run loads, what of it, and what a resumed run
takes from the checkpoint and what from its own config (docs/architecture.md, "Resuming a run").

- ``load`` set (auto-resume): its tracker's checkpoint, verified complete (``load_fallback``: the
  newest complete one), with optimizer, scheduler and RNG states unless ``no_load_optim`` /
  ``no_load_rng``; ``finetune`` loads the weights only and starts at iteration 0. A ``load`` equal
  to ``save`` with nothing in it yet is the first run of an auto-resuming job.
- nothing to resume and ``pretrained`` set: another run's weights, nothing else.
- a run that starts at iteration 0 never writes over another run's directory.

A resumed run continues at the checkpoint's iteration and at its ``consumed_train_samples`` (so a
changed ``global_batch_size`` continues at the next unread sample, as Megatron-LM does). A changed
learning-rate schedule is refused unless ``override_opt_param_scheduler`` (apply it) or
``use_checkpoint_opt_param_scheduler`` (keep the checkpoint's) says which one; a changed
``seq_length``, vocabulary or tokenizer is refused unless ``override_checkpoint_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headless_megatron.config import TrainConfig, config_from_dict
from headless_megatron.training.checkpoint import changed_architecture_key, load_checkpoint, load_pretrained_weights
from headless_megatron.training.run_directory import (
    CheckpointError,
    checkpoint_to_resume,
    read_common,
    refuse_to_overwrite_another_run,
)

# The keys of Megatron's OptimizerParamScheduler state (max_lr, min_lr, warm-up, decay steps and
# style, weight decay), by the config value each comes from.
SCHEDULE_KEYS = {
    "lr": "lr", "min_lr": "min_lr", "lr_warmup_iters": "lr_warmup_iters",
    "lr_decay_iters": "decay_iters", "lr_decay_style": "lr_decay_style", "weight_decay": "weight_decay",
    "lr_wsd_decay_iters": "lr_wsd_decay_iters", "lr_wsd_decay_style": "lr_wsd_decay_style",
    "lr_warmup_samples": "lr_warmup_samples", "lr_decay_samples": "lr_decay_samples",
    "lr_wsd_decay_samples": "lr_wsd_decay_samples",
}



@dataclass(frozen=True)
class DataIdentity:
    """What makes a sample: saved with every checkpoint, compared when a run resumes."""

    seq_length: int
    padded_vocab_size: int
    tokenizer: str | None
    """The tokenizer's fingerprint (None for mock data without one)."""

    def to_dict(self) -> dict:
        return {"seq_length": self.seq_length, "padded_vocab_size": self.padded_vocab_size,
                "tokenizer": self.tokenizer}


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: its first iteration is ``iteration + 1`` and its first sample
    ``consumed_train_samples``."""

    iteration: int = 0
    consumed_train_samples: int = 0


def resume(config: TrainConfig, model_chunks, optimizer, scheduler, data: DataIdentity, say) -> StartPoint:
    """Load what ``config`` asks to start from into the model chunks (and optimizer and scheduler)
    and return where the run starts; ``say`` prints a line on rank 0."""
    path, note = checkpoint_to_resume(config.load, config.load_fallback) if config.load else (None, "")
    if path is None:
        refuse_to_overwrite_another_run(config)
    if path is None and config.pretrained:
        common = load_pretrained_weights(config.pretrained, model_chunks, config)
        say(f"starting from the weights of {config.pretrained} (iteration {common['iteration']})")
        return StartPoint()
    if not config.load:
        return StartPoint()
    if path is None:
        if config.save and Path(config.save).resolve() == Path(config.load).resolve():
            say(f"load: no checkpoint in {config.load} yet; starting from iteration 0")
            return StartPoint()
        raise CheckpointError(
            f"load: no checkpoint in {config.load} (no latest_checkpointed_iteration.txt); "
            "point load at a save directory, or drop load to start from scratch"
        )
    if note:
        say(note)
    common = read_common(path)
    saved = config_from_dict(common["config"])
    load_optimizer = not (config.no_load_optim or config.finetune)
    if not config.finetune:
        _check_architecture(config, saved, path)
        _check_data_identity(config, saved, common.get("data"), data, path)
    if load_optimizer:
        _choose_schedule(config, saved, scheduler, say)
    common = load_checkpoint(
        path,
        model_chunks,
        optimizer if load_optimizer else None,
        scheduler if load_optimizer else None,
        load_rng=not (config.no_load_rng or config.finetune),
        common=common,
    )
    say(f"loaded {path} (iteration {common['iteration']})")
    if config.finetune:
        refuse_to_overwrite_another_run(config)
        return StartPoint()
    iteration = int(common["iteration"])
    consumed = int(common.get("consumed_train_samples", iteration * saved.global_batch_size))
    if config.global_batch_size != saved.global_batch_size:
        say(f"global_batch_size: {config.global_batch_size} from iteration {iteration + 1} (the checkpoint's "
            f"{saved.global_batch_size}); the data continues at sample {consumed}, the first not yet read")
    return StartPoint(iteration, consumed)


def _check_architecture(config: TrainConfig, saved: TrainConfig, path: Path) -> None:
    """A resumed run is the checkpoint's model: a key that changes it (even one that keeps every
    shape, such as normalization or position_embedding_type) is refused."""
    key = changed_architecture_key(config, saved)
    if key is not None:
        raise CheckpointError(
            f"{key}: {getattr(config, key)} here, {getattr(saved, key)} in {path}; a resumed run keeps the "
            "checkpoint's model (start from its weights with --pretrained, or give this run another save)"
        )


def _choose_schedule(config: TrainConfig, saved: TrainConfig, scheduler, say) -> None:
    """Refuse a changed schedule unless a flag says which one to follow, and tell Megatron's
    scheduler (whose ``load_state_dict`` reads these two attributes) the choice."""
    if (config.train_samples is None) != (saved.train_samples is None):
        counted, other = ("samples", "iterations") if saved.train_samples is not None else ("iterations", "samples")
        raise CheckpointError(f"train_samples: the checkpoint's schedule counts {counted}, this run's {other}; "
                              f"resume with {'train_samples' if counted == 'samples' else 'train_iters'}")
    changed = [(key, getattr(config, value), getattr(saved, value)) for key, value in SCHEDULE_KEYS.items()
               if getattr(config, value) != getattr(saved, value)]
    scheduler.override_opt_param_scheduler = config.override_opt_param_scheduler
    scheduler.use_checkpoint_opt_param_scheduler = not config.override_opt_param_scheduler
    if not changed:
        return
    described = ", ".join(f"{key} {new} (checkpoint: {old})" for key, new, old in changed)
    if config.override_opt_param_scheduler:
        say(f"override_opt_param_scheduler: the schedule now follows {described}")
    elif config.use_checkpoint_opt_param_scheduler:
        # Megatron's scheduler does not save WSD's settings: the checkpoint's config has them.
        scheduler.lr_wsd_decay_style = saved.lr_wsd_decay_style
        scheduler.wsd_decay_steps = saved.lr_wsd_decay_iters if saved.train_samples is None \
            else saved.lr_wsd_decay_samples
        say(f"use_checkpoint_opt_param_scheduler: the checkpoint's schedule continues; ignored {described}")
    else:
        key, new, old = changed[0]
        raise CheckpointError(
            f"{key}: {new} differs from the checkpoint's {old}"
            + (f" (and {len(changed) - 1} more schedule keys)" if len(changed) > 1 else "")
            + "; pass --override-opt-param-scheduler to apply this run's schedule, or "
            "--use-checkpoint-opt-param-scheduler to keep the checkpoint's"
        )


def _check_data_identity(config: TrainConfig, saved: TrainConfig, saved_data: dict | None, data: DataIdentity,
                         path: Path) -> None:
    """Refuse a resume whose samples are not the checkpoint's kind, unless override_checkpoint_data."""
    if config.override_checkpoint_data:
        return
    before = saved_data or {"seq_length": saved.seq_length}  # checkpoints before this check: the config's
    now = data.to_dict()
    names = {"seq_length": "seq_length", "padded_vocab_size": "vocab_size", "tokenizer": "tokenizer"}
    for key, before_value in before.items():
        value = now.get(key)
        if value is not None and before_value is not None and value != before_value:
            raise CheckpointError(
                f"{names[key]}: {_shown(key, value)} here, {_shown(key, before_value)} in {path}; a sample would "
                "mean something else from here on. Pass --override-checkpoint-data if that is intended, or "
                "start a new run from its weights with --pretrained"
            )


def _shown(key: str, value) -> str:
    if key == "tokenizer":
        return f"tokenizer {value[:19]}..."  # its fingerprint: "sha256:" and the first hex digits
    return f"{value} padded ids" if key == "padded_vocab_size" else str(value)
