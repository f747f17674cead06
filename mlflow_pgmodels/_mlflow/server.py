"""Inside ``mlflow server`` and MLflow's SQL stores: the environment it sets, its handler internals we
replace or call, workspaces, the authenticated user, and job-store routing."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from mlflow_pgmodels._mlflow._core import incompatibility, require, resolve
from mlflow_pgmodels._mlflow.webhooks import _WEBHOOKS, WEBHOOKS_SINCE


# workspaces (MLflow 3.10)
def workspaces_enabled() -> bool:
    """Whether MLflow's workspaces mode is on (MLFLOW_ENABLE_WORKSPACES; MLflow before 3.10 has none)."""
    env = importlib.import_module("mlflow.environment_variables")
    flag = getattr(env, "MLFLOW_ENABLE_WORKSPACES", None)
    return bool(flag.get()) if flag is not None else False



# Environment variables `mlflow server` sets for its workers (mlflow.server's constants; importing
# mlflow.server would import the whole server, which imports this store).
SERVER_BACKEND_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"
SERVER_REGISTRY_STORE_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"
SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
SERVER_ARTIFACT_DESTINATION_ENV = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"
SERVER_DEFAULT_ARTIFACT_ROOT = "mlflow-artifacts:/"  # `mlflow server`'s --default-artifact-root


def in_server() -> bool:
    """Whether this process is a worker of ``mlflow server`` (which sets its store URIs in the environment)."""
    return bool(os.environ.get(SERVER_REGISTRY_STORE_ENV))


def _handlers():
    return importlib.import_module("mlflow.server.handlers")


@functools.lru_cache(maxsize=None)
def _proxy_internals() -> tuple[Callable, Callable, Callable]:
    h = "mlflow.server.handlers"
    found = (resolve(h, "_is_servable_proxied_run_artifact_root", params=("run_artifact_root",)),
             resolve(h, "_get_proxied_run_artifact_destination_path", params=("proxied_artifact_root",)),
             resolve(h, "_get_artifact_repo_mlflow_artifacts"))
    require()
    return found


def download_through_server_proxy(uri: str, dst: str) -> str | None:
    """Inside ``mlflow server``: the files of an ``mlflow-artifacts:`` URI the server serves, read
    through its own artifact destination into ``dst``; None for other URIs and outside a server."""
    if os.environ.get(SERVER_ARTIFACT_ROOT_ENV) is None:
        return None
    servable, destination_path, repository = _proxy_internals()
    if not servable(uri):
        return None
    return repository().download_artifacts(destination_path(uri), dst_path=dst)


def tolerate_half_imported_auth_module() -> None:
    """Inside ``mlflow server`` 3.18: its assistant API must not fail while another request imports
    ``mlflow.server.auth``.

    MLflow's bug, on any 3.18 server without the ``mlflow[auth]`` extra (Flask-WTF): every
    ``search_runs`` request imports ``mlflow.server.auth``, which takes seconds and then fails on the
    missing Flask-WTF; meanwhile the module sits half-imported in ``sys.modules``, and the assistant
    API's ``auth_plugin_active()`` reads ``is_auth_enabled`` off it: AttributeError ("partially
    initialized module … most likely due to a circular import"), a traceback in the server log and
    an HTTP 500 in the UI. The replacement reads the flag only once the module defines it (the auth
    app is never on before then: its factory imports the whole module first). Once per process.
    """
    if not in_server():
        return
    try:
        identity = importlib.import_module("mlflow.server.assistant.identity")
    except ImportError:  # MLflow before the assistant's identity checks: nothing to race
        return
    current = getattr(identity, "auth_plugin_active", None)
    if current is None or getattr(current, "_pgmodels", False):
        return

    def auth_plugin_active() -> bool:
        is_auth_enabled = getattr(sys.modules.get("mlflow.server.auth"), "is_auth_enabled", None)
        return bool(is_auth_enabled and is_auth_enabled())

    auth_plugin_active._pgmodels = True
    identity.auth_plugin_active = auth_plugin_active


def route_server_webhook_delivery(skip: Callable[[Any, Any], bool]) -> None:
    """Replace ``mlflow server``'s ``deliver_webhook`` (which its REST handlers call after each
    registry write) by one that does nothing for the events ``skip(event, store)`` names; once."""
    handlers = _handlers()
    original = resolve("mlflow.server.handlers", "deliver_webhook", feature=_WEBHOOKS, since=WEBHOOKS_SINCE)
    if not original or getattr(original, "_pgmodels", False):
        return

    def deliver_webhook(*, event, payload, store):
        if skip(event, store):
            return None
        return original(event=event, payload=payload, store=store)

    deliver_webhook._pgmodels = True
    handlers.deliver_webhook = deliver_webhook


def before_hard_delete_experiment(store: Any, hook: Callable[[str], None]) -> None:
    """Make MLflow's SQL tracking ``store`` call ``hook(experiment_id)`` before it permanently
    deletes an experiment (``mlflow gc``); MLflow has no public hook for it."""
    hard_delete = getattr(store, "_hard_delete_experiment", None)
    if hard_delete is None:
        raise incompatibility([f"{type(store).__name__}._hard_delete_experiment is missing "
                               "(mlflow gc would leave a deleted experiment's files behind)"])

    def hard_delete_with_hook(experiment_id):
        hook(experiment_id)
        hard_delete(experiment_id)

    store._hard_delete_experiment = hard_delete_with_hook


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
