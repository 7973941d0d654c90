"""A run's directory on disk: what it holds, how a checkpoint is published in it, and which of its
checkpoints a run resumes from. Nothing here knows Megatron-Core; :mod:`~headless_megatron.training.checkpoint`
writes and reads the checkpoints themselves.

Layout, as in Megatron-LM::

    <save>/iter_0000100/                      a dist_checkpointing directory (torch_dist): model,
                                              optimizer, scheduler, per-(PP, TP)-rank RNG states,
                                              and in common.pt the iteration, consumed samples, config
    <save>/latest_checkpointed_iteration.txt  the tracker: the published iteration to resume from
    <save>/metrics.jsonl                      the metrics log (unless log_dir is set)
    <save>/wandb_run_id.txt                   the W&B run a requeued job continues
    <save>/config.yaml                        the resolved config of the run that last started here
    <save>/.headless-megatron.lock            held by the run that writes here (runtime/directory_lock.py)

A checkpoint is written to ``iter_XXXXXXX.tmp/`` (:func:`staging_dir`); after every rank has
finished writing, rank 0 publishes it (:func:`publish`): syncs it to disk, renames it into place
and only then rewrites the tracker (itself through a temporary file, synced, and an atomic rename).
A run killed while saving therefore leaves the previous checkpoint as the one that is loaded, and a
half-written directory never looks complete. With ``keep_last_checkpoints``, rank 0 then deletes the
checkpoints that retention does not keep (:mod:`~headless_megatron.training.retention`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import typing
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headless_megatron import durable
from headless_megatron.config import TrainConfig
from headless_megatron.errors import UserError, first_line
from headless_megatron.runtime.directory_lock import LOCK_FILE, DirectoryLock

TRACKER_FILE = "latest_checkpointed_iteration.txt"
COMMON_FILE = "common.pt"
DCP_METADATA_FILE = ".metadata"
MEGATRON_METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id.txt"
CONFIG_FILE = "config.yaml"


class CheckpointError(UserError):
    """A checkpoint that should exist is missing, unreadable or incompatible (one-line message)."""


def iteration_dir(root: str | Path, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` is published under ``root``."""
    return Path(root) / f"iter_{iteration:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The latest published checkpoint under ``root``, or None when it holds none.

    That is the iteration the tracker names or, without a tracker (deleted, or lost in a copy),
    the newest ``iter_NNNNNNN`` directory. Its completeness is not checked here: see
    :func:`checkpoint_to_resume`.
    """
    root = Path(root)
    tracker = root / TRACKER_FILE
    if not tracker.exists():
        published = published_iterations(root)
        return published[-1] if published else None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}")
    path = iteration_dir(root, int(text))
    if not path.is_dir():
        raise CheckpointError(f"{tracker} names iteration {text}, but {path} is missing")
    return path


def checkpoint_to_resume(root: str | Path, fallback: bool = False) -> tuple[Path | None, str]:
    """The checkpoint a run resumes from under ``root``, verified complete, and a note for the log
    ("" when it is simply the tracker's), or (None, "") when ``root`` holds no checkpoint.

    An incomplete latest checkpoint (a shard missing or cut short), or a tracker naming a missing
    directory (a crash while its iteration was saved again, see :func:`publish`), is an error naming
    the file, unless ``fallback``: then the newest complete earlier one is used (for the missing
    directory, first the complete copy that was being replaced).
    """
    root = Path(root)
    try:
        latest = latest_checkpoint(root)
    except CheckpointError as error:
        missing = _tracked_but_missing(root)
        if missing is None:
            raise
        if not fallback:
            raise CheckpointError(f"{error}; resume from the previous complete checkpoint with --load-fallback") \
                from None
        return _newest_complete([replaced_dir(root, missing), *reversed(_published_before(root, missing))], str(error))
    if latest is None:
        return None, ""
    tracked = (root / TRACKER_FILE).exists()
    note = "" if tracked else f"no {TRACKER_FILE} in {root}: resuming from its newest complete checkpoint"
    problem = checkpoint_problem(latest)
    if problem is None:
        return latest, note
    if fallback or not tracked:
        found, fallback_note = _newest_complete(reversed(_published_before(root, iteration_of(latest))), problem)
        return found, note or fallback_note
    raise CheckpointError(f"{problem}; resume from the previous complete checkpoint with --load-fallback")


def _tracked_but_missing(root: Path) -> int | None:
    """The iteration the tracker names when its directory is missing (a crash while an iteration was
    saved again), else None."""
    text = (root / TRACKER_FILE).read_text().strip() if (root / TRACKER_FILE).exists() else ""
    return int(text) if text.isdigit() and not iteration_dir(root, int(text)).is_dir() else None


def _published_before(root: Path, iteration: int) -> list[Path]:
    return [path for path in published_iterations(root) if iteration_of(path) < iteration]


def _newest_complete(candidates, problem: str) -> tuple[Path, str]:
    """The first complete checkpoint of ``candidates`` (newest first), with the note saying why."""
    for candidate in candidates:
        if candidate.is_dir() and checkpoint_problem(candidate) is None:
            return candidate, f"{problem}; falling back to the previous complete checkpoint {candidate.name}"
    raise CheckpointError(f"{problem}, and no earlier checkpoint is complete")


def published_iterations(root: str | Path) -> list[Path]:
    """The ``iter_NNNNNNN`` directories under ``root`` (not the ``.tmp`` staging ones), oldest first."""
    found = [p for p in Path(root).glob("iter_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=iteration_of)


def iteration_of(path: Path) -> int:
    """The iteration of an ``iter_NNNNNNN`` directory."""
    return int(path.name[5:])


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (one line naming the file), or None when it is.

    The check of ``export-hf``'s reader: Megatron's and DCP's metadata readable, and every file the
    metadata references present at its full size.
    """
    if not (path / MEGATRON_METADATA_FILE).is_file():
        return f"{path}: incomplete checkpoint: {MEGATRON_METADATA_FILE} is missing"
    try:
        complete_metadata(path)
        read_common(path)
    except CheckpointError as error:
        return str(error)
    return None


def complete_metadata(directory: Path):
    """DCP's metadata of ``directory``, after checking that every file it references is whole
    (a :class:`CheckpointError` naming the file otherwise)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        backend = json.loads((directory / MEGATRON_METADATA_FILE).read_text()).get("sharded_backend")
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{directory}: incomplete checkpoint: unreadable {MEGATRON_METADATA_FILE} ({error})"
        ) from error
    if backend != "torch_dist":
        raise CheckpointError(f"{directory}: a {backend} checkpoint; only torch_dist checkpoints are read")
    for name in (COMMON_FILE, DCP_METADATA_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: incomplete checkpoint: {name} is missing")
    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as error:  # unpickling a damaged file can raise anything
        raise CheckpointError(f"{directory}: incomplete checkpoint: unreadable {DCP_METADATA_FILE} "
                              f"({first_line(error)})") from error
    needed_bytes: dict[str, int] = defaultdict(int)
    for info in (metadata.storage_data or {}).values():
        needed_bytes[info.relative_path] = max(needed_bytes[info.relative_path], info.offset + info.length)
    for name, size in sorted(needed_bytes.items()):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{directory}: incomplete checkpoint: {name} is missing")
        if file.stat().st_size < size:
            raise CheckpointError(
                f"{directory}: incomplete checkpoint: {name} is truncated ({file.stat().st_size} of {size} bytes)"
            )
    return metadata


def read_common(directory: Path) -> dict[str, Any]:
    """What ``common.pt`` of the checkpoint ``directory`` holds (``iteration``, ``config``...); a
    one-line :class:`CheckpointError` when it cannot be read."""
    import torch

    try:
        common = torch.load(directory / COMMON_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a missing, truncated or foreign file: the same clear error
        raise CheckpointError(
            f"{directory}: not a readable torch_dist checkpoint (its {COMMON_FILE}: {first_line(error)})"
        ) from error
    if not isinstance(common, dict):
        raise CheckpointError(f"{directory}: {COMMON_FILE} holds a {type(common).__name__}, not a mapping")
    return common


def staging_dir(root: str | Path, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` is written before it is published."""
    return Path(root) / f"iter_{iteration:07d}.tmp"


def prepare_staging(root: str | Path, iteration: int) -> None:
    """Make the staging directory of ``iteration`` empty (one left by a run killed while saving is
    removed). Rank 0's job, before any rank writes."""
    staging = staging_dir(root, iteration)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)


