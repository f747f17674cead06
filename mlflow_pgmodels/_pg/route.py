"""Which database, or which MLflow server: where the things a URI names are read and written.

Every entry point asks :data:`ROUTER` (commands and helpers through :func:`resolve_uri`); the
answer is a :class:`DatabaseRoute` (a ``pgmodels://`` URI), a :class:`ServerRoute` (an MLflow server's
``http(s)://`` address) or None (neither is known: the caller says what to configure).

What the URI names decides whose URIs count, first to last (:data:`ORDER`):

* ``pgmodels://…``, a store URI: that database.
* ``pgmodels:/<name>/<version>``, a registered version: the registry side first.
* ``pgmodels-artifacts:/…``, run artifacts and LoggedModel files: the tracking side first, then
  the registry side (registering a model from a run reads the run's files from the registry
  database), then the last tracking store this process built (``mlflow gc``), unless the request
  has a server to go through: a client that switched to a server never writes to a database it
  used before.
* anything else, or nothing: the store of a command or helper without ``--uri``/``uri=``:
  ``MLFLOW_REGISTRY_URI``, then ``MLFLOW_TRACKING_URI`` from the environment (never a server).

A database anywhere in the order wins over a server: a server is the way for clients that have
only its address. "Given" URIs are the ones MLflow passes with the request (an artifact
repository's ``tracking_uri`` / ``registry_uri``); "MLflow's" are ``mlflow.get_tracking_uri()``
and ``mlflow.get_registry_uri()``; the "server's" are the stores of the ``mlflow server`` this
process is a worker of.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from mlflow_pgmodels._mlflow import SERVER_BACKEND_STORE_ENV, SERVER_REGISTRY_STORE_ENV
from mlflow_pgmodels._pg.uri import ARTIFACTS_SCHEME, SCHEME, URI_HELP, is_pgmodels_uri, to_conninfo


@dataclass(frozen=True)
class DatabaseRoute:
    """The database at ``uri`` (``pgmodels://``), reached directly."""

    uri: str

    @property
    def conninfo(self) -> str:
        """libpq's connection URI (INVALID_PARAMETER_VALUE, without the password, if malformed)."""
        return to_conninfo(self.uri)


@dataclass(frozen=True)
class ServerRoute:
    """The MLflow server at ``url`` (``http(s)://``), reached through its REST API."""

    url: str


# What counts, first to last, for each kind of URI: database candidates, then server candidates.
# given_*: passed with the request; mlflow_*: the process's MLflow URIs; server_*: `mlflow
# server`'s stores; built: the last tracking store this process built; env_*: the environment.
ORDER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "version": (("given_registry", "server_registry", "mlflow_registry", "given_tracking"),
                ("given_registry", "given_tracking", "mlflow_registry")),
    "artifacts": (("given_tracking", "server_backend", "server_registry", "mlflow_tracking",
                   "given_registry", "mlflow_registry", "built"),
                  ("given_tracking", "mlflow_tracking")),
    "store": (("env_registry", "env_tracking"), ()),
}


class Router:
    """The process's answer to "which database, or which server?".

    Owns the process's context: the environment (``mlflow server`` sets its stores there) and the
    ``pgmodels://`` URI this process last built a tracking store for. Lives as long as the
    process (:data:`ROUTER`); a test may build its own with an environment of its choice.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._last_store: str | None = None
        self._lock = threading.Lock()

    # --- the tracking stores this process built ----------------------------------------------
    def remember_store(self, uri: str) -> None:
        """Note that this process built a tracking store for ``uri`` (``mlflow gc``, ``mlflow server``
        and friends then find the database of ``pgmodels-artifacts:`` roots without an environment)."""
        with self._lock:
            self._last_store = uri

    def remembered_store(self) -> str | None:
        """The last ``pgmodels://`` URI this process built a tracking store for, if any."""
        with self._lock:
            return self._last_store

    # --- the process ---------------------------------------------------------------------------
    def in_server(self) -> bool:
        """Whether this process is a worker of ``mlflow server`` (which sets its store URIs in the environment)."""
        return bool(self._environ.get(SERVER_REGISTRY_STORE_ENV))

    def server_database(self) -> str | None:
        """Inside an ``mlflow server``: the ``pgmodels://`` URI of its backend store, else of its
        registry store (``--registry-store-uri``), else None."""
        return _first_database(self._environ.get(SERVER_BACKEND_STORE_ENV),
                               self._environ.get(SERVER_REGISTRY_STORE_ENV))

    # --- the answer ----------------------------------------------------------------------------
    def route(self, uri: str | None, *, tracking_uri: str | None = None,
              registry_uri: str | None = None) -> DatabaseRoute | ServerRoute | None:
        """Where what ``uri`` names lives: a database, a server, or None when neither is known.

        ``tracking_uri`` / ``registry_uri``: the URIs given with the request (an artifact
        repository's); the rest comes from the process (see the module's docstring).
        """
        if is_pgmodels_uri(uri):
            return DatabaseRoute(uri)
        import mlflow  # here: this module loads while `import mlflow` runs

        env = self._environ
        candidates = {
            "given_tracking": lambda: tracking_uri,
            "given_registry": lambda: registry_uri,
            "mlflow_tracking": mlflow.get_tracking_uri,
            "mlflow_registry": mlflow.get_registry_uri,
            "server_backend": lambda: env.get(SERVER_BACKEND_STORE_ENV),
            "server_registry": lambda: env.get(SERVER_REGISTRY_STORE_ENV),
            "env_registry": lambda: env.get("MLFLOW_REGISTRY_URI"),
            "env_tracking": lambda: env.get("MLFLOW_TRACKING_URI"),
            # a client working through a server never falls back to a database this process used before
            "built": lambda: None if server else self.remembered_store(),
        }
        databases, servers = ORDER[kind(uri)]
        server = next((u for u in (candidates[name]() for name in servers) if _is_server(u)), None)
        database = next((u for u in (candidates[name]() for name in databases) if is_pgmodels_uri(u)), None)
        if database is not None:
            return DatabaseRoute(database)
        return ServerRoute(server) if server else None


def kind(uri: str | None) -> str:
    """What ``uri`` names, as a key of :data:`ORDER`: "version", "artifacts" or "store"."""
    if uri and uri.startswith(ARTIFACTS_SCHEME + ":"):
        return "artifacts"
    if uri and uri.startswith(SCHEME + ":") and not is_pgmodels_uri(uri):
        return "version"
    return "store"


def _first_database(*uris: str | None) -> str | None:
    return next((u for u in uris if is_pgmodels_uri(u)), None)


def _is_server(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("http://", "https://"))


ROUTER = Router()


def resolve_uri(uri: str | None) -> str:
    """The database of a command or helper: ``uri`` if it is ``pgmodels://``, else
    MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI if ``pgmodels://``."""
    found = ROUTER.route(uri if is_pgmodels_uri(uri) else None)
    if isinstance(found, DatabaseRoute):
        return found.uri
    raise MlflowException.invalid_parameter_value(
        f"No model database given: pass --uri {URI_HELP.split(';')[0]} or set "
        "MLFLOW_TRACKING_URI (or MLFLOW_REGISTRY_URI) to such a URI.")
