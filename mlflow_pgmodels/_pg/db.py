"""Connections to the model database: how each is made and pooled, and the front doors
(:func:`connection`, :func:`read_connection`) to the :class:`~mlflow_pgmodels._pg.database.Database`
of a URI in :data:`databases`. PostgreSQL errors become MlflowExceptions (``errors.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Iterator

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from mlflow_pgmodels import _settings
from mlflow_pgmodels._pg.database import Database, Databases
from mlflow_pgmodels._pg.errors import GOVERNANCE_PREFIX, translate_errors
from mlflow_pgmodels._pg.uri import redact, to_conninfo

__all__ = ["GOVERNANCE_PREFIX", "Database", "batched_transaction", "behind_transaction_pooler", "catch_up",
           "connect_kwargs", "connection", "databases", "for_poolers", "quiet_aborted_pipelines",
           "read_connection", "require_session", "translate_errors"]

POOL_MAX_SIZE_ENV = _settings.POOL_MAX_SIZE.name
POOL_TIMEOUT_ENV = _settings.POOL_TIMEOUT.name
READ_URI_ENV = _settings.READ_URI.name
READ_WAIT_ENV = _settings.READ_WAIT.name
# A dead peer is noticed after about idle + interval × count = 60 s instead of the kernel's ~15 min.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
_POOL_NAME = "mlflow-pgmodels"
# How often a waiting call looks whether the pool failed to connect (so it fails fast, not at the timeout).
_WAIT_SLICE = 0.2


def connect_kwargs(conninfo: str) -> dict:
    """What every connection gets unless the URI or libpq's environment says otherwise."""
    params = conninfo_to_dict(conninfo)
    kwargs: dict = {"autocommit": True}
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs["connect_timeout"] = 10
    if "application_name" not in params and not os.environ.get("PGAPPNAME"):
        kwargs["application_name"] = _POOL_NAME
    kwargs.update({k: v for k, v in KEEPALIVES.items() if k not in params})
    return kwargs


