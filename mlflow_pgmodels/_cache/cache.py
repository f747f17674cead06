"""The per-user cache of downloaded versions: one extracted, read-only model directory per version.

Layout of the cache root (``MLFLOW_PGMODELS_CACHE_DIR``, default ``$XDG_CACHE_HOME/mlflow-pgmodels``,
i.e. ``~/.cache/mlflow-pgmodels``; size limit ``MLFLOW_PGMODELS_CACHE_MAX_BYTES``, default 10 GiB)::

    <slug>-v<version>-<hash>/      an entry: the model's files and .pgmodels-manifest.json
                                   (or, kind "archive", the version's verified zip as stored:
                                   what `mlflow server` hands remote clients)
    .pins/<entry>/<owner>          process <owner> uses the entry (it may not be evicted)
    .owners/<owner>.owner          held locked by the live process <owner> ("<pid>-<random>")
    .locks/<entry>.lock            transient: whoever fills, checks or removes the entry
    .fill-<owner>-*/  .deleting-<owner>-*/  .tmp-<owner>-*/   a process's work; swept once it is dead

The entry name is bounded (a short ASCII slug of the model name, the version and a hash of name,
version and content key), so every registered name has an entry path of at most ~70 characters
below the root. The real name lives in the manifest. The key (the SHA-256, or the row's identity)
is in the hash, so an entry is never stale; entries appear by an atomic rename of a complete
directory.

**Never aliased, never altered unnoticed.** Entry files are read-only where the OS allows it
(POSIX modes, the Windows read-only attribute). The manifest records each file's relative path,
size and ``mtime_ns``; it is checked (a stat walk, no hashing) every time an entry is served, and an
entry that was changed, added to or shortened is discarded and fetched again. Two things are
exempt: ``registered_model_meta`` (MLflow rewrites it on every ``models:/`` load; it is kept at the
content MLflow writes) and ``__pycache__`` directories (Python's own, when a model's code paths are
imported from the entry). Downloads to a ``dst_path`` are copies (version_artifact_repo.py).

**In use.** A process that is handed an entry's path in place (a load or download without
``dst_path``) pins the entry for the rest of its life; copying or listing an entry pins it only
while it does so. Eviction and ``cache clear`` skip entries pinned by a live process (or any thread
of it). A process is live while it holds the lock on its owner file; the OS releases that lock when
the process ends, however it ends, so pins and work directories of dead processes are swept by the
next fill or eviction. The locks are portable (locks.py).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mlflow_pgmodels import _settings
from mlflow_pgmodels._cache import locks, pins

MODEL, ARCHIVE = "model", "archive"  # kinds of entry: a version's files; its archive as stored
MANIFEST = ".pgmodels-manifest.json"
META = "registered_model_meta"  # what MLflow's models:/ repository (re)writes on every load
_WORK_PREFIXES = (".fill-", ".deleting-", ".tmp-")
_SLUG_CHARS = re.compile(r"[^A-Za-z0-9_]+")


def root() -> str:
    """The cache directory (created on demand)."""
    path = _settings.CACHE_DIR.get()
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "mlflow-pgmodels")
    os.makedirs(path, exist_ok=True)
    return path


def max_bytes() -> int:
    return _settings.CACHE_MAX_BYTES.get()


def entry_name(name: str, version: int, key: str, kind: str = MODEL) -> str:
    """The directory name of an entry: ``<slug>-v<version>-<hash>``, at most 66 ASCII characters."""
    slug = _SLUG_CHARS.sub("_", name)[:24].strip("_") or "model"
    parts = [name, str(int(version)), key] + ([] if kind == MODEL else [kind])  # model entries: named as before
    ident = "\0".join(parts).encode("utf-8", "surrogatepass")
    return f"{slug}-v{int(version)}-{hashlib.sha256(ident).hexdigest()[:20]}"


# --------------------------------------------------------------------------- serving entries
Fill = Callable[[str], None]  # builds the entry's directory ``<its argument>/model`` (verified)


def get(name: str, version: int, key: str, fill: Fill) -> str:
    """The checked entry of this version, filled first if needed; pinned for this process's life."""
    return _acquire(name, version, key, fill, for_life=True)


