"""Publishing files so that a crash never leaves a published name over contents that never reached
the disk.

Every output of this project is written under a scratch name and renamed into place when complete
(checkpoints, datasets, exports, the checkpoint tracker). A rename is atomic for the processes that
run, but not across a crash of the machine (power, a kernel panic, a node pulled from a cluster):
the file system may have recorded the new name before the data written under the old one, and after
the reboot the published file is empty or cut short. The rule, as databases follow it: ``fsync``
every file, then the directories that name them, *before* the rename; and the directory holding
the new name after it, so that the rename itself is on disk before anything builds on it.

``os.fsync`` is called through this module's ``os`` so that tests can count and order the calls.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_tree(path: str | os.PathLike) -> None:
    """``fsync`` ``path`` (a file, or a directory with every file and directory under it, the
    directories after what they contain)."""
    path = Path(path)
    if not path.is_dir():
        _sync(path, os.O_RDONLY)
        return
    for directory, _, files in os.walk(path, topdown=False):
        for name in files:
            _sync(Path(directory) / name, os.O_RDONLY)
        sync_directory(directory)


def sync_directory(directory: str | os.PathLike) -> None:
    """``fsync`` a directory: the names created, removed or renamed in it are on disk."""
    _sync(Path(directory), os.O_RDONLY | os.O_DIRECTORY)


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace`` of written, synced contents, made durable: both directories synced after."""
    source, target = Path(source), Path(target)
    os.replace(source, target)
    sync_directory(target.parent)
    if source.parent.resolve() != target.parent.resolve():
        sync_directory(source.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the file ``path`` by ``text`` atomically and durably (a reader sees the old or the
    new contents, before and after a crash)."""
    path = Path(path)
    pending = path.with_name(path.name + ".tmp")
    with open(pending, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    replace(pending, path)


def _sync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
