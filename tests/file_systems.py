"""Real file systems that fail as disks do: a small tmpfs that fills up (the kernel's own ENOSPC) and
one remounted read-only (EROFS). Mounting needs root, which the suite has here and in CI."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str) -> Iterator[Path]:
    """``mount_point`` made a tmpfs of ``size`` (``"1m"``): a real file system that fills up, as a
    full disk does, with the kernel's own ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (the test suite runs as root here and in CI)")
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if made.returncode:  # root without the capability to mount (a restricted container)
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def remount_read_only(mount_point: Path) -> None:
    """Turn a :func:`small_disk` read-only (no file may be open for writing on it)."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)


def read_only_from_now(directory: Path) -> None:
    """Make ``directory`` read-only for what is opened from now on, while files opened before stay
    writable (a bind mount of it on itself, remounted read-only: the kernel refuses to remount a file
    system read-only under open writers). Undo it with ``umount directory``."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