@contextlib.contextmanager
def borrowed(name: str, version: int, key: str, fill: Fill, kind: str = MODEL) -> Iterator[str]:
    """Like :func:`get`, but the entry is pinned only inside the block (to copy, list or serve it).

    ``kind`` ARCHIVE: an entry beside the version's files, holding what ``fill`` wrote (its archive).
    """
    path = _acquire(name, version, key, fill, for_life=False, kind=kind)
    try:
        yield path
    finally:
        pins.unpin(path)


def _acquire(name: str, version: int, key: str, fill: Fill, for_life: bool, kind: str = MODEL) -> str:
    base = root()
    entry = entry_name(name, version, key, kind)
    path = os.path.join(base, entry)
    owner = pins.owner(base)
    with pins.entry_lock(base, entry):
        state = _check(path, name, version, key, kind)
        if state:
            with contextlib.suppress(OSError):
                os.utime(path)  # used now (least recently used entries are evicted first)
        else:
            if state is not None and not _remove(base, path):  # altered: never served
                raise OSError(f"The cached copy of model {name!r} version {version} in {path} was altered "
                              "and cannot be removed (is a file of it open?). Close it, or run "
                              "`mlflow-pgmodels cache clear`.")
            _fill(base, owner, path, name, version, key, fill, kind)
        pins.pin(base, entry, for_life)
    if not state:
        evict(keep=path)
    return path


def _fill(base: str, owner: str, path: str, name: str, version: int, key: str, fill: Fill, kind: str) -> None:
    tmp = os.path.join(base, f".fill-{owner}-{secrets.token_hex(4)}")
    os.mkdir(tmp)
    try:
        fill(tmp)
        model = os.path.join(tmp, "model")
        meta = _meta_text(name, version) if kind == MODEL else None  # no MLflow load runs in an archive
        if meta is not None:
            _write_text(os.path.join(model, META), meta)
        files, dirs = _scan(model)
        manifest = {"name": name, "version": int(version), "key": key, "kind": kind,
                    "size": sum(s for s, _ in files.values()), "meta": meta, "dirs": dirs, "files": files}
        _write_text(os.path.join(model, MANIFEST), json.dumps(manifest, ensure_ascii=False))
        _seal(model)
        os.rename(model, path)
        if not locks.WINDOWS:
            os.chmod(path, 0o555)  # after the rename: moving a directory needs write access to it
    finally:
        _rmtree(tmp)


def _check(path: str, name: str, version: int, key: str, kind: str) -> bool | None:
    """True: the entry is as it was filled. None: there is none. False: it was altered."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return False if os.path.lexists(path) else None
    except (OSError, ValueError):
        return False
    if (manifest.get("name"), manifest.get("version"), manifest.get("key"), manifest.get("kind", MODEL)) != (
            name, int(version), key, kind):
        return False
    meta = os.path.join(path, META)
    try:
        files, dirs = _scan(path)
        if dirs != manifest["dirs"] or files != {k: tuple(v) for k, v in manifest["files"].items()}:
            return False
        if manifest["meta"] is None:
            return True
        with open(meta, encoding="utf-8") as f:
            if f.read() == manifest["meta"]:
                return True
        _write_text(meta, manifest["meta"])  # written by someone other than MLflow: put it back
        return True
    except OSError:
        return False


def _scan(path: str) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """``{relative path: (size, mtime_ns)}`` of every file and the sorted directories, by lstat."""
    files, dirs = {}, []
    pending = [("", path)]
    while pending:
        rel, full = pending.pop()
        with os.scandir(full) as it:
            for item in it:
                name = rel + item.name
                if item.is_dir(follow_symlinks=False):
                    if item.name != "__pycache__":
                        dirs.append(name)
                        pending.append((name + "/", item.path))
                elif rel or item.name not in (MANIFEST, META):
                    st = item.stat(follow_symlinks=False)
                    files[name] = (st.st_size, st.st_mtime_ns)
    return files, sorted(dirs)


def _seal(model: str) -> None:
    """Make a filled model directory read-only, except the root and the file MLflow rewrites."""
    for top, dirs, files in os.walk(model):
        for f in files:
            if not (top == model and f == META):
                os.chmod(os.path.join(top, f), stat.S_IREAD | stat.S_IRGRP | stat.S_IROTH)
        if top != model and not locks.WINDOWS:
            os.chmod(top, 0o555)


def _meta_text(name: str, version: int) -> str:
    """``registered_model_meta`` exactly as MLflow's ``write_yaml`` writes it."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump({"model_name": name, "model_version": str(version)}, default_flow_style=False,
                     allow_unicode=True, sort_keys=True, Dumper=dumper)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------- listing and eviction
