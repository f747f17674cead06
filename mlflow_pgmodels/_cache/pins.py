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

_state = threading.RLock()
_token_pid: int | None = None
_token = ""
_owner_fds: dict[str, int] = {}   # cache root -> the locked owner file of this process
_kept: set[str] = set()           # entries pinned for the life of this process
_leases: dict[str, int] = {}      # entries pinned while they are copied or listed


def owner(base: str) -> str:
    """This process's owner name, its owner file in ``base`` held locked."""
    global _token_pid, _token
    with _state:
        if _token_pid != os.getpid():  # first use, or a forked child (it keeps the parent's lock fds open)
            _token_pid, _token = os.getpid(), f"{os.getpid()}-{secrets.token_hex(6)}"
            _owner_fds.clear()
            _kept.clear()
            _leases.clear()
        if base not in _owner_fds:
            path = os.path.join(base, ".owners", f"{_token}.owner")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            while True:  # a sweeper may take a fresh, not yet locked file for a dead one
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if locks.lock(fd, blocking=False) and locks.same_file(fd, path):
                    break
                locks.unlock_and_close(fd)
                time.sleep(0.01)
            _owner_fds[base] = fd
        return _token


def pin(base: str, entry: str, for_life: bool) -> None:
    path = os.path.join(base, entry)
    with _state:
        if path not in _kept and not _leases.get(path):
            pins = os.path.join(base, ".pins", entry)
            os.makedirs(pins, exist_ok=True)
            open(os.path.join(pins, _token), "w").close()
        if for_life:
            _kept.add(path)
        else:
            _leases[path] = _leases.get(path, 0) + 1


def unpin(path: str) -> None:
    with _state:
        _leases[path] -= 1
        if _leases[path] == 0:
            del _leases[path]
            if path not in _kept:
                base, entry = os.path.split(path)
                pins = os.path.join(base, ".pins", entry)
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(pins, _token))
                with entry_lock(base, entry, blocking=False) as locked, contextlib.suppress(OSError):
                    if locked:
                        os.rmdir(pins)  # if no other process pins it


def alive(base: str, owner: str) -> bool:
    """Whether process ``owner`` still runs (holds its owner file locked). A dead one's file is removed."""
    if owner == _token and _token_pid == os.getpid():
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
