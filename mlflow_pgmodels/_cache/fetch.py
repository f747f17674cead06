"""Getting a version's bytes into the local cache: from the database, or through an MLflow server."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, RESOURCE_DOES_NOT_EXIST
from psycopg.rows import dict_row

from mlflow_pgmodels._cache import cache
from mlflow_pgmodels._pg.reads import read_connection
from mlflow_pgmodels._pg.schema import ensure_schema
from mlflow_pgmodels._registry.entities import version_not_found
from mlflow_pgmodels._storage import archive, blobs
from mlflow_pgmodels._storage.model_binary import read_blob

# Files that exist only for the REST path (``/model-versions/get-artifact``): a version's archive
# and its digest, served by the artifact repository on the server side.
VIRTUAL_DIR = ".pgmodels"
VIRTUAL_ARCHIVE = f"{VIRTUAL_DIR}/model.zip"
VIRTUAL_DIGEST = f"{VIRTUAL_DIR}/sha256"
# The files of an archive entry of the cache (kind ARCHIVE): the verified blob and its SHA-256
ARCHIVE_FILE, DIGEST_FILE = "model.zip", "sha256"


@dataclass(frozen=True)
class BlobInfo:
    digest: str | None   # SHA-256 (hex) recorded at registration (None: a row written by other code)
    stored_digest: bool  # whether ``digest`` was recorded at registration (and can be verified)
    size: int            # bytes in model_binary now
    recorded_size: int | None
    row_key: str = ""    # the row's id and xmin: changes whenever the row is written
    format: str | None = None  # models.format: 'files' when the files are blobs in pgm_version_files

    @property
    def as_files(self) -> bool:
        return self.format == "files"

    @property
    def cache_key(self) -> str:
        """What a cache entry of this version is keyed by besides name and version.

        The recorded SHA-256; for rows written by other code (no digest recorded) the row's
        identity, which any UPDATE or re-INSERT changes, so that the key never needs the bytes.
        """
        return self.digest if self.stored_digest else f"row{self.row_key}"


def _what(name: str, version: int) -> str:
    return f"Model '{name}' version {version}"


def _write_meta(model: str, name: str, version: int) -> None:
    # What MLflow's models:/ repository writes on every load, written once here
    with open(os.path.join(model, "registered_model_meta"), "w") as f:
        f.write(f"model_name: {name!r}\nmodel_version: '{version}'\n")


def finish_entry(blob_path: str, tmp_dir: str, name: str, version: int) -> None:
    """Turn a downloaded blob into the model directory ``<tmp_dir>/model`` of a cache entry."""
    model = os.path.join(tmp_dir, "model")
    with open(blob_path, "rb") as f:
        head = f.read(4)
    if head == archive.ZIP_MAGIC:
        archive.unpack(blob_path, model, _what(name, version))
    else:
        archive.write_legacy_model_dir(blob_path, model)
    _write_meta(model, name, version)
    os.remove(blob_path)


class _ModelSink:
    """Receives a version's bytes in order: a zip is extracted as it arrives, anything else spills to a file."""

    def __init__(self, tmp_dir: str, name: str, version: int) -> None:
        self.model = os.path.join(tmp_dir, "model")
        self.blob_path = os.path.join(tmp_dir, "blob")
        self.name, self.version = name, version
        self._target = None

    def write(self, data: bytes) -> None:
        if self._target is None:
            if data[:4] == archive.ZIP_MAGIC:
                self._target = archive.StreamingUnzip(self.model, _what(self.name, self.version))
            else:
                self._target = open(self.blob_path, "wb")
        self._target.write(data)

    def finish(self) -> None:
        """Complete ``<tmp_dir>/model`` once every byte arrived and was verified."""
        if isinstance(self._target, archive.StreamingUnzip):
            self._target.close()
            _write_meta(self.model, self.name, self.version)
            return
        if self._target is None:
            self._target = open(self.blob_path, "wb")
        self._target.close()
        finish_entry(self.blob_path, os.path.dirname(self.model), self.name, self.version)

    def discard(self) -> None:
        if isinstance(self._target, archive.StreamingUnzip):
            self._target.abort()
        elif self._target is not None:
            self._target.close()
        shutil.rmtree(self.model, ignore_errors=True)
        if os.path.exists(self.blob_path):
            os.remove(self.blob_path)


