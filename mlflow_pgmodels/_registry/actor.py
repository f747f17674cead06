"""Who makes a change through the store: the MLflow user the database history records.

The store sets ``pgmodels.mlflow_user`` for each of its write transactions; the history
triggers (sql/pgmodels_history.sql) read it. Plain SQL leaves it unset: the database role is
then the only name the history has.
"""

from __future__ import annotations

import getpass

from mlflow_pgmodels._mlflow import authenticated_server_user
from mlflow_pgmodels._pg.route import ROUTER


def mlflow_user() -> str | None:
    """The MLflow user behind the current call, where known.

    Inside ``mlflow server``: the user MLflow's authentication app authenticated for the request;
    none without an authentication app (the request's ``Authorization`` header is then unchecked).
    Elsewhere: the user MLflow records on runs (``MLFLOW_TRACKING_USERNAME``, else the OS user).
    """
    if ROUTER.in_server():
        return authenticated_server_user()
    return _client_user()


def _client_user() -> str | None:
    from mlflow.utils.credentials import read_mlflow_creds

    try:
        return read_mlflow_creds().username or getpass.getuser()
    except Exception:  # no user name at all (e.g. a uid without a passwd entry)
        return None


def mark(conn) -> None:
    """Name the MLflow user in the current transaction (for the history triggers)."""
    conn.execute("SELECT set_config('pgmodels.mlflow_user', %s, true)", (mlflow_user() or "",))
