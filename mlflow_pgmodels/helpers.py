"""The seed's ``model_db_util`` functions, on top of the pgmodels registry.

How the seed's ``(name, event, model_type)`` maps to MLflow: ``name`` is the registered model
name; ``event`` and ``model_type`` are the version's tags of those names, which are the
``models.event`` / ``models.model_type`` columns. Versions are numbered per name, as in the
seed's ``UNIQUE(name, version)``, so the same numbers show in MLflow, the UI and SQL.

Two events under one name share one series of numbers. The helpers then pick by event and type
(the latest ACTIVE version *of that event and type*), while MLflow's ``models:/name/latest`` is
the latest active version of the name whatever its event. To make both agree, give each event
(and type) its own name, e.g. ``cpi_regression`` — as the examples do.

Failures: ``save_model_to_db``, ``deactivate_model`` and ``activate_model`` report them as the
seed did, by their return value (``(False, None)`` / ``False``), and log the reason on the
``mlflow_pgmodels`` logger. ``load_model_from_db`` raises an MlflowException naming name, event
and type and what does exist. A missing URI is an error for every function.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.entities.model_registry.model_version_stages import STAGE_ARCHIVED, STAGE_NONE
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.reads import read_connection
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.uri import redact
from mlflow_pgmodels._registry.entities import ACTIVE_SQL
from mlflow_pgmodels._registry.search import latest_active_version

_mlflow.require()  # an MLflow without what this package needs fails here, saying what to do

__all__ = ["save_model_to_db", "load_model_from_db", "get_latest_model_version", "deactivate_model",
           "activate_model"]

_log = logging.getLogger("mlflow_pgmodels")


def save_model_to_db(model: Any, name: str, event: str, model_type: str, uri: str | None = None,
                     ) -> tuple[bool, int | None]:
    """Register ``model`` as a new version of ``name`` tagged ``event`` / ``model_type``.

    Returns ``(True, version)``, or ``(False, None)`` when it could not be saved (reason logged).
    The version is linked to the active MLflow run, if there is one.
    """
    store = _store(uri)
    import mlflow

    run = mlflow.active_run()
    try:
        mv = register(store, model, name, event, model_type, run_id=run.info.run_id if run else None)
    except Exception as e:  # the seed's contract: report, do not raise
        _log.error("Could not save model '%s' (event '%s', model_type '%s'): %s",
                   name, event, model_type, redact(getattr(e, "message", None) or repr(e)))
        return False, None
    return True, int(mv.version)


def load_model_from_db(name: str, event: str, model_type: str, version: int | None = None,
                       uri: str | None = None) -> tuple[Any, int]:
    """``(model, version)``: the latest active version of name/event/type, or the given ``version``.

    The model comes back as it was saved (e.g. the scikit-learn estimator); versions logged with
    other MLflow flavors come back through that flavor's ``load_model``, file-era joblib rows as
    the unpickled object.
    """
    uri = resolve_uri(uri)
    with read_connection(uri, f"read model '{name}'") as conn:
        if version is None:
            number = latest_active_version(conn, name, event, model_type)
        else:
            row = conn.execute(
                "SELECT version FROM models WHERE name = %s AND event = %s AND model_type = %s AND version = %s",
                (name, event, model_type, int(version))).fetchone()
            number = row and row[0]
        if number is None:
            raise _missing(conn, uri, name, event, model_type, version)
    from mlflow_pgmodels._cache.fetch import DatabaseSource

    return load_native(DatabaseSource(uri).materialize(name, number)), number


def get_latest_model_version(name: str, event: str, model_type: str, uri: str | None = None) -> int | None:
    """The highest active version of name/event/type, or None when there is none."""
    uri = resolve_uri(uri)
    with read_connection(uri, f"read model '{name}'") as conn:
        return latest_active_version(conn, name, event, model_type)


def deactivate_model(name: str, event: str, model_type: str, version: int, uri: str | None = None) -> bool:
    """Archive a version (``is_active = false``): ``models:/name/latest`` skips it. False if not found."""
    return _set_active(name, event, model_type, version, False, uri)


def activate_model(name: str, event: str, model_type: str, version: int, uri: str | None = None) -> bool:
    """Make an archived version active again (stage None). False if not found."""
    return _set_active(name, event, model_type, version, True, uri)


# ---------------------------------------------------------------------- shared with migrate
def register(store, model: Any, name: str, event: str, model_type: str, run_id: str | None = None,
             tags: dict[str, str] | None = None) -> ModelVersion:
    """Save ``model`` in MLflow's format and register it as a new version in ``store``."""
    with tempfile.TemporaryDirectory(prefix="pgmodels-save-") as tmp:
        path = os.path.join(tmp, "model")
        save_mlflow_model(model, path)
        try:
            store.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        all_tags = {**(tags or {}), "event": event, "model_type": model_type}
        return store.create_model_version(
            name, source="", run_id=run_id, local_model_path=path,
            tags=[ModelVersionTag(k, v) for k, v in all_tags.items()])