class _CachedSource:
    """A version's files through the local cache (cache.py), downloaded and verified first if needed."""

    def _cache_entry(self, name: str, version: int) -> tuple[str, cache.Fill]:
        raise NotImplementedError

    def materialize(self, name: str, version: int) -> str:
        """The cache directory of this version, to be used in place: pinned for this process's life."""
        return cache.get(name, version, *self._cache_entry(name, version))

    @contextlib.contextmanager
    def borrowed(self, name: str, version: int) -> Iterator[str]:
        """The cache directory of this version, pinned only inside the block (to copy or list it)."""
        with cache.borrowed(name, version, *self._cache_entry(name, version)) as path:
            yield path


class DatabaseSource(_CachedSource):
    """Versions read straight from the ``models`` table."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        ensure_schema(uri)

    def metadata(self, name: str, version: int) -> BlobInfo:
        """Recorded digest and size of a version, from one small query that reads no byte of ``model_binary``."""
        with read_connection(self.uri, f"read model '{name}' version {version}") as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                "SELECT sha256 AS digest, octet_length(model_binary) AS size, size_bytes AS recorded_size,"
                " id || 'x' || xmin AS row_key, format FROM models WHERE name = %s AND version = %s",
                (name, version),
            ).fetchone()
        if row is None:
            raise MlflowException(f"{_what(name, version)} not found in the model database",
                                  error_code=RESOURCE_DOES_NOT_EXIST)
        return BlobInfo(**row, stored_digest=row["digest"] is not None)

    def _cache_entry(self, name: str, version: int) -> tuple[str, cache.Fill]:
        """The cache key of a version and how to fill its entry.

        A cached version costs one small query; a new one streams into the cache without the
        archive ever being written to disk (see :class:`archive.StreamingUnzip`).
        """
        info = self.metadata(name, version)
        if info.as_files:
            return info.cache_key, lambda tmp: self._read_files(name, version, info, os.path.join(tmp, "model"))

        def fill(tmp: str) -> None:
            sink = _ModelSink(tmp, name, version)
            try:
                self._read(name, version, info, sink)
                sink.finish()
            except archive.NotStreamable:  # a zip made by other tools: through a file
                sink.discard()
                blob_path = os.path.join(tmp, "blob")
                self._download(name, version, info, blob_path)
                finish_entry(blob_path, tmp, name, version)

        return info.cache_key, fill

    @contextlib.contextmanager
    def archive(self, name: str, version: int) -> Iterator[str]:
        """The verified ``model_binary`` of a version as a file of the cache, pinned inside the block.

        What `mlflow server` serves remote clients: read from the database once per host, whichever
        worker process asks first (the others wait for that read), and visible only once its
        SHA-256 and size match what was registered.
        """
        with self._archive(name, version, self.metadata(name, version)) as (path, _):
            yield path

    def digest(self, name: str, version: int) -> str:
        """The SHA-256 of a version: as recorded, else computed once per host while caching its archive."""
        info = self.metadata(name, version)
        if info.stored_digest and not info.as_files:
            return info.digest
        with self._archive(name, version, info) as (_, digest):
            return digest

    @contextlib.contextmanager
    def _archive(self, name: str, version: int, info: BlobInfo) -> Iterator[tuple[str, str]]:
        def fill(tmp: str) -> None:
            entry = os.path.join(tmp, "model")
            os.mkdir(entry)
            if info.as_files:  # zipped here from the files, once per host
                with self.borrowed(name, version) as model:
                    digest = archive.write_zip(model, os.path.join(entry, ARCHIVE_FILE))
            else:
                digest = self._download(name, version, info, os.path.join(entry, ARCHIVE_FILE))
            with open(os.path.join(entry, DIGEST_FILE), "w") as f:
                f.write(digest)

        with cache.borrowed(name, version, info.cache_key, fill, kind=cache.ARCHIVE) as path:
            with open(os.path.join(path, DIGEST_FILE)) as f:
                digest = f.read()
            yield os.path.join(path, ARCHIVE_FILE), digest

    def _read_files(self, name: str, version: int, info: BlobInfo, model: str) -> None:
        """Write the files of a ``'files'`` version into the directory ``model``, each verified."""
        what = _what(name, version)
        # the list and every file's bytes from one snapshot: a version deleted meanwhile is read whole
        with read_connection(self.uri, f"read {what}") as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            files = conn.execute(
                "SELECT f.path, f.blob_id, b.size_bytes, b.sha256 FROM pgm_version_files f JOIN pgm_blobs b"
                " ON b.id = f.blob_id WHERE f.name = %s AND f.version = %s ORDER BY f.path", (name, version)).fetchall()
            if not files and not conn.execute("SELECT 1 FROM models WHERE name = %s AND version = %s",
                                              (name, version)).fetchone():
                raise version_not_found(name, version)  # deleted since its row was read
            if not files or blobs.manifest_digest(files) != info.digest:
                raise MlflowException(
                    f"{what} is corrupt in the database: the files listed in pgm_version_files are not the ones "
                    "registered. Nothing was loaded. Restore the database from a backup or register the model "
                    "again.", error_code=DATA_LOSS)
            os.makedirs(model)
            model = os.path.realpath(model)
            for path, blob_id, size, sha in files:
                dest = archive.destination(model, path, what)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as out:
                    blobs.read(conn, blob_id, size, sha, out, f"{what}: {path}",
                                progress=f"Downloading {name} v{version}: {path}" if size > 64 << 20 else None)
        _write_meta(model, name, version)

    def _download(self, name: str, version: int, info: BlobInfo, out_path: str) -> str:
        """Write the verified ``model_binary`` of a version to ``out_path``; returns its SHA-256."""
        try:
            with open(out_path, "wb") as out:
                return self._read(name, version, info, out)
        except BaseException:
            os.remove(out_path)
            raise

    def _read(self, name: str, version: int, info: BlobInfo, out) -> str:
        """Stream ``model_binary`` into ``out``; returns its SHA-256. DATA_LOSS if it is not what was registered."""
        what = _what(name, version)
        with read_connection(self.uri, f"read {what}") as conn:
            digest, got = read_blob(conn, name, version, info.size, out,
                                    progress=f"Downloading {name} v{version}")
        expected_size = info.recorded_size if info.recorded_size is not None else info.size
        if got != expected_size or (info.stored_digest and digest != info.digest):
            raise MlflowException(
                f"{what} is corrupt in the database: model_binary has {got} bytes with SHA-256 "
                f"{digest[:16]}…, but {expected_size} bytes"
                + (f" with SHA-256 {info.digest[:16]}…" if info.stored_digest else "") +
                " were registered. Nothing was loaded. Restore the row from a backup or register the "
                "model again.",
                error_code=DATA_LOSS,
            )
        return digest


class ServerSource(_CachedSource):
    """Versions fetched through an MLflow server (``/model-versions/get-artifact``): no DB credentials."""

    ENDPOINT = "/model-versions/get-artifact"
    # Retried: the server or the database behind it is busy or restarting. Not 500: that is a
    # definite answer (e.g. DATA_LOSS) which a retry would only delay by minutes.
    RETRY_CODES = frozenset([408, 429, 502, 503, 504])

    def __init__(self, server_uri: str) -> None:
        self.server_uri = server_uri

    def _get(self, name: str, version: int, path: str, out) -> str:
        """Stream one (virtual) file of a version into ``out``; returns its SHA-256."""
        import hashlib

        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(
            get_default_host_creds(self.server_uri), self.ENDPOINT, "GET",
            params={"name": name, "version": str(version), "path": path}, stream=True,
            retry_codes=self.RETRY_CODES,
        )
        with response:
            if response.status_code != 200:
                verify_rest_response(response, self.ENDPOINT)  # raises the server's MlflowException
            sha = hashlib.sha256()
            for chunk in response.iter_content(chunk_size=1024 * 1024):
                sha.update(chunk)
                out.write(chunk)
        return sha.hexdigest()

    def digest(self, name: str, version: int) -> str:
        """The SHA-256 the server's database holds for a version (a few bytes, no download)."""
        import io

        buf = io.BytesIO()
        self._get(name, version, VIRTUAL_DIGEST, buf)
        return buf.getvalue().decode().strip()

    def _cache_entry(self, name: str, version: int) -> tuple[str, cache.Fill]:
        """The cache key of a version (its SHA-256, one small request) and how to fill its entry."""
        digest = self.digest(name, version)

        def fill(tmp: str) -> None:
            blob_path = os.path.join(tmp, "blob")
            with open(blob_path, "wb") as out:
                got = self._get(name, version, VIRTUAL_ARCHIVE, out)
            if got != digest:
                raise MlflowException(
                    f"{_what(name, version)} arrived from {self.server_uri} with SHA-256 "
                    f"{got[:16]}…, expected {digest[:16]}…; nothing was loaded. Try again; if it "
                    "persists, check the server's log.",
                    error_code=DATA_LOSS,
                )
            finish_entry(blob_path, tmp, name, version)

        return digest, fill
