"""Portable advisory file locks: ``flock`` on POSIX, ``msvcrt.locking`` on Windows.

Neither is imported before a lock is first taken, so importing this module (and loading a
model) never needs ``fcntl``. The locks are per open file: two threads of one process exclude
each other as two processes do, and the OS releases a lock when its process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

WINDOWS = os.name == "nt"


@contextlib.contextmanager
def held(path: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock file ``path``; yields False if ``blocking`` is off and someone else holds it.

    The file is removed on release, so lock files do not accumulate; a waiter that got the lock
    on a file removed meanwhile tries again.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not lock(fd, blocking):
            os.close(fd)
            yield False
            return
        if same_file(fd, path):
            break
        unlock_and_close(fd)
    try:
        yield True
    finally:
        remove_and_unlock(fd, path)


def lock(fd: int, blocking: bool) -> bool:
    """Lock an open file exclusively; False if ``blocking`` is off and another holder has it."""
    if WINDOWS:
        import msvcrt

        while True:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.05)
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def unlock_and_close(fd: int) -> None:
    if WINDOWS:
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    os.close(fd)  # releases a flock


def remove_and_unlock(fd: int, path: str) -> None:
    """Remove a lock file we hold, then release it (Windows: release, then remove if nobody has it open)."""
    if not WINDOWS:
        with contextlib.suppress(OSError):
            os.unlink(path)
    unlock_and_close(fd)
    if WINDOWS:
        with contextlib.suppress(OSError):
            os.remove(path)


def same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a lock on a removed file protects nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return os.path.samestat(st, os.fstat(fd))