@dataclass
class Entry:
    name: str
    version: int
    digest: str  # the content key: the SHA-256, or the row's identity for rows written by other code
    path: str
    size: int
    last_used: float
    kind: str = MODEL


def entries() -> list[Entry]:
    """Every complete entry, least recently used first."""
    found = []
    base = root()
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if entry.startswith("."):
            continue
        try:
            with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
                m = json.load(f)
            found.append(Entry(m["name"], m["version"], m["key"], path, m["size"], os.stat(path).st_mtime,
                               m.get("kind", MODEL)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda e: e.last_used)


def in_use(entry: Entry) -> bool:
    """Whether a live process pins this entry (for ``mlflow-pgmodels cache ls``)."""
    base, name = os.path.split(entry.path)
    with pins.entry_lock(base, name, blocking=False) as locked:
        return not locked or pins.in_use(base, name, lambda owner: pins.alive(base, owner))


def evict(keep: str | None = None, limit: int | None = None) -> list[Entry]:
    """Delete least recently used entries no live process uses until the cache fits its limit.

    Returns those deleted. Sweeps what dead processes left behind first.
    """
    base = root()
    alive = pins.alive_memo(base)
    _sweep(base, alive)
    limit = max_bytes() if limit is None else limit
    current = entries()
    total = sum(e.size for e in current)
    removed = []
    for entry in current:
        if total <= limit:
            break
        if entry.path == keep:
            continue
        name = os.path.basename(entry.path)
        with pins.entry_lock(base, name, blocking=False) as locked:
            if not locked or pins.in_use(base, name, alive) or not _remove(base, entry.path):
                continue
        total -= entry.size
        removed.append(entry)
    return removed


def clear() -> int:
    """Delete every entry no live process uses; returns how many were deleted."""
    return len(evict(limit=0))


def scratch_dir() -> str:
    """A new directory in the cache root, removed when this process exits (or swept if it is killed)."""
    base = root()
    path = os.path.join(base, f".tmp-{pins.owner(base)}-{secrets.token_hex(4)}")
    os.mkdir(path)
    atexit.register(_rmtree, path)
    return path


def _sweep(base: str, alive: Callable[[str], bool]) -> None:
    """Remove what dead processes left: work directories, pins, owner and lock files, old-layout entries."""
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.startswith(_WORK_PREFIXES):
            owner = "-".join(name.split("-")[1:3])
            if not alive(owner):
                _rmtree(path)
        elif not name.startswith(".") and _is_old_layout(path):
            _rmtree(path)
    for name in _listdir(os.path.join(base, ".pins")):
        with pins.entry_lock(base, name, blocking=False) as locked:
            if locked:
                pins.in_use(base, name, alive)
    for name in _listdir(os.path.join(base, ".owners")):
        alive(name.removesuffix(".owner"))
    for name in _listdir(os.path.join(base, ".locks")):
        with pins.entry_lock(base, name.removesuffix(".lock"), blocking=False):
            pass  # a lock file nobody holds: released (and so removed) right away


def _is_old_layout(path: str) -> bool:
    """A directory of the first cache layout (``<quoted name>/<version>-<digest>/.pgmodels-size``,
    ``<version>-<digest>.lock``, ``.fill-*``), or one it left empty."""
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, MANIFEST)) and all(
        child.endswith(".lock") or child.startswith((".fill-", ".deleting-"))
        or os.path.exists(os.path.join(path, child, ".pgmodels-size")) for child in _listdir(path))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove(base: str, path: str) -> bool:
    """Rename an entry away (readers never see half of one), then delete it. Call with it locked."""
    doomed = os.path.join(base, f".deleting-{pins.owner(base)}-{secrets.token_hex(4)}")
    try:
        os.rename(path, doomed)
    except OSError:
        return False  # e.g. a file of it is open on Windows: in use
    _rmtree(doomed)
    return True


def _rmtree(path: str) -> None:
    for top, _, files in os.walk(path):  # read-only directories (and Windows files) block deletion
        with contextlib.suppress(OSError):
            os.chmod(top, 0o755)
        if locks.WINDOWS:
            for f in files:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(top, f), stat.S_IWRITE | stat.S_IREAD)
    shutil.rmtree(path, ignore_errors=True)
