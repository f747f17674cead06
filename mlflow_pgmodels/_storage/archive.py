"""A model directory as one zip (what ``model_binary`` holds), and back to a directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, INVALID_PARAMETER_VALUE

from mlflow_pgmodels import _settings

ZIP_MAGIC = b"PK\x03\x04"
# Below this a file is deflated (MLmodel, yaml, json, small pickles); above it the cost of
# compressing (~50 MB/s) outweighs what the smaller transfer saves.
_DEFLATE_BELOW = 4 * 1024 * 1024
LEGACY_FILE = "model.joblib"
# Files MLflow adds on download; never part of a stored version.
SKIPPED = frozenset({"registered_model_meta"})


def pack(model_dir: str, what: str = "The model") -> IO[bytes]:
    """A temporary file (positioned at 0) holding the zip of ``model_dir``, MLmodel at its root.

    A model too big for one PostgreSQL value is refused before anything is read or written.
    """
    from mlflow_pgmodels._storage.model_binary import check_size  # not at the top: blobs is imported while mlflow loads

    files = model_files(model_dir)
    # big files are stored as they are, so the zip is at least as big as they are together
    check_size(sum(size for _, _, size in files if size >= _DEFLATE_BELOW), what, at_least=True)
    out = tempfile.TemporaryFile()
    _zip(files, out)
    out.seek(0)
    return out


def write_zip(model_dir: str, path: str) -> str:
    """Write the zip of ``model_dir`` to ``path``, whatever its size; returns the zip's SHA-256."""
    with open(path, "w+b") as out:
        _zip(model_files(model_dir), out)
        out.seek(0)
        digest = hashlib.sha256()
        while chunk := out.read(_OUT_PIECE * 4):
            digest.update(chunk)
    return digest.hexdigest()


def _zip(files: list[tuple[str, str, int]], out: IO[bytes]) -> None:
    with zipfile.ZipFile(out, "w", allowZip64=True, compresslevel=6) as zf:
        for path, arcname, size in files:
            info = zipfile.ZipInfo.from_file(path, arcname)
            info.compress_type = zipfile.ZIP_DEFLATED if size < _DEFLATE_BELOW else zipfile.ZIP_STORED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def model_files(model_dir: str) -> list[tuple[str, str, int]]:
    """(local path, path in the model, size) of each file of an MLflow model directory, sorted."""
    if not os.path.isfile(os.path.join(model_dir, "MLmodel")):
        raise MlflowException(
            f"{model_dir!r} is not an MLflow model directory (no MLmodel file)",
            error_code=INVALID_PARAMETER_VALUE,
        )
    files = []
    for root, dirs, names in os.walk(model_dir):
        dirs.sort()
        for filename in sorted(names):
            path = os.path.join(root, filename)
            arcname = os.path.relpath(path, model_dir).replace(os.sep, "/")
            if arcname not in SKIPPED:
                files.append((path, arcname, os.path.getsize(path)))
    return files


def destination(root: str, name: str, what: str) -> str:
    """Where entry ``name`` goes under ``root``; refuses names that would land outside it."""
    dest = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or "\\" in name or os.path.commonpath([root, dest]) != root:
        raise MlflowException(
            f"{what} holds an unsafe path {name!r} (outside the model directory); "
            "nothing was extracted from it",
            error_code=DATA_LOSS,
        )
    return dest


MAX_UNPACKED_BYTES_ENV = _settings.MAX_UNPACKED_BYTES.name
MAX_ENTRIES_ENV = _settings.MAX_ENTRIES.name
MAX_RATIO_ENV = _settings.MAX_RATIO.name
# The ratio is only checked past this size: small, very regular files (an all-zero array, a
# repetitive text file) legitimately compress by up to deflate's maximum (~1030x).
RATIO_CHECKED_ABOVE = 16 * 1024 * 1024
# Inflated output is produced (and written) in pieces of at most this size.
_OUT_PIECE = 1024 * 1024
# Compressed input is fed in slices of this size, so that ``unconsumed_tail`` copies stay small.
_IN_PIECE = 64 * 1024
# A central directory larger than this per allowed entry is refused before it is parsed
# (zipfile holds ~10x its size in memory); real models average about 100 bytes per entry.
_DIRECTORY_BYTES_PER_ENTRY = 256


