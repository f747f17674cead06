"""The artifact repository for ``pgmodels:/<name>/<version>``: a version's files, out of its row.

A version is fetched once into the local cache (cache.py). A load or download without
``dst_path`` is served from there in place, like MLflow's local-file repository (read-only, checked
on every load, pinned against eviction while the process lives); a download to ``dst_path`` gets
copies the caller may change freely. There is no ``get_local_path``: the MLflow server then
copies a requested file into a temporary directory it removes after the response, instead of
pinning every version it ever showed; the archive remote clients download (``.pgmodels/model.zip``)
is a hard link there of the server's own cached copy, read from the database once per host.
Where the client has only an MLflow server's address
(``registry_uri='http://...'``) the archive comes through the server's
``/model-versions/get-artifact`` endpoint instead, so no database credentials are needed.
"""

from __future__ import annotations

import os
import shutil

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from mlflow_pgmodels._cache import cache
from mlflow_pgmodels._cache.fetch import VIRTUAL_ARCHIVE, VIRTUAL_DIGEST, VIRTUAL_DIR, DatabaseSource, ServerSource
from mlflow_pgmodels._pg.route import ROUTER, DatabaseRoute, ServerRoute
from mlflow_pgmodels._pg.uri import download_uri, parse_download_uri, parse_model_root


