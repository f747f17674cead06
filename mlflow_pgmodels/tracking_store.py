"""The ``pgmodels://`` tracking store: MLflow's own SQL tracking store on the same database.

So one URI serves runs, experiments and logged models (MLflow's tables) and the model registry
(the ``models`` table). Unless an artifact location is given, new experiments get their artifact
root inside the database too (``pgmodels-artifacts:/<experiment id>``, run_artifact_repo.py).
Imports are lazy: this module is loaded while ``import mlflow`` runs.
"""

from __future__ import annotations


def build_tracking_store(store_uri: str, artifact_uri: str | None = None):
    """Builder for the ``mlflow.tracking_store`` entry point (MLflow passes exactly these names)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_pgmodels import _mlflow
    from mlflow_pgmodels._pg import mlflow_schema
    from mlflow_pgmodels._pg.db import connection, quiet_aborted_pipelines
    from mlflow_pgmodels._pg.route import ROUTER
    from mlflow_pgmodels._pg.schema import schema_lock
    from mlflow_pgmodels._pg.uri import to_sqlalchemy_url
    from mlflow_pgmodels._settings import refuse_workspaces
    from mlflow_pgmodels._storage.artifact_root import default_artifact_root

    _mlflow.require()
    _mlflow.tolerate_half_imported_auth_module()
    refuse_workspaces()
    ROUTER.remember_store(store_uri)
    artifact_uri = default_artifact_root(artifact_uri)
    # MLflow creates and migrates its tables on first use without a lock, so processes starting
    # together on a new database collide (duplicate alembic_version); one at a time, like ours.
    # A transaction-scoped lock, held by a transaction that stays open while MLflow's store starts
    # (on its own connections): it ends with the transaction even behind a transaction pooler.
    with connection(store_uri, "prepare MLflow's tracking tables") as conn, schema_lock(conn):
        found = mlflow_schema.revision(conn)
        mlflow_schema.refuse_newer(conn)  # a newer MLflow's migrations: say so, not "out-of-date"
        try:
            store = SqlAlchemyStore(to_sqlalchemy_url(store_uri), artifact_uri)
        except MlflowException as e:
            if found is not None and "out-of-date database schema" in e.message:
                raise mlflow_schema.older_schema_error(found) from None
            raise
        if found is None:
            mlflow_schema.record_upgrader(conn)
    _for_poolers(store.engine)
    store.ManagedSessionMaker = _permission_errors(store.ManagedSessionMaker)
    _experiment_files_go_with_it(store, store_uri)
    quiet_aborted_pipelines()
    return store


def job_store_url(store_uri: str) -> str | None:
    """The SQLAlchemy URL MLflow's job store uses for a ``pgmodels://`` backend (the tracking
    store's database); None for any other URI."""
    from mlflow_pgmodels._pg.uri import is_pgmodels_uri, to_sqlalchemy_url

    return to_sqlalchemy_url(store_uri) if is_pgmodels_uri(store_uri) else None


def _enable_job_execution() -> None:
    """MLflow's job execution (GenAI scorer and evaluation jobs, ``mlflow gc --jobs``) on a
    ``pgmodels://`` backend, as on ``postgresql://``: its job store on the same database.

    Done at import (MLflow loads this module while ``import mlflow`` runs, in the server, its
    job runners and ``mlflow gc``), before MLflow checks the backend URI for jobs.
    """
    from mlflow_pgmodels._mlflow import route_job_store

    route_job_store(job_store_url, _for_poolers)


def _for_poolers(engine) -> None:
    """No server-side prepared statements on MLflow's connections behind a transaction pooler (PgBouncer).

    Set on each new connection; the ones the store opened while starting are closed. Once per engine.
    """
    from sqlalchemy import event

    if not event.contains(engine, "connect", _on_connect):
        event.listen(engine, "connect", _on_connect)
        engine.dispose()


def _on_connect(dbapi_connection, record) -> None:
    from mlflow_pgmodels._pg.db import for_poolers

    for_poolers(dbapi_connection)
    dbapi_connection.rollback()  # the check's transaction; SQLAlchemy expects none open


def _experiment_files_go_with_it(store, store_uri: str) -> None:
    """``mlflow gc``: a permanently deleted experiment takes the files below its database root
    with it (its LoggedModels' and traces', which gc does not delete one by one), and blobs that
    nothing references (none unless a release before schema 5 leaked them) are swept."""
    from mlflow_pgmodels._mlflow import before_hard_delete_experiment
    from mlflow_pgmodels._storage.artifacts import delete_experiment_files

    def delete_files(experiment_id) -> None:
        experiment = store.get_experiment(experiment_id)
        delete_experiment_files(store_uri, experiment.experiment_id, experiment.artifact_location)

    before_hard_delete_experiment(store, delete_files)


def _permission_errors(session_maker):
    """MLflow's session factory, with "permission denied" as PERMISSION_DENIED (MLflow says BAD_REQUEST).

    So that a read-only role (sql/roles.sql) gets the same clear error from a tracking write
    (e.g. ``start_run``) as from a registry write.
    """
    import contextlib

    from mlflow.exceptions import MlflowException
    from psycopg import errors as pg_errors

    from mlflow_pgmodels._pg.db import translate_errors

    @contextlib.contextmanager
    def managed_session(*args, **kwargs):
        try:
            with session_maker(*args, **kwargs) as session:
                yield session
        except MlflowException as e:
            original = getattr(e.__cause__, "orig", None)
            if isinstance(original, pg_errors.InsufficientPrivilege):
                with translate_errors("change MLflow's tracking data (runs, experiments, logged models)"):
                    raise original from None
            raise

    return managed_session


_enable_job_execution()