def behind_transaction_pooler(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` goes through a transaction pooler such as PgBouncer (not to one backend of its own).

    A pooler answers the startup with its own cancel key, so the backend pid the connection was
    told differs from the one that runs its statements.
    """
    return conn.info.backend_pid != conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def for_poolers(conn: psycopg.Connection) -> None:
    """Set up a new connection: no server-side prepared statements behind a transaction pooler.

    Each transaction may run on another backend there, where a statement prepared on the last
    one does not exist (PgBouncer before 1.21 does not carry them over).
    """
    if behind_transaction_pooler(conn):
        conn.prepare_threshold = None


def require_session(conn: psycopg.Connection, what: str, uri: str) -> None:
    """Refuse ``conn`` for what needs a session of its own (``LISTEN``) when it goes through a pooler."""
    if behind_transaction_pooler(conn):
        raise MlflowException(
            f"Cannot {what} through {redact(uri)}: it reaches PostgreSQL through a transaction-pooling "
            "connection pooler (such as PgBouncer with pool_mode = transaction), where LISTEN and its "
            "notifications do not stay on one connection. Give this a URI that connects to PostgreSQL "
            "directly (or through a session-pooling pool); see docs/scaling.md.",
            error_code=INVALID_PARAMETER_VALUE)


class _PooledConnection(psycopg.Connection):
    """A connection of one of our pools; tells its pool when connecting fails."""

    on_failure = staticmethod(lambda error: None)
    home: ConnectionPool | None = None  # the pool to give it back to

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs):
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as e:
            cls.on_failure(e)
            raise


class _Pool:
    """A psycopg_pool ConnectionPool that fails fast when the server cannot be reached.

    psycopg_pool retries connecting in the background and lets callers wait for the full
    timeout; a caller here gets the connection error as soon as an attempt fails, and waits the
    timeout only when every connection is in use.
    """

    def __init__(self, conninfo: str) -> None:
        self.max_size = _settings.POOL_MAX_SIZE.get()
        self.timeout = _settings.POOL_TIMEOUT.get()
        self._conninfo = conninfo
        self._failure: tuple[float, str] | None = None
        self._connection_class = type("PooledConnection", (_PooledConnection,),
                                      {"on_failure": staticmethod(self._failed)})
        self.pool = self._open()

    def _open(self) -> ConnectionPool:
        # min_size 0: no connection is opened before the first call, none kept open by a process
        # that stopped using the registry (idle ones close after max_idle), and no background
        # reconnection loop while the server is down. reconnect_timeout 0: a failed attempt is
        # given up at once, so the next call tries again instead of waiting for a backoff.
        return ConnectionPool(self._conninfo, connection_class=self._connection_class,
                              kwargs=connect_kwargs(self._conninfo), configure=for_poolers,
                              min_size=0, max_size=self.max_size,
                              timeout=self.timeout, reconnect_timeout=0, name=_POOL_NAME, open=True)

    def _failed(self, error: psycopg.OperationalError) -> None:
        self._failure = (time.monotonic(), str(error))

    def get(self, what: str, uri: str) -> psycopg.Connection:
        """A working connection: one the server has sent something to while it was idle (a server
        restart leaves dead ones, told so) is checked with a round trip first."""
        start = time.monotonic()
        deadline = start + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            pool = self.pool
            try:
                conn = pool.getconn(timeout=max(min(_WAIT_SLICE, remaining), 0.001))
            except PoolTimeout:
                failure = self._failure
                if failure and failure[0] >= start:
                    raise psycopg.OperationalError(failure[1]) from None
                if remaining <= _WAIT_SLICE:
                    raise self._exhausted(what, uri) from None
                continue
            conn.home = pool
            try:
                if _has_input(conn):
                    conn.execute("")
                return conn
            except psycopg.Error:
                conn.close()
                pool.putconn(conn)
                pool.check()  # the other idle ones are likely dead too

    def put(self, conn: psycopg.Connection) -> None:
        """Give a connection back; one left mid-transaction or broken is closed, not reused."""
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
        conn.home.putconn(conn)

    def close(self) -> None:
        """Close the pool: its idle connections now, those in use when they are given back."""
        self.pool.close()

    def _exhausted(self, what: str, uri: str) -> MlflowException:
        return MlflowException(
            f"Cannot {what}: the connection pool to {redact(uri)} is exhausted (all {self.max_size} "
            f"connections of this process were in use for {self.timeout:g} s). Raise {POOL_MAX_SIZE_ENV} "
            f"(now {self.max_size}; keep workers × it below the server's max_connections) or "
            f"{POOL_TIMEOUT_ENV} (seconds to wait, now {self.timeout:g}); the call can be retried.",
            error_code=TEMPORARILY_UNAVAILABLE)


def _has_input(conn: psycopg.Connection) -> bool:
    """Whether the server sent anything to this idle connection (or closed it): a pooled connection
    is idle between calls, so anything there is a termination notice or end of file. Costs no round
    trip, unlike a query on every checkout."""
    if conn.closed:
        return True
    fd = conn.pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


class _OurPoolNoise(logging.Filter):
    """Drops psycopg_pool's warnings about our pools: each failure reaches the caller as an MlflowException."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.levelno == logging.WARNING and any(
            isinstance(a, _PooledConnection) or a == _POOL_NAME for a in args))


def quiet_aborted_pipelines() -> None:
    """Drop psycopg's "error ignored terminating <Pipeline …>: pipeline aborted" warnings.

    When a statement in psycopg's pipeline mode fails (SQLAlchemy runs MLflow's executemany that
    way; a registration here sends its statements that way), the error is raised to the caller as
    usual and psycopg also warns that it ignored the follow-up error while closing the pipeline.
    Only that second, redundant line is dropped.
    """
    logger = logging.getLogger("psycopg")
    if not any(isinstance(f, _AbortedPipelineFilter) for f in logger.filters):
        logger.addFilter(_AbortedPipelineFilter())


class _AbortedPipelineFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("error ignored terminating <psycopg.Pipeline") and
                    message.endswith("pipeline aborted"))


def _open_pool(uri: str) -> _Pool:
    logger = logging.getLogger("psycopg.pool")
    if not any(isinstance(f, _OurPoolNoise) for f in logger.filters):
        logger.addFilter(_OurPoolNoise())
    quiet_aborted_pipelines()
    return _Pool(to_conninfo(uri))


# The Database (pool, WAL position seen, standby state, schema state) of each URI in this process.
databases = Databases(_open_pool)


@contextlib.contextmanager
def connection(uri: str, what: str = "use the model database") -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection to the database of a ``pgmodels://`` URI.

    Use ``with conn.transaction():`` for anything that must be atomic. Errors come out as
    MlflowExceptions (see :func:`translate_errors`).
    """
    standby = _settings.READ_URI.get()  # before the block runs: a bad value refuses it, not its end
    # with a standby, connections remember the WAL position they saw (see read_connection)
    with databases.get(uri).connection(what, bool(standby)) as conn:
        yield conn


@contextlib.contextmanager
def batched_transaction(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction on the autocommit connection ``conn`` whose statements go out in psycopg's
    pipeline mode: the client waits for the server only where it reads a result, and BEGIN and
    COMMIT share a round trip with the statements around them (``conn.transaction()`` waits for
    each). Rolled back if the block raises. No COPY inside (the pipeline mode does not allow it).
    """
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_connection(uri: str, what: str = "read the model database") -> Iterator[psycopg.Connection]:
    """A connection for reads: to ``MLFLOW_PGMODELS_READ_URI`` (a hot standby) when that is set,
    reachable and has replayed all this process has written or read, else to ``uri`` (the primary).

    Read-your-writes and monotonic reads within a process: the standby is used only once it has
    replayed up to the highest WAL position this process saw for ``uri``, waiting at most
    ``MLFLOW_PGMODELS_READ_WAIT`` seconds for it.
    """
    read_uri = _settings.READ_URI.get()
    standby = databases.get(read_uri) if read_uri and read_uri != uri else None
    with databases.get(uri).read_connection(standby, what, _read_wait, bool(read_uri)) as conn:
        yield conn


def _read_wait() -> float:
    """Seconds a read waits for the standby (read only when it is asked to wait)."""
    return _settings.READ_WAIT.get()


def catch_up(uri: str) -> None:
    """Make this process's later reads of ``uri`` see all the primary has committed by now, other
    clients' commits included: a standby serves them only once it has replayed that far (see
    :func:`read_connection`)."""
    if _settings.READ_URI.get():
        with connection(uri, "read the primary's WAL position"):
            pass  # connection() remembers the position it saw