def replaced_dir(root: str | Path, iteration: int) -> Path:
    """Where a published checkpoint of ``iteration`` waits while a new save of the same iteration is
    renamed into its place."""
    return Path(root) / f"iter_{iteration:07d}.replaced"


def publish(root: str | Path, iteration: int) -> Path:
    """Make the written staging directory of ``iteration`` the latest checkpoint: synced to disk
    (``durable``), renamed into place, and only then named by the tracker; rank 0's job, once every
    rank has finished writing.

    Saving an iteration that is already published (a run resumed and saved it again) moves the old
    directory aside before renaming the new one in, and deletes it after: a crash between the two
    renames leaves the tracker naming a missing directory and the old checkpoint complete beside it,
    which ``checkpoint_to_resume`` with ``fallback`` loads. Aside directories of earlier saves are
    removed once the tracker names a complete checkpoint again."""
    root = Path(root)
    final, staging = iteration_dir(root, iteration), staging_dir(root, iteration)
    durable.sync_tree(staging)
    if final.exists():
        aside = replaced_dir(root, iteration)
        shutil.rmtree(aside, ignore_errors=True)
        durable.replace(final, aside)
        durable.replace(staging, final)
    else:
        durable.replace(staging, final)
    durable.write_text(root / TRACKER_FILE, f"{iteration}\n")
    for aside in root.glob("iter_*.replaced"):
        shutil.rmtree(aside, ignore_errors=True)
    return final


