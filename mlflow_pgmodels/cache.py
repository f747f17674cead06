"""The per-user cache of downloaded versions: one extracted model directory per version.

An entry is ``<root>/<quoted name>/<version>-<sha256>/``. A version's bytes never change, and
the digest is part of the key, so an entry can never be stale. Entries appear by an atomic
rename of a fully written directory; a lock file per entry makes concurrent processes fill it
once. Least recently used entries are evicted past the size limit.

Settings: ``MLFLOW_PGMODELS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/mlflow-pgmodels``, i.e.
``~/.cache/mlflow-pgmodels``) and ``MLFLOW_PGMODELS_CACHE_MAX_BYTES`` (default 10 GiB).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 10 * 1024**3
_SIZE_FILE = ".pgmodels-size"


def root() -> str:
    """The cache directory (created on demand)."""
    path = os.environ.get("MLFLOW_PGMODELS_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "mlflow-pgmodels")
    os.makedirs(path, exist_ok=True)
    return path


def max_bytes() -> int:
    return int(os.environ.get("MLFLOW_PGMODELS_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))


def entry_path(name: str, version: int, digest: str) -> str:
    """Where the extracted model of this exact version and content lives (may not exist yet)."""
    return os.path.join(root(), urllib.parse.quote(name, safe=""), f"{int(version)}-{digest}")


def touch(path: str) -> None:
    """Mark an entry as used now (for LRU eviction)."""
    with contextlib.suppress(OSError):
        os.utime(path)


@contextlib.contextmanager
def filling(path: str) -> Iterator[str | None]:
    """Hold the fill lock of an entry; yields a temp dir to build it in, or None if it exists now.

    Whatever the caller leaves in ``<tempdir>/model`` becomes the entry by an atomic rename when
    the block ends without an error; on error nothing is left behind.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.isdir(path):
                yield None
                return
            tmp = tempfile.mkdtemp(prefix=".fill-", dir=os.path.dirname(path))
            try:
                yield tmp
                model = os.path.join(tmp, "model")
                with open(os.path.join(model, _SIZE_FILE), "w") as f:
                    f.write(str(_tree_size(model)))
                os.rename(model, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    evict(keep=path)


@dataclass
class Entry:
    name: str
    version: int
    digest: str
    path: str
    size: int
    last_used: float


def entries() -> list[Entry]:
    """Every complete entry, least recently used first."""
    found = []
    base = root()
    for quoted in os.listdir(base):
        model_dir = os.path.join(base, quoted)
        if not os.path.isdir(model_dir):
            continue
        for entry in os.listdir(model_dir):
            path = os.path.join(model_dir, entry)
            version, _, digest = entry.partition("-")
            if "." in entry or not version.isdigit() or not os.path.isdir(path):
                continue
            try:
                with open(os.path.join(path, _SIZE_FILE)) as f:
                    size = int(f.read())
                used = os.stat(path).st_mtime
            except (OSError, ValueError):
                continue
            found.append(Entry(urllib.parse.unquote(quoted), int(version), digest, path, size, used))
    return sorted(found, key=lambda e: e.last_used)


def evict(keep: str | None = None, limit: int | None = None) -> list[Entry]:
    """Delete least recently used entries until the cache fits its limit; returns those deleted."""
    limit = max_bytes() if limit is None else limit
    current = entries()
    total = sum(e.size for e in current)
    removed = []
    for entry in current:
        if total <= limit:
            break
        if entry.path == keep:
            continue
        _remove(entry.path)
        total -= entry.size
        removed.append(entry)
    return removed


def clear() -> int:
    """Delete every entry; returns how many there were."""
    return len(evict(limit=0))


def _remove(path: str) -> None:
    # rename first so that no reader ever sees a half-deleted entry
    doomed = path + f".deleting-{os.getpid()}"
    try:
        os.rename(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)