def save_mlflow_model(model: Any, path: str) -> None:
    """Write ``model`` as an MLflow scikit-learn model directory at ``path``.

    skops (MLflow's safe default) when it can hold the object, else cloudpickle, which holds
    anything joblib could (custom classes, functions). Requirements are pinned from the
    installed versions instead of MLflow's slow inference.
    """
    import shutil

    import mlflow.sklearn

    try:
        mlflow.sklearn.save_model(model, path, pip_requirements=mlflow.sklearn.get_default_pip_requirements(
            include_skops=True))
        return
    except MlflowException:
        shutil.rmtree(path, ignore_errors=True)
    logger = logging.getLogger("mlflow.sklearn")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its warning about pickle formats, once per model
    try:
        mlflow.sklearn.save_model(model, path, serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                                  pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                                      include_cloudpickle=True))
    finally:
        logger.setLevel(level)


def load_native(model_dir: str) -> Any:
    """The object inside an MLflow model directory, through its own flavor where there is one."""
    import importlib

    import mlflow.pyfunc
    from mlflow.models import Model

    flavors = Model.load(os.path.join(model_dir, "MLmodel")).flavors
    pyfunc_conf = flavors.get("python_function", {})
    if pyfunc_conf.get("loader_module") == "mlflow_pgmodels.legacy":
        from mlflow_pgmodels import legacy

        return legacy._load_pyfunc(os.path.join(model_dir, pyfunc_conf.get("data", ""))).get_raw_model()
    for flavor in flavors:
        if flavor == "python_function":
            continue
        try:
            module = importlib.import_module(f"mlflow.{flavor}")
        except ImportError:
            continue
        if hasattr(module, "load_model"):
            return module.load_model(model_dir)
    return mlflow.pyfunc.load_model(model_dir)


# ---------------------------------------------------------------------- internals
def _store(uri: str | None):
    from mlflow_pgmodels._registry.store import PgModelsRegistryStore

    return PgModelsRegistryStore(resolve_uri(uri))


def _set_active(name: str, event: str, model_type: str, version: int, active: bool, uri: str | None) -> bool:
    store = _store(uri)
    what = f"model '{name}' (event '{event}', model_type '{model_type}') version {version}"
    try:
        with connection(store.store_uri, f"read {what}") as conn:
            row = conn.execute(
                f"SELECT {ACTIVE_SQL} FROM models"
                " WHERE name = %s AND event = %s AND model_type = %s AND version = %s",
                (name, event, model_type, int(version))).fetchone()
            if row is None:
                _log.error("Cannot %s %s: %s", "activate" if active else "deactivate", what,
                           _missing(conn, store.store_uri, name, event, model_type, version).message)
                return False
        if row[0] != active:
            store.transition_model_version_stage(name, int(version), STAGE_NONE if active else STAGE_ARCHIVED,
                                                 archive_existing_versions=False)
    except MlflowException as e:
        _log.error("Cannot %s %s: %s", "activate" if active else "deactivate", what, redact(e.message))
        return False
    return True


def _missing(conn, uri: str, name: str, event: str, model_type: str, version: int | None) -> MlflowException:
    """The error for a name/event/type (and version) that is not there, listing what is."""
    wanted = (f"model '{name}' with event '{event}' and model_type '{model_type}'"
              + (f" version {version}" if version is not None else " (no active version)"))
    rows = conn.execute(
        "SELECT event, model_type, array_agg(version ORDER BY version),"
        f" array_agg(version ORDER BY version) FILTER (WHERE {ACTIVE_SQL})"
        " FROM models WHERE name = %s GROUP BY event, model_type ORDER BY event, model_type",
        (name,)).fetchall()
    if rows:
        found = "; ".join(
            f"event '{e}', model_type '{t}': versions {_numbers(all_v)} (active: {_numbers(active_v or [])})"
            for e, t, all_v, active_v in rows)
        detail = f"Model '{name}' has: {found}."
    else:
        same = [r[0] for r in conn.execute(
            "SELECT DISTINCT name FROM models WHERE event = %s AND model_type = %s ORDER BY name LIMIT 20",
            (event, model_type)).fetchall()]
        detail = (f"There is no model named '{name}'. "
                  + (f"Models with event '{event}' and model_type '{model_type}': {', '.join(same)}."
                     if same else f"No model has event '{event}' and model_type '{model_type}'."))
    return MlflowException(f"No {wanted} in {redact(uri)}. {detail}", error_code=RESOURCE_DOES_NOT_EXIST)


def _numbers(versions: list[int]) -> str:
    if not versions:
        return "none"
    shown = ", ".join(str(v) for v in versions[-10:])
    return shown if len(versions) <= 10 else f"… {shown} ({len(versions)} in all)"