class VersionArtifactRepository(ArtifactRepository):
    """Read-only access to the files of one registered model version stored in ``models``."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        # mlflow.artifacts.download_artifacts("pgmodels:/churn/3") splits off the last part as the
        # artifact path: "pgmodels:/churn" is then the root above the versions, paths start with one
        self._model_root = parse_model_root(artifact_uri)
        if self._model_root is None:
            self.model_name, self.model_version = parse_download_uri(artifact_uri)

    def _version_repo(self, path: str | None) -> tuple["VersionArtifactRepository", str]:
        """For a model root: the repository of the version a path starts with, and the rest of it."""
        version, _, rest = (path or "").strip("/").partition("/")
        if not version.isdigit():
            raise MlflowException(
                f"{self.artifact_uri}/{path or ''} names no version: use pgmodels:/<model name>/<version>",
                error_code=INVALID_PARAMETER_VALUE)
        repo = VersionArtifactRepository(download_uri(self._model_root, version), self.tracking_uri,
                                          self.registry_uri)
        return repo, rest

    # --- where the bytes come from -------------------------------------------------------
    def _source(self) -> DatabaseSource | ServerSource:
        where = ROUTER.route(self.artifact_uri, tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        if isinstance(where, DatabaseRoute):
            return DatabaseSource(where.uri)
        if isinstance(where, ServerRoute):
            return ServerSource(where.url)
        raise MlflowException(
            f"Cannot download {self.artifact_uri}: no pgmodels:// registry URI or MLflow server is "
            "configured. Set MLFLOW_REGISTRY_URI (or MLFLOW_TRACKING_URI) to the pgmodels:// URI "
            "of the model database, or to the http:// address of an MLflow server that uses it.",
            error_code=INVALID_PARAMETER_VALUE,
        )

    def model_dir(self) -> str:
        """The cached directory of this version's files, to be used in place (pinned for this process's life)."""
        return self._source().materialize(self.model_name, self.model_version)

    def _borrowed(self):
        """The cached directory of this version, pinned only inside the ``with`` block."""
        return self._source().borrowed(self.model_name, self.model_version)

    # --- ArtifactRepository ----------------------------------------------------------------
    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        if self._model_root is not None:
            if not (path or "").strip("/"):
                return []
            repo, rest = self._version_repo(path)
            prefix = (path or "").strip("/").split("/")[0]
            return [FileInfo(f"{prefix}/{f.path}", f.is_dir, f.file_size) for f in repo.list_artifacts(rest)]
        if path and path.strip("/").startswith(VIRTUAL_DIR):
            return []
        rel = (path or "").strip("/")
        with self._borrowed() as base:
            full = os.path.join(base, rel)
            if not os.path.isdir(full):
                return []
            infos = []
            for entry in sorted(os.listdir(full)):
                if _not_a_version_file(entry):
                    continue
                entry_path = os.path.join(full, entry)
                rel_path = f"{rel}/{entry}" if rel else entry
                is_dir = os.path.isdir(entry_path)
                infos.append(FileInfo(rel_path, is_dir, None if is_dir else os.path.getsize(entry_path)))
        return infos

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        """The files in place in the cache when ``dst_path`` is None, else copies in ``dst_path``."""
        if self._model_root is not None:
            repo, rest = self._version_repo(artifact_path)
            return repo.download_artifacts(rest, dst_path)
        artifact_path = (artifact_path or "").strip("/")
        if artifact_path in (VIRTUAL_ARCHIVE, VIRTUAL_DIGEST):
            return self._download_virtual(artifact_path, dst_path)
        if dst_path is None:
            return self._local(self.model_dir(), artifact_path)
        dst = os.path.join(os.path.abspath(dst_path), artifact_path) if artifact_path else os.path.abspath(dst_path)
        with self._borrowed() as base:
            _copy_tree(self._local(base, artifact_path), dst)
        return dst

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        if self._model_root is not None:
            repo, rest = self._version_repo(remote_file_path)
            return repo._download_file(rest, local_path)
        with self._borrowed() as base:
            _copy_tree(self._local(base, remote_file_path), local_path)

    def log_artifact(self, local_file, artifact_path=None):
        raise _immutable()

    def log_artifacts(self, local_dir, artifact_path=None):
        raise _immutable()

    def delete_artifacts(self, artifact_path=None):
        raise _immutable()

    # --- helpers ---------------------------------------------------------------------------
    def _local(self, base: str, artifact_path: str) -> str:
        full = os.path.normpath(os.path.join(base, artifact_path.strip("/")))
        if os.path.commonpath([base, full]) != base or not os.path.exists(full):
            raise MlflowException(
                f"No file {artifact_path!r} in model '{self.model_name}' version {self.model_version}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        return full

    def _download_virtual(self, artifact_path: str, dst_path: str | None) -> str:
        source = self._source()
        if not isinstance(source, DatabaseSource):
            raise MlflowException(f"{artifact_path} is served by the database side only",
                                  error_code=INVALID_PARAMETER_VALUE)
        dst_dir = dst_path or cache.scratch_dir()  # removed when this process exits
        out = os.path.join(dst_dir, artifact_path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if artifact_path == VIRTUAL_DIGEST:
            with open(out, "w") as f:
                f.write(source.digest(self.model_name, self.model_version))
        else:
            with source.archive(self.model_name, self.model_version) as archive:
                _link_or_copy(archive, out)
        return out


def _immutable() -> MlflowException:
    return MlflowException(
        "A registered model version in pgmodels is immutable: its files cannot be added, changed "
        "or deleted. Register a new version instead.",
        error_code=INVALID_PARAMETER_VALUE,
    )


def _not_a_version_file(name: str) -> bool:
    """Files the cache keeps beside a version's own (its manifest, MLflow's registered_model_meta)
    and Python's bytecode of a model's code paths."""
    return name.startswith(".pgmodels") or name in ("registered_model_meta", "__pycache__")


def _copy_tree(src: str, dst: str) -> None:
    """Copy a file or directory tree to ``dst``: new files (never links), writable by the caller."""
    if not os.path.isdir(src):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        _copy_file(src, dst)
        return
    for top, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not _not_a_version_file(d)]
        out = os.path.join(dst, os.path.relpath(top, src))
        os.makedirs(out, exist_ok=True)
        for name in files:
            if not _not_a_version_file(name):
                _copy_file(os.path.join(top, name), os.path.join(out, name))


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link to a cached archive for the server to send (a copy across file systems).

    No bytes are copied per request, and the link outlives the entry's eviction while it is sent.
    A write through it would change the file's size or mtime, which the cache's check of the entry
    notices: the entry is then discarded, never served again.
    """
    try:
        if os.path.lexists(dst):
            os.remove(dst)
        os.link(src, dst)
    except OSError:
        _copy_file(src, dst)


def _copy_file(src: str, dst: str) -> None:
    if os.path.lexists(dst):
        os.remove(dst)  # never write through a link someone left there (e.g. into an old cache)
    shutil.copyfile(src, dst)