def abandon_save(error: BaseException, root: str | Path, iteration: int, remove_staging: bool,
                 background: bool = False) -> typing.NoReturn:
    """A failed save: its staging directory removed (``remove_staging``: rank 0's job), and the error
    in one line when it is the disk's, or when a ``background`` writer failed (its traceback is in
    another process); any other error is raised as it is. Nothing is published."""
    staging = staging_dir(root, iteration)
    cause = write_failure(error, staging)  # before the space is given back: a full disk is measured
    if remove_staging:
        shutil.rmtree(staging, ignore_errors=True)
    if cause is None and background:
        cause = f"the background writer failed: {first_line(error)}"
    if cause is None:
        raise error
    raise CheckpointError(
        f"save: writing iteration {iteration} to {staging.parent} failed ({cause}); nothing was published, "
        "the previous checkpoint stays the latest"
    ) from error


def write_failure(error: BaseException, directory: Path) -> str | None:
    """What went wrong on the disk when writing into ``directory`` failed with ``error`` ("No space left
    on device", "Read-only file system", ...), or None when the failure is not the file system's."""
    seen = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):  # DCP's CheckpointException: {rank: wrapped exception}
            for wrapped in failures.values():
                wrapped = getattr(wrapped, "exc", wrapped)
                pending.extend(wrapped if isinstance(wrapped, tuple) else (wrapped,))
        pending.extend(item for item in (current.__cause__, current.__context__) if isinstance(item, BaseException))
    text = str(error)  # a writer process's error reaches us as text: "Worker failure: [Errno 28] ..."
    quoted = re.search(r"\[Errno (\d+)\]", text)
    if quoted:
        return os.strerror(int(quoted.group(1)))
    if "unexpected pos" in text or "PytorchStreamWriter failed" in text:  # torch.save's zip writer cut short
        free = shutil.disk_usage(directory.parent if directory.parent.exists() else "/").free
        return os.strerror(errno.ENOSPC) if free < (1 << 20) else "a file was cut short while writing"
    return None


