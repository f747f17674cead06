"""Connections to the model database, and PostgreSQL errors turned into MlflowExceptions."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
)

from mlflow_pgmodels.uri import redact, to_conninfo

_MAX_IDLE = 8


class _Pool:
    """A few idle connections per process, each checked with a round trip before reuse.

    The check is what lets a long-running process carry on by itself after the server restarts.
    """

    def __init__(self, conninfo: str) -> None:
        params = conninfo_to_dict(conninfo)
        self._kwargs = {"autocommit": True}
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            self._kwargs["connect_timeout"] = 10
        if "application_name" not in params and not os.environ.get("PGAPPNAME"):
            self._kwargs["application_name"] = "mlflow-pgmodels"
        self._conninfo = conninfo
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return psycopg.connect(self._conninfo, **self._kwargs)
            try:
                conn.execute("")
                return conn
            except psycopg.Error:
                conn.close()

    def put(self, conn: psycopg.Connection) -> None:
        reusable = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if reusable and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_pools: dict[tuple[int, str], _Pool] = {}
_pools_lock = threading.Lock()


def _pool(uri: str) -> _Pool:
    # keyed by pid: a forked child must never share its parent's sockets
    key = (os.getpid(), uri)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = _Pool(to_conninfo(uri))
        return pool


@contextlib.contextmanager
def connection(uri: str, what: str = "use the model database") -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection to the database of a ``pgmodels://`` URI.

    Use ``with conn.transaction():`` for anything that must be atomic. Errors come out as
    MlflowExceptions (see :func:`translate_errors`).
    """
    pool = _pool(uri)
    with translate_errors(what, uri):
        conn = pool.get()
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            pool.discard_idle()
            raise
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()  # mid-transaction (e.g. interrupted COPY): do not reuse
            raise
        finally:
            if not conn.closed:
                pool.put(conn)


@contextlib.contextmanager
def translate_errors(what: str, uri: str | None = None) -> Iterator[None]:
    """Turn psycopg errors into MlflowExceptions with MLflow error codes and no secrets."""
    try:
        yield
    except MlflowException:
        raise
    except pg_errors.InsufficientPrivilege as e:
        raise MlflowException(
            f"Permission denied: the database role cannot {what} ({_clean(e)}). "
            "Connect with a role that has the rights for it (see sql/roles.sql).",
            error_code=PERMISSION_DENIED,
        ) from None
    except pg_errors.UniqueViolation as e:
        raise MlflowException(f"Cannot {what}: it already exists ({_clean(e)})",
                              error_code=RESOURCE_ALREADY_EXISTS) from None
    except (pg_errors.DataError, pg_errors.IntegrityError, psycopg.DataError) as e:
        raise MlflowException(f"Cannot {what}: invalid value ({_clean(e)})",
                              error_code=INVALID_PARAMETER_VALUE) from None
    except psycopg.OperationalError as e:
        where = f" at {redact(uri)}" if uri else ""
        raise MlflowException(
            f"Cannot {what}: the model database{where} is not reachable or the connection was "
            f"lost ({_clean(e)}). Check that PostgreSQL is running and the URI is right; "
            "the call can be retried.",
            error_code=TEMPORARILY_UNAVAILABLE,
        ) from None
    except psycopg.Error as e:
        raise MlflowException(f"Cannot {what}: database error ({_clean(e)})",
                              error_code=INTERNAL_ERROR) from None


def _clean(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()))
