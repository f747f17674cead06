"""Where new experiments keep their artifacts: the location given, else the database.

``mlflow server`` without ``--default-artifact-root`` and ``--artifacts-destination`` counts as
not given: MLflow's defaults there (``mlflow-artifacts:/``, proxied to ``./mlartifacts`` in the
server's working directory) are replaced by the database, and the server's artifact proxy (what
``http://`` clients write and read through) serves the database too.
"""

from __future__ import annotations

import os

from mlflow_pgmodels._mlflow import (
    SERVER_ARTIFACT_DESTINATION_ENV as _SERVER_DESTINATION_ENV,
)
from mlflow_pgmodels._mlflow import (
    SERVER_ARTIFACT_ROOT_ENV as _SERVER_ROOT_ENV,
)
from mlflow_pgmodels._mlflow import (
    SERVER_DEFAULT_ARTIFACT_ROOT as _SERVER_DEFAULT_ROOT,
)
from mlflow_pgmodels._pg.route import ROUTER
from mlflow_pgmodels._pg.uri import DATABASE_ARTIFACT_ROOT


def default_artifact_root(given: str | None) -> str:
    """The artifact root for a tracking store MLflow builds with ``given`` (None: not given).

    ``mlflow server``'s workers pass the server's root as ``given``; MLflow's default there
    counts as not given, so experiments created through the server have their root in the
    database too and clients that reach the database directly read them.
    """
    server_root = os.environ.get(_SERVER_ROOT_ENV)
    if given is None and server_root is None:
        return DATABASE_ARTIFACT_ROOT
    if given in (None, server_root) and configure_server():
        return DATABASE_ARTIFACT_ROOT
    return server_root if given is None else given


def configure_server() -> bool:
    """Inside an ``mlflow server`` whose backend or registry store is a pgmodels database and
    that runs with MLflow's artifact defaults: point its artifact proxy at the database; returns
    whether it does.

    The registry store counts too: ``pgmodels-artifacts:`` roots of that database (experiments
    created while it was the tracking store) reach the server's proxy from ``http://`` clients,
    and registering their models reads them from the database.

    Runs when this package's artifact repositories are registered (while MLflow's artifact
    registry is imported), so before the server's first artifact request.
    """
    if ROUTER.server_database() is None:
        return False
    if os.environ.get(_SERVER_ROOT_ENV) not in (_SERVER_DEFAULT_ROOT, DATABASE_ARTIFACT_ROOT):
        return False
    if os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"):
        return False
    destination = os.environ.get(_SERVER_DESTINATION_ENV, "")
    if destination not in ("", "./mlartifacts", "mlartifacts", os.path.abspath("mlartifacts"),
                           DATABASE_ARTIFACT_ROOT):
        return False
    os.environ[_SERVER_DESTINATION_ENV] = DATABASE_ARTIFACT_ROOT
    return True
