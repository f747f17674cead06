"""Live reload for serving: a model URI that always holds the model it means now.

    with LiveModel("models:/churn@champion", uri="pgmodels://...") as live:
        live.predict(df)        # the version churn@champion points at, swapped when it moves

A background thread LISTENs on ``pgmodels_changes`` (the history triggers NOTIFY every recorded
change, made through MLflow or by plain SQL) on a connection of its own. On a change of the
model's name it resolves the URI again and, if it now means another version, loads that version
completely before swapping it in. A version that fails to load leaves the old one serving
(``last_error`` says why). When the connection is lost (a database restart) it reconnects with
backoff, LISTENs again, and only then resolves the URI once more: every change committed after
that LISTEN is notified, every change before it is seen by that resolve, so none is missed.
With a read standby (MLFLOW_PGMODELS_READ_URI) each resolve after a notification reads what the
primary had committed when the notification arrived: from the standby once it has replayed that
far (MLFLOW_PGMODELS_READ_WAIT at most), else from the primary.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import mlflow
import psycopg
from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.model_registry.model_version_stages import get_canonical_stage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE, ErrorCode

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels._cache.fetch import DatabaseSource
from mlflow_pgmodels._events.history import CHANNEL, parse_notification
from mlflow_pgmodels._pg.db import catch_up, require_session, translate_errors
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.uri import redact, to_conninfo
from mlflow_pgmodels._registry.store import PgModelsRegistryStore

_mlflow.require()

_log = logging.getLogger(__name__)
_WAKE_EVERY = 1.0      # seconds between checks for close() while waiting for notifications
_MAX_BACKOFF = 5.0     # seconds between reconnection attempts, at most
_UNAVAILABLE = ErrorCode.Name(TEMPORARILY_UNAVAILABLE)


class _Lost(Exception):
    """The database went away while resolving or loading: reconnect, then catch up."""


class LiveModel:
    """The pyfunc model a ``models:/`` URI means now, swapped within about a second of a change.

    ``model_uri``: ``models:/<name>/latest``, ``models:/<name>@<alias>`` or ``models:/<name>/<stage>``
    (a fixed ``models:/<name>/<version>`` works too, and is reloaded only if that version is
    replaced). ``uri``: the ``pgmodels://`` store (default: MLFLOW_REGISTRY_URI, then
    MLFLOW_TRACKING_URI). ``on_change(old_version, new_version)`` is called in the listener
    thread after each swap. The first load happens in the constructor and raises if it fails.
    """

    def __init__(self, model_uri: str, uri: str | None = None,
                 on_change: Callable[[int, int], Any] | None = None) -> None:
        self.model_uri = model_uri
        self.uri = resolve_uri(uri)
        self._target = _parse_target(model_uri)
        self.name = self._target.name
        self._on_change = on_change
        self._store = PgModelsRegistryStore(self.uri)
        self._source = DatabaseSource(self.uri)
        self._lock = threading.Lock()  # one resolve-and-load at a time
        self._stop = threading.Event()
        self._current: tuple[Any, ModelVersion] | None = None
        self.last_error: str | None = None
        self.connected = False
        self.swaps = 0
        conn = self._listen()  # before the first resolve: a change after it is notified
        try:
            self._refresh()
        except BaseException:
            conn.close()
            raise
        self._thread = threading.Thread(target=self._run, args=(conn,), name=f"pgmodels-live-{self.name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ serving
    @property
    def model(self) -> Any:
        """The loaded pyfunc model (``mlflow.pyfunc.PyFuncModel``) of the current version."""
        return self._current[0]

    @property
    def model_version(self) -> ModelVersion:
        """The registry's record of the current version."""
        return self._current[1]

    @property
    def version(self) -> int:
        """The number of the version being served."""
        return int(self._current[1].version)

    def current(self) -> tuple[Any, int]:
        """The model and its version number, taken together (a swap can come between two reads)."""
        model, mv = self._current
        return model, int(mv.version)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """``model.predict`` on the version current when the call starts."""
        return self.model.predict(data, params=params)

    def refresh(self) -> bool:
        """Resolve the URI now and swap if it means another version; True if it swapped."""
        try:
            return self._refresh()
        except _Lost:
            return False

    def close(self) -> None:
        """Stop listening (within about a second); the current model stays usable."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "LiveModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveModel({self.model_uri!r}, version={self.version}, store={redact(self.uri)!r})"

    # ------------------------------------------------------------------------------ internals
    def _resolve(self) -> ModelVersion:
        t = self._target
        if t.alias:
            return self._store.get_model_version_by_alias(t.name, t.alias)
        if t.version:
            return self._store.get_model_version(t.name, t.version)
        if t.stage:
            found = self._store.get_latest_versions(t.name, [get_canonical_stage(t.stage)])
            if not found:
                raise MlflowException.invalid_parameter_value(
                    f"Registered model '{t.name}' has no version in stage '{t.stage}'.")
            return max(found, key=lambda mv: int(mv.version))
        return self._store.get_model_version_by_alias(t.name, "latest")

    def _refresh(self) -> bool:
        with self._lock:
            mv = None
            try:
                # what the URI means on the primary now, even when reads go to a standby: the change
                # notified is another client's commit, which the standby may not have replayed yet
                catch_up(self.uri)
                mv = self._resolve()
                current = self._current[1] if self._current else None
                if current is not None and (current.name, str(current.version)) == (mv.name, str(mv.version)):
                    self.last_error = None
                    return False
                model = mlflow.pyfunc.load_model(self._source.materialize(mv.name, int(mv.version)))
            except MlflowException as e:
                if self._current is None:
                    raise
                self._failed(f"{self.model_uri}: kept version {self.version} ({e.message})")
                if e.error_code == _UNAVAILABLE:
                    raise _Lost() from None
                return False
            except Exception as e:  # the model's own loader failing: any exception type
                if self._current is None:
                    raise MlflowException(f"Cannot load {self.model_uri} (version {mv.version}): "
                                          f"{type(e).__name__}: {redact(str(e))}") from None
                self._failed(f"{self.model_uri}: version {mv.version} failed to load, kept version "
                             f"{self.version} ({type(e).__name__}: {redact(str(e))})")
                return False
            old = self.version if self._current else None
            self._current = (model, mv)
            self.last_error = None
            self.swaps += 1
        if old is not None:
            _log.info("%s: now serving version %s (was %s)", self.model_uri, mv.version, old)
            if self._on_change is not None:
                try:
                    self._on_change(old, int(mv.version))
                except Exception:
                    _log.exception("%s: the on_change callback failed", self.model_uri)
        return True

    def _failed(self, why: str) -> None:
        self.last_error = why
        _log.warning("%s", why)

    def _concerns(self, payload: str) -> bool:
        try:
            change = parse_notification(payload)
        except (ValueError, KeyError, TypeError):
            return True
        return isinstance(change, int) or self.name in change.names()

    def _listen(self) -> psycopg.Connection:
        with translate_errors(f"listen for changes of '{self.name}'", self.uri):
            conn = psycopg.connect(to_conninfo(self.uri), autocommit=True, connect_timeout=10,
                                   application_name="mlflow-pgmodels live", keepalives=1,
                                   keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
            try:
                require_session(conn, f"listen for changes of '{self.name}'", self.uri)
            except MlflowException:
                conn.close()
                raise
            conn.execute(f"LISTEN {CHANNEL}")
        self.connected = True
        return conn

    def _run(self, conn: psycopg.Connection | None) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._listen()
                    _log.info("%s: listening again; catching up", self.model_uri)
                    self._refresh()
                    delay = 0.1
                for notify in conn.notifies(timeout=_WAKE_EVERY):
                    if self._concerns(notify.payload):
                        self._refresh()
                    if self._stop.is_set():
                        break
            except Exception as e:  # connection lost, or anything unforeseen: start over, then catch up
                if not isinstance(e, (psycopg.Error, MlflowException, _Lost)):
                    _log.exception("%s: unexpected error while listening", self.model_uri)
                if conn is not None:
                    conn.close()
                    conn = None
                    self.connected = False
                    _log.warning("%s: lost the database connection (%s); reconnecting",
                                 self.model_uri, redact(str(getattr(e, "message", e))) or "connection lost")
                self._stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _MAX_BACKOFF)
        if conn is not None:
            conn.close()
        self.connected = False


def _parse_target(model_uri: str):
    """The parsed ``models:/`` URI of a registered model (not a LoggedModel id, which never changes)."""
    path = model_uri.partition(":")[2].strip("/")
    try:
        if "/" in path or "@" in path:
            return _mlflow.parse_model_uri(model_uri)
    except MlflowException:
        pass
    raise MlflowException(
        f"Not a registered model URI: {model_uri!r}. Use models:/<name>/latest, models:/<name>@<alias> "
        "or models:/<name>/<stage>.", error_code=INVALID_PARAMETER_VALUE)