@dataclass(frozen=True)
class Limits:
    """How far one version's zip may unpack; from the environment (see :meth:`from_env`)."""

    unpacked_bytes: int = _settings.MAX_UNPACKED_BYTES.default
    entries: int = _settings.MAX_ENTRIES.default
    ratio: int = _settings.MAX_RATIO.default

    @classmethod
    def from_env(cls) -> Limits:
        """The limits set by ``MLFLOW_PGMODELS_MAX_UNPACKED_BYTES``, ``_MAX_ENTRIES`` and ``_MAX_RATIO``."""
        return cls(_settings.MAX_UNPACKED_BYTES.get(), _settings.MAX_ENTRIES.get(), _settings.MAX_RATIO.get())


class _Budget:
    """What one archive has used of its :class:`Limits`; refuses (DATA_LOSS) past any of them."""

    def __init__(self, what: str, limits: Limits | None = None) -> None:
        self.what = what
        self.limits = limits or Limits.from_env()
        self.entries = 0
        self.total = 0

    def new_entry(self) -> None:
        self.entries += 1
        self.check_count(self.entries)

    def check_count(self, entries: int) -> None:
        if entries > self.limits.entries:
            raise self.refusal(f"holds more than {self.limits.entries:,} entries", MAX_ENTRIES_ENV)

    def check_entry(self, name: str, size: int, compressed: int | None) -> None:
        """Refuse an entry that is (or says it is) ``size`` bytes from ``compressed`` (None: stored)."""
        if compressed is not None and size > max(RATIO_CHECKED_ABOVE, self.limits.ratio * compressed):
            raise self.refusal(
                f"holds a file {name!r} that inflates more than {self.limits.ratio}-fold "
                f"({compressed:,} bytes to over {max(size, RATIO_CHECKED_ABOVE):,}; the ratio is "
                f"checked for files over {RATIO_CHECKED_ABOVE // 2**20} MiB)", MAX_RATIO_ENV)

    def add(self, name: str, n: int, entry_size: int, compressed: int | None) -> None:
        """Account for ``n`` more bytes of entry ``name`` (now ``entry_size``), before they are written."""
        self.total += n
        if self.total > self.limits.unpacked_bytes:
            raise self.refusal(f"unpacks to more than {_human(self.limits.unpacked_bytes)}",
                               MAX_UNPACKED_BYTES_ENV)
        self.check_entry(name, entry_size, compressed)

    def refusal(self, why: str, env: str) -> MlflowException:
        return MlflowException(
            f"{self.what} {why}, the limit set by {env}; nothing was loaded or cached. If this is a "
            f"genuine model, raise {env} and load it again; otherwise the row does not hold a sane "
            "model (a zip bomb?): delete the version or register the model again.",
            error_code=DATA_LOSS,
        )


def _human(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size:,} bytes"


def _check_directory(zip_path: str, budget: _Budget) -> None:
    """Refuse a zip whose central directory is too big for the entry limit, before zipfile parses it."""
    with open(zip_path, "rb") as f:
        end = zipfile._EndRecData(f)  # the end record, zip64 included; stable since Python 2
    if end:
        allowed = budget.limits.entries
        if end[zipfile._ECD_ENTRIES_TOTAL] > allowed or end[zipfile._ECD_SIZE] > allowed * _DIRECTORY_BYTES_PER_ENTRY:
            raise budget.refusal(f"holds more than {allowed:,} entries (its zip directory says "
                                 f"{end[zipfile._ECD_ENTRIES_TOTAL]:,} in {end[zipfile._ECD_SIZE]:,} bytes)",
                                 MAX_ENTRIES_ENV)


def _check_listing(infos: list[zipfile.ZipInfo], budget: _Budget) -> None:
    """Refuse, from the sizes the zip declares, what would go over a limit; nothing is written yet."""
    budget.check_count(len(infos))
    declared = 0
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # bzip2 / lzma: zipfile inflates those without a bound on memory
            raise MlflowException(
                f"{budget.what} holds a file {info.filename!r} compressed with "
                f"{zipfile.compressor_names.get(info.compress_type, f'method {info.compress_type}')}; "
                "only stored and deflated files are extracted. Nothing was "
                "loaded. Register the model again (MLflow and this store write deflate).",
                error_code=DATA_LOSS)
        declared += info.file_size
        budget.check_entry(info.filename, info.file_size,
                           info.compress_size if info.compress_type == zipfile.ZIP_DEFLATED else None)
    if declared > budget.limits.unpacked_bytes:
        raise budget.refusal(f"unpacks to {_human(declared)}, more than "
                             f"{_human(budget.limits.unpacked_bytes)}", MAX_UNPACKED_BYTES_ENV)


