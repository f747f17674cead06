"""A model directory as one zip (what ``model_binary`` holds), and back to a directory."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from typing import IO

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, INVALID_PARAMETER_VALUE

ZIP_MAGIC = b"PK\x03\x04"
# Below this a file is deflated (MLmodel, yaml, json, small pickles); above it the cost of
# compressing (~50 MB/s) outweighs what the smaller transfer saves.
_DEFLATE_BELOW = 4 * 1024 * 1024
LEGACY_FILE = "model.joblib"
# Files MLflow adds on download; never part of a stored version.
_SKIP = {"registered_model_meta"}


def pack(model_dir: str, what: str = "The model") -> IO[bytes]:
    """A temporary file (positioned at 0) holding the zip of ``model_dir``, MLmodel at its root.

    A model too big for one PostgreSQL value is refused before anything is read or written.
    """
    from mlflow_pgmodels.blobs import check_size  # not at the top: blobs is imported while mlflow loads

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
            if arcname not in _SKIP:
                files.append((path, arcname, os.path.getsize(path)))
    # big files are stored as they are, so the zip is at least as big as they are together
    check_size(sum(size for _, _, size in files if size >= _DEFLATE_BELOW), what, at_least=True)
    out = tempfile.TemporaryFile()
    with zipfile.ZipFile(out, "w", allowZip64=True, compresslevel=6) as zf:
        for path, arcname, size in files:
            info = zipfile.ZipInfo.from_file(path, arcname)
            info.compress_type = zipfile.ZIP_DEFLATED if size < _DEFLATE_BELOW else zipfile.ZIP_STORED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
    out.seek(0)
    return out


def _destination(root: str, name: str, what: str) -> str:
    """Where entry ``name`` goes under ``root``; refuses names that would land outside it."""
    dest = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or "\\" in name or os.path.commonpath([root, dest]) != root:
        raise MlflowException(
            f"{what} holds an unsafe path {name!r} (outside the model directory); "
            "nothing was extracted from it",
            error_code=DATA_LOSS,
        )
    return dest


def unpack(zip_path: str, target_dir: str, what: str) -> None:
    """Extract a version's zip into ``target_dir``; refuses entries that would land outside it."""
    root = os.path.realpath(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                dest = _destination(root, info.filename, what)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise MlflowException(f"{what} holds a symbolic link {info.filename!r}; nothing was "
                                          "extracted from it", error_code=DATA_LOSS)
                if info.is_dir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
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
    checks its CRC; everything after the first central-directory record is ignored. Raises
    :class:`NotStreamable` for zips that only a seekable reader can handle.
    """

    def __init__(self, target_dir: str, what: str) -> None:
        self.root = os.path.realpath(target_dir)
        self.what = what
        os.makedirs(self.root, exist_ok=True)
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self._left = 0          # compressed bytes of the current entry still to come
        self._inflate = None
        self._crc = 0
        self._want_crc = 0
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
            self._buf += view
            view = memoryview(b"")
            rest = self._parse_headers()
            if rest:
                view = memoryview(rest)

    def _parse_headers(self) -> bytes:
        """Consume headers from the buffer; returns the bytes after a header whose data follows."""
        while len(self._buf) >= 4:
            sig = bytes(self._buf[:4])
            if sig in (_CENTRAL_DIR, _END):
                self._done = True
                self._buf.clear()
                return b""
            if sig != ZIP_MAGIC:
                raise MlflowException(f"{self.what} is not a readable zip archive (bad local header)",
                                      error_code=DATA_LOSS)
            if len(self._buf) < _LOCAL_HEADER.size:
                return b""
            (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = _LOCAL_HEADER.unpack_from(self._buf)
            end = _LOCAL_HEADER.size + nlen + xlen
            if len(self._buf) < end:
                return b""
            if flags & 0x09 or method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or 0xFFFFFFFF in (csize, usize):
                raise NotStreamable()
            name = bytes(self._buf[_LOCAL_HEADER.size:_LOCAL_HEADER.size + nlen]).decode(
                "utf-8" if flags & 0x800 else "cp437")
            rest = bytes(self._buf[end:])
            self._buf.clear()
            self._open_entry(name, method, crc, csize)
            if self._left:
                return rest
            self._close_entry()
            self._buf += rest
        return b""

    def _open_entry(self, name: str, method: int, crc: int, csize: int) -> None:
        dest = _destination(self.root, name, self.what)
        self._name, self._left, self._want_crc, self._crc = name, csize, crc, 0
        self._inflate = zlib.decompressobj(-15) if method == zipfile.ZIP_DEFLATED else None
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
        self._write(self._inflate_or_raise(self._inflate.decompress, data) if self._inflate is not None else data)

    def _inflate_or_raise(self, step, *args) -> bytes:
        try:
            return step(*args)
        except zlib.error as e:  # damaged deflate data: as clear as a CRC mismatch
            raise MlflowException(f"{self.what}: file {self._name!r} in its zip is corrupt ({e})",
                                  error_code=DATA_LOSS) from None

    def _write(self, data) -> None:
        if self._file is not None and data:
            self._crc = zlib.crc32(data, self._crc)
            self._file.write(data)

    def _close_entry(self) -> None:
        if self._inflate is not None:
            self._write(self._inflate_or_raise(self._inflate.flush))
        if self._file is not None:
            self._file.close()
            self.entries += 1
            if self._crc != self._want_crc:
                raise MlflowException(f"{self.what}: file {self._name!r} in its zip is corrupt (CRC mismatch)",
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
