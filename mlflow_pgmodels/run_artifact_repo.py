"""The artifact repository for ``pgmodels-artifacts:/<path>``: run artifacts and LoggedModel files in the database.

A ``pgmodels://`` tracking store gives new experiments the root ``pgmodels-artifacts:/<experiment
id>`` (tracking_store.py), so everything MLflow logs as an artifact lands in ``pgm_artifacts``.
The URI names no database: a client reaches it with its own ``pgmodels://`` URI (tracking or
registry URI, or the store it built), and a client that has only an MLflow server's address goes
through the server's artifact proxy (``mlflow-artifacts``), which serves this database.
"""

from __future__ import annotations

import os
import posixpath

import mlflow
from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from mlflow_pgmodels._storage import artifact_root
from mlflow_pgmodels._storage import artifacts
from mlflow_pgmodels._pg.uri import is_pgmodels_uri, remembered_store

artifact_root.configure_server()


class RunArtifactRepository(ArtifactRepository):
    """Artifacts below one ``pgmodels-artifacts:`` root, read and written in the database."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.root = artifacts.root_key(artifact_uri)
        self._proxy = None

    # --- which database ---------------------------------------------------------------------
    def _database(self) -> str | None:
        """The ``pgmodels://`` URI to use, or None when only an MLflow server is known."""
        # a client working through a server never falls back to a database this process used before
        via_server = (self.tracking_uri or mlflow.get_tracking_uri()).startswith(("http://", "https://"))
        for uri in (self.tracking_uri, artifact_root.server_database(), mlflow.get_tracking_uri(),
                    self.registry_uri, mlflow.get_registry_uri(), None if via_server else remembered_store()):
            if is_pgmodels_uri(uri):
                return uri
        return None

    def _through_server(self) -> ArtifactRepository:
        """MLflow's ``mlflow-artifacts`` repository for this root, on the tracking server."""
        if self._proxy is None:
            server = next((u for u in (self.tracking_uri, mlflow.get_tracking_uri())
                           if u and u.startswith(("http://", "https://"))), None)
            if server is None:
                raise MlflowException(
                    f"Cannot reach {self.artifact_uri}: its files are in a pgmodels database, and no "
                    "pgmodels:// tracking URI or MLflow server is configured. Set MLFLOW_TRACKING_URI to "
                    "the pgmodels:// URI of that database, or to the http:// address of an MLflow "
                    "server that uses it.", error_code=INVALID_PARAMETER_VALUE)
            from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

            self._proxy = MlflowArtifactsRepository(f"mlflow-artifacts:/{self.root}", tracking_uri=server)
        return self._proxy

    def _key(self, path: str | None) -> str:
        return artifacts.join(self.root, path)

    def _shown(self, path: str | None) -> str:
        return posixpath.join(self.artifact_uri, path or "").rstrip("/")

    # --- ArtifactRepository -------------------------------------------------------------------
    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        key = self._key(posixpath.join(artifacts.destination(artifact_path), os.path.basename(local_file)))
        uri = self._database()
        if uri is None:
            return self._through_server().log_artifact(local_file, artifact_path)
        artifacts.store(uri, [(local_file, key)])

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        base = self._key(artifacts.destination(artifact_path))
        files = []
        for top, dirs, names in os.walk(local_dir):
            dirs.sort()
            rel_dir = os.path.relpath(top, local_dir).replace(os.sep, "/")
            for name in sorted(names):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                files.append((os.path.join(top, name), artifacts.join(base, rel)))  # all checked first
        uri = self._database()
        if uri is None:
            return self._through_server().log_artifacts(local_dir, artifact_path)
        artifacts.store(uri, files)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        key = self._key(path)
        uri = self._database()
        if uri is None:
            return self._through_server().list_artifacts(path)
        rel = artifacts.relative(path)
        return [FileInfo(f"{rel}/{name}" if rel else name, is_dir, size)
                for name, is_dir, size in artifacts.listing(uri, key)]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        key = self._key(remote_file_path)
        uri = self._database()
        if uri is None:
            return self._through_server()._download_file(remote_file_path, local_path)
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        try:
            with open(local_path, "wb") as out:
                artifacts.read(uri, key, out, repr(self._shown(remote_file_path)))
        except BaseException:
            os.remove(local_path)
            raise

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        key = self._key(artifact_path)
        uri = self._database()
        if uri is None:
            return self._through_server().delete_artifacts(artifact_path)
        artifacts.delete(uri, key)

