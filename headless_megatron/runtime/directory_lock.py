"""One writer per directory: an exclusive OS lock held for as long as a run (or a conversion) writes
there, so that a second one started on the same directory stops at once with one line naming the
first one's host and PID, instead of interleaving checkpoints and metrics with it.

The lock is ``flock`` on a lock file: the kernel releases it when the holder dies, even by SIGKILL,
so a killed run never leaves a stale lock. The lock file's content is a lease, the holder's host,
PID and start time, and its modification time a heartbeat, touched every few seconds by a thread of
the holder. ``flock`` is coherent between the processes of one machine and on file systems that
support it across machines (local disks, NFSv4, Lustre mounted with ``flock``); where it is not (NFS
without a lock manager, Lustre with ``localflock``), a run on another machine also meets the lease:
a lease of another host whose heartbeat is younger than :data:`STALE_AFTER_S` refuses the start.
A holder that ends normally empties the lease; one that is killed leaves it to go stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from headless_megatron.errors import UserError

LOCK_FILE = ".headless-megatron.lock"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 20.0


class DirectoryInUse(UserError):
    """Another process writes to this directory now."""


class DirectoryUnwritable(UserError):
    """The directory cannot be written at all (under a file, read-only, no space)."""


class DirectoryLock:
    """The exclusive lock on ``lock_file`` (a run directory's :data:`LOCK_FILE`, or a file beside a
    conversion's output), with its lease and heartbeat. ``what`` names the directory in messages."""

    def __init__(self, lock_file: Path, what: str, remove_on_release: bool = False):
        self.lock_file = Path(lock_file)
        self.what = what
        self.remove_on_release = remove_on_release
        self._fd: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as error:  # under a file, read-only, no space: the directory cannot be written
            raise DirectoryUnwritable(f"{self.what}: cannot write there ({error.strerror or error})") from None

    def _acquire(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryInUse(f"{self.what}: in use by {_describe(self.lock_file)}; wait for it to end, "
                                     "or give this one another directory") from None
            # A holder that removed the file between our open and our lock locked another inode.
            if os.path.exists(self.lock_file) and os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        lease = _read_lease(self.lock_file)
        age = time.time() - os.fstat(fd).st_mtime
        if lease and lease.get("host") != socket.gethostname() and age < STALE_AFTER_S:
            os.close(fd)
            raise DirectoryInUse(
                f"{self.what}: in use by {_describe(self.lock_file)} (its heartbeat {age:.0f} s ago; the lock "
                f"is not shared between hosts on this file system); if that run is gone, retry after "
                f"{STALE_AFTER_S:.0f} s"
            )
        lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(lease) + "\n").encode(), 0)
        except OSError:
            if self.remove_on_release:
                os.unlink(self.lock_file)
            os.close(fd)
            raise
        self._fd = fd
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="directory-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a full or vanished disk is the run's to report
                os.utime(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        self._heartbeat.join()
        with contextlib.suppress(OSError):
            if self.remove_on_release:  # still locked: a waiting process sees the inode change (acquire)
                os.unlink(self.lock_file)
            else:
                os.ftruncate(self._fd, 0)  # an empty lease: nobody holds it
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def holding(directory: str | os.PathLike, what: str) -> Iterator[DirectoryLock]:
    """Hold ``directory``'s lock (created with the directory when missing) for the block."""
    with DirectoryLock(Path(directory) / LOCK_FILE, what) as lock:
        yield lock


def beside(output: str | os.PathLike, what: str) -> DirectoryLock:
    """The lock of an output that may not exist yet (a conversion's): a hidden file beside it,
    removed when released."""
    output = Path(output)
    return DirectoryLock(output.parent / f".{output.name}.lock", what, remove_on_release=True)


def _read_lease(lock_file: Path) -> dict | None:
    try:
        lease = json.loads(lock_file.read_text() or "null")
    except (OSError, ValueError):
        return None
    return lease if isinstance(lease, dict) else None


def _describe(lock_file: Path) -> str:
    lease = _read_lease(lock_file)
    if lease is None:
        return "another process"
    return f"PID {lease.get('pid')} on {lease.get('host')} (started {lease.get('started')})"
