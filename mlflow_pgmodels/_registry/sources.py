"""Finding the files of a version being registered: the ``source`` MLflow passes to the store."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels._mlflow import REGISTERED_MODEL_META_FILE, download_through_server_proxy
from mlflow_pgmodels._pg.uri import is_artifacts_uri, is_pgmodels_uri, parse_download_uri, redact
from mlflow_pgmodels._storage.artifacts import join, root_key

# Sources MLflow uses for prompts: there are no files behind them.
PLACEHOLDER_SOURCES = {"dummy-source", "prompt-template", ""}
_LOGGED_MODEL = re.compile(r"models:/(m-[0-9a-f]{32})(?:/|$)")


def logged_model_id(source: str) -> str | None:
    """``m-<32 hex>`` for a ``models:/m-<32 hex>`` source (a LoggedModel), else None.

    Only MLflow's own id format counts: ``models:/m-churn/1`` is version 1 of a model named ``m-churn``.
    """
    match = _LOGGED_MODEL.match(source)
    return match.group(1) if match else None


def own_version(source: str) -> tuple[str, int] | None:
    """(name, version) when ``source`` is a version of this store (``pgmodels:/name/N``, ``models:/name/N``)."""
    if source.startswith("pgmodels:/") and not is_pgmodels_uri(source):
        return parse_download_uri(source)
    if source.startswith("models:/") and not logged_model_id(source):
        parts = source[len("models:/"):].strip("/").split("/")
        if len(parts) == 2 and parts[1].isdigit():
            return parts[0], int(parts[1])
    return None


class Tracking:
    """The tracking store a registration's source is looked up in; each LoggedModel is read once
    per registration (its run, its files and its download all need it)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self._logged: dict[str, object] = {}

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def logged_model(self, model_id: str):
        """The LoggedModel ``model_id`` (MlflowException when the tracking store has none)."""
        if model_id not in self._logged:
            self._logged[model_id] = self.client().get_logged_model(model_id)
        return self._logged[model_id]

    def source_run_id(self, model_id: str | None) -> str | None:
        """The run a LoggedModel was logged in, so that the UI links the version to it."""
        if not model_id:
            return None
        with contextlib.suppress(Exception):
            return self.logged_model(model_id).source_run_id
        return None


def database_artifacts(source: str, tracking: Tracking) -> str | None:
    """The pgm_artifacts key of ``source``'s files when they are in a pgmodels database
    (``models:/m-<id>``, ``runs:/<run id>/<path>`` or ``pgmodels-artifacts:/…``), else None."""
    if is_artifacts_uri(source):
        return root_key(source)
    try:
        model_id = logged_model_id(source)
        if model_id:
            location = tracking.logged_model(model_id).artifact_location
            rest = source[len("models:/") + len(model_id):]
        elif source.startswith("runs:/"):
            run_id, _, rest = source[len("runs:/"):].strip("/").partition("/")
            location = tracking.client().get_run(run_id).info.artifact_uri
        else:
            return None
    except MlflowException:
        return None  # not found here: the download path says why, in the usual words
    return join(root_key(location), rest) if is_artifacts_uri(location) else None


@contextlib.contextmanager
def model_files(source: str, local_model_path: str | None, tracking: Tracking) -> Iterator[str | None]:
    """A local MLflow model directory for ``source``, or None for sources without files (prompts)."""
    if local_model_path and os.path.isfile(os.path.join(local_model_path, "MLmodel")):
        yield local_model_path
        return
    if source in PLACEHOLDER_SOURCES:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="pgmodels-src-")
    try:
        path = _download(source, tmp, tracking)
        if os.path.isfile(path):  # a single file: not a model directory
            path = os.path.dirname(path)
        meta = os.path.join(path, REGISTERED_MODEL_META_FILE)
        if os.path.exists(meta):
            os.remove(meta)
        if not os.path.isfile(os.path.join(path, "MLmodel")):
            raise MlflowException(
                f"The source {redact(source)!r} is not an MLflow model (no MLmodel file at its root). "
                "Register a directory written by mlflow.<flavor>.log_model or save_model.",
                error_code=INVALID_PARAMETER_VALUE,
            )
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(source: str, dst: str, tracking: Tracking) -> str:
    import mlflow.artifacts

    try:
        model_id = logged_model_id(source)
        uri = source
        if model_id:
            uri = tracking.logged_model(model_id).artifact_location
            served = download_through_server_proxy(uri, dst)
            if served:
                return served
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=tracking.tracking_uri)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"):
            raise
        raise MlflowException(f"Cannot read the model files at {redact(source)!r}: {redact(e.message)}",
                              error_code=INVALID_PARAMETER_VALUE) from None
    except (OSError, ValueError) as e:
        raise MlflowException(f"Cannot read the model files at {redact(source)!r}: {redact(str(e))}",
                              error_code=RESOURCE_DOES_NOT_EXIST) from None

