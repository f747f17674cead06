"""The artifact repository for ``pgmodels-artifacts:/<path>``: run artifacts and LoggedModel files in the database.

A ``pgmodels://`` tracking store gives new experiments the root ``pgmodels-artifacts:/<experiment
id>`` (tracking_store.py), so everything MLflow logs as an artifact lands in ``pgm_artifacts``.
The URI names no database: a client reaches it with its own ``pgmodels://`` URI (tracking or
registry URI, or the store it built), and a client that has only an MLflow server's address goes
through the server's artifact proxy (``mlflow-artifacts``), which serves this database. Which of the
two is decided once per repository, by the router (_pg/route.py).
"""

from __future__ import annotations

import os
import posixpath

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from mlflow_pgmodels._pg.route import ROUTER, DatabaseRoute
from mlflow_pgmodels._storage import artifact_root, artifacts

artifact_root.configure_server()


class RunArtifactRepository(ArtifactRepository):
    """Artifacts below one ``pgmodels-artifacts:`` root, read and written in the database."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.root = artifacts.root_key(artifact_uri)
        where = ROUTER.route(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        if isinstance(where, DatabaseRoute):
            self._backend: _InDatabase | _ThroughServer = _InDatabase(self.root, where.uri, artifact_uri)
        else:
            self._backend = _ThroughServer(self.root, where.url if where else None, artifact_uri)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        self._backend.log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._backend.log_artifacts(local_dir, artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        return self._backend.list_artifacts(path)

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self._backend._download_file(remote_file_path, local_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        self._backend.delete_artifacts(artifact_path)


class _Keys:
    """The database keys of the paths below one root; every path is checked before anything is done."""

    def __init__(self, root: str) -> None:
        self.root = root

    def of(self, path: str | None) -> str:
        return artifacts.join(self.root, path)

    def of_file(self, local_file: str, artifact_path: str | None) -> str:
        return self.of(posixpath.join(artifacts.destination(artifact_path), os.path.basename(local_file)))

    def of_dir(self, local_dir: str, artifact_path: str | None) -> list[tuple[str, str]]:
        """``(local file, key)`` of every file below ``local_dir``, all checked first."""
        base = self.of(artifacts.destination(artifact_path))
        files = []
        for top, dirs, names in os.walk(local_dir):
            dirs.sort()
            rel_dir = os.path.relpath(top, local_dir).replace(os.sep, "/")
            for name in sorted(names):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                files.append((os.path.join(top, name), artifacts.join(base, rel)))
        return files


class _InDatabase(_Keys):
    """The files below one root, in the ``pgm_artifacts`` rows of the database at ``uri``."""

    def __init__(self, root: str, uri: str, artifact_uri: str) -> None:
        super().__init__(root)
        self.uri, self.artifact_uri = uri, artifact_uri

    def log_artifact(self, local_file: str, artifact_path: str | None) -> None:
        artifacts.store(self.uri, [(local_file, self.of_file(local_file, artifact_path))])

    def log_artifacts(self, local_dir: str, artifact_path: str | None) -> None:
        artifacts.store(self.uri, self.of_dir(local_dir, artifact_path))

    def list_artifacts(self, path: str | None) -> list[FileInfo]:
        key, rel = self.of(path), artifacts.relative(path)
        return [FileInfo(f"{rel}/{name}" if rel else name, is_dir, size)
                for name, is_dir, size in artifacts.listing(self.uri, key)]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        key = self.of(remote_file_path)
        shown = posixpath.join(self.artifact_uri, remote_file_path or "").rstrip("/")
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        try:
            with open(local_path, "wb") as out:
                artifacts.read(self.uri, key, out, repr(shown))
        except BaseException:
            os.remove(local_path)
            raise

    def delete_artifacts(self, artifact_path: str | None) -> None:
        artifacts.delete(self.uri, self.of(artifact_path))


class _ThroughServer(_Keys):
    """The files below one root through the server's artifact proxy (MLflow's ``mlflow-artifacts``
    repository), each path refused here as the database would refuse it; ``url`` None: no server known."""

    def __init__(self, root: str, url: str | None, artifact_uri: str) -> None:
        super().__init__(root)
        self.url, self.artifact_uri = url, artifact_uri
        self._repo: ArtifactRepository | None = None

    def log_artifact(self, local_file: str, artifact_path: str | None) -> None:
        self.of_file(local_file, artifact_path)
        self._proxy().log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None) -> None:
        self.of_dir(local_dir, artifact_path)
        self._proxy().log_artifacts(local_dir, artifact_path)

    def list_artifacts(self, path: str | None) -> list[FileInfo]:
        self.of(path)
        return self._proxy().list_artifacts(path)

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self.of(remote_file_path)
        self._proxy()._download_file(remote_file_path, local_path)

    def delete_artifacts(self, artifact_path: str | None) -> None:
        self.of(artifact_path)
        self._proxy().delete_artifacts(artifact_path)

    def _proxy(self) -> ArtifactRepository:
        if self._repo is None:
            if self.url is None:
                raise MlflowException(
                    f"Cannot reach {self.artifact_uri}: its files are in a pgmodels database, and no "
                    "pgmodels:// tracking URI or MLflow server is configured. Set MLFLOW_TRACKING_URI to "
                    "the pgmodels:// URI of that database, or to the http:// address of an MLflow "
                    "server that uses it.", error_code=INVALID_PARAMETER_VALUE)
            from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

            self._repo = MlflowArtifactsRepository(f"mlflow-artifacts:/{self.root}", tracking_uri=self.url)
        return self._repo