def _copy_counted(src: IO[bytes], dst: IO[bytes], info: zipfile.ZipInfo, budget: _Budget) -> None:
    compressed = info.compress_size if info.compress_type == zipfile.ZIP_DEFLATED else None
    size = 0
    while piece := src.read(_OUT_PIECE):
        size += len(piece)
        budget.add(info.filename, len(piece), size, compressed)
        dst.write(piece)


def unpack(zip_path: str, target_dir: str, what: str, limits: Limits | None = None) -> None:
    """Extract a version's zip into ``target_dir``.

    Refuses (DATA_LOSS) entries that would land outside it, and archives past ``limits``
    (default: :meth:`Limits.from_env`), checked on the declared sizes first and on the bytes as
    they are written; memory stays bounded whatever the archive says.
    """
    root = os.path.realpath(target_dir)
    budget = _Budget(what, limits)
    try:
        _check_directory(zip_path, budget)
        with zipfile.ZipFile(zip_path) as zf:
            _check_listing(zf.infolist(), budget)
            for info in zf.infolist():
                dest = destination(root, info.filename, what)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise MlflowException(f"{what} holds a symbolic link {info.filename!r}; nothing was "
                                          "extracted from it", error_code=DATA_LOSS)
                if info.is_dir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    _copy_counted(src, dst, info, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise MlflowException(f"{what} is not a readable zip archive ({e})", error_code=DATA_LOSS) from None
    except _ENTRY_CLASHES as e:
        raise _clash(what, e.filename, e) from None


# Entries that collide with each other (a file and a directory of one name)
_ENTRY_CLASHES = (FileExistsError, NotADirectoryError, IsADirectoryError)


def _clash(what: str, name: str, e: OSError) -> MlflowException:
    return MlflowException(f"{what} holds entries that clash at {name!r} ({e.strerror}); "
                           "nothing was loaded from it", error_code=DATA_LOSS)


class NotStreamable(Exception):
    """The zip uses a feature that needs its central directory (data descriptors, other methods)."""


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL_DIR = b"PK\x01\x02"
_END = b"PK\x05\x06"


class StreamingUnzip:
    """Extracts a zip while its bytes arrive in order, so the archive itself never touches the disk.

    Reads the local headers (``pack`` writes sizes there), writes each entry as it streams by and
    checks its CRC and size; everything after the first central-directory record is ignored.
    Inflates in bounded pieces and refuses (DATA_LOSS) an archive past ``limits`` (default:
    :meth:`Limits.from_env`). Raises :class:`NotStreamable` for zips that only a seekable reader
    can handle.
    """

    def __init__(self, target_dir: str, what: str, limits: Limits | None = None) -> None:
        self.root = os.path.realpath(target_dir)
        self.what = what
        self._budget = _Budget(what, limits)
        os.makedirs(self.root, exist_ok=True)
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self._left = 0          # compressed bytes of the current entry still to come
        self._inflate = None
        self._crc = 0
        self._want_crc = 0
        self._size = 0          # bytes of the current entry written so far
        self._want_size = 0
        self._csize = None      # compressed size of the current entry (None: stored)
        self._name = ""
        self._done = False
        self.entries = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._done:
            if self._left:
                take = view[:self._left]
                self._left -= len(take)
                view = view[len(take):]
                self._emit(take)
                if not self._left:
                    self._close_entry()
                continue
            # only a header's own bytes are copied, so many small entries cost linear time
            take = view[:self._header_size() - len(self._buf)]
            self._buf += take
            view = view[len(take):]
            if len(self._buf) == self._header_size():
                header = bytes(self._buf)
                self._buf.clear()
                self._start_entry(header)

    def _header_size(self) -> int:
        """How many bytes the header that starts ``_buf`` has, as far as its first bytes tell."""
        buf = self._buf
        if len(buf) < 4 or bytes(buf[:4]) != ZIP_MAGIC:
            return 4  # the signature alone says what follows (or that the archive is damaged)
        if len(buf) < _LOCAL_HEADER.size:
            return _LOCAL_HEADER.size
        nlen, xlen = struct.unpack_from("<HH", buf, _LOCAL_HEADER.size - 4)
        return _LOCAL_HEADER.size + nlen + xlen

    def _start_entry(self, header: bytes) -> None:
        """Act on one complete header: a local file header, or the central directory (the end)."""
        sig = header[:4]
        if sig in (_CENTRAL_DIR, _END):
            self._done = True
            return
        if sig != ZIP_MAGIC:
            raise MlflowException(f"{self.what} is not a readable zip archive (bad local header)",
                                  error_code=DATA_LOSS)
        (_, _, flags, method, _, _, crc, csize, usize, nlen, _) = _LOCAL_HEADER.unpack_from(header)
        if flags & 0x09 or method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or 0xFFFFFFFF in (csize, usize):
            raise NotStreamable()
        name = header[_LOCAL_HEADER.size:_LOCAL_HEADER.size + nlen].decode("utf-8" if flags & 0x800 else "cp437")
        self._open_entry(name, method, crc, csize, usize)
        if not self._left:
            self._close_entry()

    def _open_entry(self, name: str, method: int, crc: int, csize: int, usize: int) -> None:
        self._budget.new_entry()
        dest = destination(self.root, name, self.what)
        deflated = method == zipfile.ZIP_DEFLATED
        self._budget.check_entry(name, usize, csize if deflated else None)  # early, on what it says
        self._name, self._left, self._want_crc, self._crc = name, csize, crc, 0
        self._size, self._want_size, self._csize = 0, usize, csize if deflated else None
        self._inflate = zlib.decompressobj(-15) if deflated else None
        try:
            if name.endswith("/"):
                os.makedirs(dest, exist_ok=True)
                self._file = None
                return
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            self._file = open(dest, "wb")
        except _ENTRY_CLASHES as e:  # e.g. "link" (a symlink in the central directory), then "link/x"
            raise _clash(self.what, name, e) from None

    def _emit(self, data) -> None:
        if self._inflate is None:
            self._write(data)
            return
        for start in range(0, len(data), _IN_PIECE):
            tail = data[start:start + _IN_PIECE]
            while True:  # until this slice is consumed and zlib holds no more output
                out = self._inflate_or_raise(self._inflate.decompress, tail, _OUT_PIECE)
                self._write(out)
                tail = self._inflate.unconsumed_tail
                if not tail and len(out) < _OUT_PIECE:
                    break

    def _inflate_or_raise(self, step, *args) -> bytes:
        try:
            return step(*args)
        except zlib.error as e:  # damaged deflate data: as clear as a CRC mismatch
            raise MlflowException(f"{self.what}: file {self._name!r} in its zip is corrupt ({e})",
                                  error_code=DATA_LOSS) from None

    def _write(self, data) -> None:
        if not data:
            return
        self._size += len(data)  # counted for directory entries too: their data is inflated all the same
        try:
            self._budget.add(self._name, len(data), self._size, self._csize)
        except MlflowException:
            self.abort()
            raise
        self._crc = zlib.crc32(data, self._crc)
        if self._file is not None:
            self._file.write(data)

    def _close_entry(self) -> None:
        if self._inflate is not None:
            self._write(self._inflate_or_raise(self._inflate.flush))
        if self._file is not None:
            self._file.close()
            self.entries += 1
            if self._crc != self._want_crc or self._size != self._want_size:
                mismatch = "CRC mismatch" if self._crc != self._want_crc else (
                    f"{self._size:,} bytes, {self._want_size:,} declared")
                raise MlflowException(f"{self.what}: file {self._name!r} in its zip is corrupt ({mismatch})",
                                      error_code=DATA_LOSS)
        self._file = self._inflate = None

    def close(self) -> None:
        """Check that the archive ended where a zip ends."""
        self.abort()
        if not self._done or self._left:
            raise MlflowException(f"{self.what} is not a complete zip archive", error_code=DATA_LOSS)

    def abort(self) -> None:
        """Close a half-written entry (the caller removes the directory)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def write_legacy_model_dir(blob_path: str, target_dir: str) -> None:
    """Make a file-era row (raw joblib bytes) an MLflow model: the file plus an MLmodel for pyfunc."""
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    os.makedirs(target_dir, exist_ok=True)
    shutil.copyfile(blob_path, os.path.join(target_dir, LEGACY_FILE))
    model = Model()
    add_to_model(model, loader_module="mlflow_pgmodels.legacy", data=LEGACY_FILE)
    model.save(os.path.join(target_dir, "MLmodel"))