@dataclass
class HeldDirectory:
    """A run directory this run holds the lock of; ``created`` when the run made the directory."""

    path: Path
    lock: DirectoryLock
    created: bool


def lock_run_directories(config: TrainConfig) -> list[HeldDirectory]:
    """Take the lock of every directory the run writes (``save``, and ``log_dir`` when it differs),
    creating them: a one-line ``DirectoryInUse`` naming the holder when another run holds one, or
    ``DirectoryUnwritable`` with the cause when it cannot be written (under a file, read-only, no
    space). Rank 0's job, before anything is built."""
    held: list[HeldDirectory] = []
    directories: dict[Path, str] = {}
    for key, value in (("save", config.save), ("log_dir", config.metrics_dir)):
        if value:
            directories.setdefault(Path(value).resolve(), key)
    try:
        for directory, key in directories.items():
            created = not directory.exists()
            lock = DirectoryLock(directory / LOCK_FILE, f"{key} {directory}")
            lock.acquire()
            held.append(HeldDirectory(directory, lock, created))
    except BaseException:
        release_run_directories(held, failed=True)
        raise
    return held


def release_run_directories(held: list[HeldDirectory], failed: bool = False) -> None:
    """Release the locks; after a ``failed`` start, also remove a directory the run created and
    left empty, so that a refused run leaves nothing behind."""
    for directory in held:
        directory.lock.release()
        if failed and directory.created:
            with contextlib.suppress(OSError):
                (directory.path / LOCK_FILE).unlink()
                directory.path.rmdir()  # only when empty


def refuse_to_overwrite_another_run(config: TrainConfig) -> None:
    """A run that starts at iteration 0 must not save over another run's checkpoints (its
    iter_NNNNNNN would replace theirs one by one) nor append a second run to its metrics. The
    first run of an auto-resuming job (load equal to save, nothing saved yet) may append: the
    re-done iterations replace the earlier ones for ``report``."""
    if config.save and latest_checkpoint(config.save) is not None:
        raise CheckpointError(
            f"save: {config.save} holds the checkpoints of another run and this run starts from iteration 0; "
            f"resume it with --load {config.save}, or save to a new directory"
        )
    auto_resuming = config.load and config.save and Path(config.load).resolve() == Path(config.save).resolve()
    metrics = metrics_file(config)
    if metrics is not None and metrics.exists() and not auto_resuming:
        raise CheckpointError(
            f"{metrics} holds the metrics of another run; give this run a new save (or log_dir) directory"
        )


def write_resolved_config(config: TrainConfig) -> Path | None:
    """``<save>/config.yaml``: every field of the run as it starts (defaults and derived values such
    as train_iters resolved), which ``--config`` reads back; rank 0's job, once the run is sure to
    save there. None without save."""
    if not config.save:
        return None
    import yaml

    path = Path(config.save) / CONFIG_FILE
    durable.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def metrics_file(config: TrainConfig) -> Path | None:
    """Where the run's metrics log goes, or None when it keeps none."""
    return Path(config.metrics_dir) / METRICS_FILE if config.metrics_dir else None


def wandb_run_id(directory: str | None, is_rank_zero: bool) -> str | None:
    """The Weights & Biases run id of the run saved in ``directory`` (rank 0's; None on the others),
    created on its first start and kept there, so that a requeued or resumed job continues the same
    W&B run."""
    if directory is None or not is_rank_zero:
        return None
    path = Path(directory) / WANDB_ID_FILE
    if not path.exists():
        import uuid

        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(path, uuid.uuid4().hex[:16] + "\n")
    return path.read_text().strip()
