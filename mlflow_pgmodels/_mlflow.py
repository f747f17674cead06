"""The one seam to MLflow's internals: every private MLflow name the package uses, every MLflow
function it replaces at run time, and every assumption about MLflow's tables and server.
"""

from __future__ import annotations

from collections.abc import Callable

# Where MLflow's authentication app (``mlflow server --app-name basic-auth``) puts the user it has
# authenticated, in its before-request hook; MLflow's own handlers read it from there.
_AUTHENTICATED_USER = "mlflow_authenticated_user"


def authenticated_server_user() -> str | None:
    """The user MLflow's authentication app authenticated for the current request of ``mlflow server``.

    None outside a request, and when the server runs without an authentication app: then an
    ``Authorization`` header is whatever the client sent and proves nothing.
    """
    try:
        from flask import g, has_request_context
    except ImportError:
        return None
    if not has_request_context():
        return None
    return getattr(g, _AUTHENTICATED_USER, None)


from collections.abc import Callable


def route_job_store(sqlalchemy_url: Callable[[str], str | None], prepare_engine: Callable[[object], None]) -> None:
    """Let MLflow's job execution accept our backend store URIs.

    MLflow's job backend (``mlflow server``'s job runner and ``/ajax-api/3.0/jobs``, ``mlflow gc
    --jobs``) needs a database URI it knows: ``mlflow.utils.uri.extract_db_type_from_uri`` decides
    whether a backend URI is one, and ``mlflow.store.jobs.sqlalchemy_store.SqlAlchemyJobStore``
    opens it with SQLAlchemy. ``sqlalchemy_url(uri)`` gives the SQLAlchemy URL of the same
    database for one of our URIs (None for any other URI; an error for one of ours it cannot
    use): the check then names that URL's database type, and the job store opens that URL and
    passes its engine to ``prepare_engine`` (MLflow shares one engine per URL between job stores).

    Idempotent. Runs while ``import mlflow`` does, so it imports only light MLflow modules; the
    job store class is wrapped when MLflow loads it.
    """
    import mlflow.utils.uri as mlflow_uri
    from mlflow.exceptions import MlflowException
    from mlflow.utils.import_hooks import register_post_import_hook

    check = mlflow_uri.extract_db_type_from_uri
    if getattr(check, "_pgmodels", False):
        return

    def extract_db_type_from_uri(db_uri):
        try:
            url = sqlalchemy_url(db_uri) if isinstance(db_uri, str) else None
        except MlflowException:
            # one of ours that cannot be used: the job store refuses it with our message (MLflow's
            # messages about a bad backend URI quote it, password included)
            return "postgresql"
        return check(url if url is not None else db_uri)

    extract_db_type_from_uri._pgmodels = True
    mlflow_uri.extract_db_type_from_uri = extract_db_type_from_uri

    def wrap_job_store(module) -> None:
        store_class = module.SqlAlchemyJobStore
        init = store_class.__init__
        if getattr(init, "_pgmodels", False):
            return

        def __init__(self, db_uri):
            url = sqlalchemy_url(db_uri) if isinstance(db_uri, str) else None
            init(self, url if url is not None else db_uri)
            if url is not None:
                prepare_engine(self.engine)

        __init__._pgmodels = True
        store_class.__init__ = __init__

    register_post_import_hook(wrap_job_store, "mlflow.store.jobs.sqlalchemy_store")
