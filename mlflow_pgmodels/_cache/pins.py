"""Which entries of the model cache live processes use (pins), and whether a process still lives.

A process that uses an entry pins it: a file ``.pins/<entry>/<owner>`` below the cache root. Its
owner name is ``<pid>-<random>``, and it is alive while it holds the lock on its owner file
``.owners/<owner>.owner``; the OS releases that lock however the process ends, so this works
after SIGKILL and across PID namespaces. Eviction skips pinned entries and removes the pins of
dead owners (cache.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable

from mlflow_pgmodels._cache import locks


class ProcessPins:
    """This process as a user of caches: its owner name, the owner file it holds locked in each cache
    root, and the entries it pins.

    One per process (:data:`_here`), made at import. A forked child renews it at its first
    :meth:`owner` call: a new owner name, no pins, and its parent's owner-file descriptors left open
    and unused (they are not the child's to unlock). It ends with the process: the OS releases the
    owner files' locks however it ends (even SIGKILL), which is what tells others it is gone.
    Thread-safe: its fields change only under ``self.lock``.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid: int | None = None  # the process the owner name belongs to (None: not used yet)
        self.token = ""
        self.owner_fds: dict[str, int] = {}  # cache root -> the locked owner file of this process
        self.kept: set[str] = set()          # entries pinned for the life of this process
        self.leases: dict[str, int] = {}     # entries pinned while they are copied or listed

    def owner(self, base: str) -> str:
        """This process's owner name, its owner file in ``base`` held locked."""
        with self.lock:
            if self.pid != os.getpid():  # first use, or a forked child (it keeps the parent's lock fds open)
                self.pid, self.token = os.getpid(), f"{os.getpid()}-{secrets.token_hex(6)}"
                self.owner_fds.clear()
                self.kept.clear()
                self.leases.clear()
            if base not in self.owner_fds:
                path = os.path.join(base, ".owners", f"{self.token}.owner")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                while True:  # a sweeper may take a fresh, not yet locked file for a dead one
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                    if locks.lock(fd, blocking=False) and locks.same_file(fd, path):
                        break
                    locks.unlock_and_close(fd)
                    time.sleep(0.01)
                self.owner_fds[base] = fd
            return self.token

    def pin(self, base: str, entry: str, for_life: bool) -> None:
        """Pin ``entry`` for the life of this process, or until :meth:`unpin` (counted)."""
        path = os.path.join(base, entry)
        with self.lock:
            if path not in self.kept and not self.leases.get(path):
                pins = os.path.join(base, ".pins", entry)
                os.makedirs(pins, exist_ok=True)
                open(os.path.join(pins, self.token), "w").close()
            if for_life:
                self.kept.add(path)
            else:
                self.leases[path] = self.leases.get(path, 0) + 1

    def unpin(self, path: str) -> None:
        """End one lease of the entry at ``path``; its pin goes with the last one (unless kept)."""
        with self.lock:
            self.leases[path] -= 1
            if self.leases[path] == 0:
                del self.leases[path]
                if path not in self.kept:
                    base, entry = os.path.split(path)
                    pins = os.path.join(base, ".pins", entry)
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(pins, self.token))
                    with entry_lock(base, entry, blocking=False) as locked, contextlib.suppress(OSError):
                        if locked:
                            os.rmdir(pins)  # if no other process pins it

    def is_me(self, owner: str) -> bool:
        """Whether ``owner`` is this process's owner name."""
        return owner == self.token and self.pid == os.getpid()


_here = ProcessPins()


def owner(base: str) -> str:
    """This process's owner name, its owner file in ``base`` held locked."""
    return _here.owner(base)


def pin(base: str, entry: str, for_life: bool) -> None:
    _here.pin(base, entry, for_life)


def unpin(path: str) -> None:
    _here.unpin(path)


def alive(base: str, owner: str) -> bool:
    """Whether process ``owner`` still runs (holds its owner file locked). A dead one's file is removed."""
    if _here.is_me(owner):
        return True
    path = os.path.join(base, ".owners", f"{owner}.owner")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # not ours to judge
    if not locks.lock(fd, blocking=False):
        os.close(fd)
        return True
    if not locks.same_file(fd, path):
        locks.unlock_and_close(fd)
        return os.path.exists(path)  # removed meanwhile (dead), or a new file of its starting owner
    locks.remove_and_unlock(fd, path)
    return False


def in_use(base: str, entry: str, alive: Callable[[str], bool]) -> bool:
    """Whether a live process pins ``entry``; removes the pins of dead ones. Call with the entry locked."""
    pins = os.path.join(base, ".pins", entry)
    try:
        owners = os.listdir(pins)
    except FileNotFoundError:
        return False
    live = False
    for owner in owners:
        if alive(owner):
            live = True
        else:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(pins, owner))
    if not live:
        with contextlib.suppress(OSError):
            os.rmdir(pins)
    return live



def alive_memo(base: str) -> Callable[[str], bool]:
    seen: dict[str, bool] = {}
    return lambda owner: seen[owner] if owner in seen else seen.setdefault(owner, alive(base, owner))


def entry_lock(base: str, entry: str, blocking: bool = True):
    """The lock of one entry: whoever fills, checks, pins or removes it holds it."""
    return locks.held(os.path.join(base, ".locks", f"{entry}.lock"), blocking)
