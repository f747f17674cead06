"""What this process keeps about each database URI, owned by one :class:`Database` per URI.

A :class:`Database` holds the connection pool of its URI, the highest WAL position this process
wrote or read there, its state as a hot standby (when it is a read URI) and whether its schema was
checked. :data:`db.databases <mlflow_pgmodels._pg.db.databases>` (a :class:`Databases`) makes one
per process and URI on first use; ``close()`` releases one, ``close_all()`` every one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from mlflow_pgmodels._pg.errors import translate_errors
from mlflow_pgmodels._pg.uri import redact

STANDBY_RETRY = 5.0  # seconds before an unreachable read URI is tried again


class Pool(Protocol):
    """What a :class:`Database` needs of its connection pool."""

    def get(self, what: str, uri: str) -> psycopg.Connection: ...

    def put(self, conn: psycopg.Connection) -> None: ...

    def close(self) -> None: ...


class Database:
    """One database URI as this process sees it: its pool, the WAL position seen, its standby state,
    whether its schema is ready. Made by :class:`Databases`; :meth:`close` ends it.

    Thread safety, one rule: its fields are read and written only under ``self._lock``, held for a
    step that never waits on the server (making the pool object is one: it connects to nothing).
    The schema's first-use check is serialised by :attr:`schema_setup` instead, held across its
    queries; it is taken before ``self._lock``, never while holding it.
    """

    def __init__(self, uri: str, open_pool: Callable[[str], Pool]) -> None:
        self.uri = uri
        self.schema_setup = threading.Lock()  # one thread at a time checks or upgrades the schema
        self._open_pool = open_pool
        self._lock = threading.Lock()
        self._pool: Pool | None = None
        self._closed = False
        self._seen = 0  # the highest WAL position this process wrote or read here
        # As a standby: 0.0 usable (or not tried yet); None while it lags (a read then checks it
        # without waiting, so that a standby far behind costs one round trip, not the wait); else
        # time.monotonic() until which it is not tried again (it could not be reached).
        self._standby: float | None = 0.0
        self._schema_ready = False
        self._as_found = False  # a seed-era models table read as it is (see schema.ensure_schema)

    # ------------------------------------------------------------------ the pool and its lifetime
    @property
    def pool(self) -> Pool:
        """The connection pool of this URI, opened on first use (it opens no connection by itself)."""
        with self._lock:
            if self._closed:
                raise MlflowException(f"The connections to {redact(self.uri)} were closed in this process "
                                      "(databases.close_all()); ask databases.get() again.",
                                      error_code=INTERNAL_ERROR)
            if self._pool is None:
                self._pool = self._open_pool(self.uri)
            return self._pool

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ended this Database."""
        with self._lock:
            return self._closed

    def close(self) -> None:
        """Close the pool (connections in use close when given back); the Database is not used again."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.close()

    @contextlib.contextmanager
    def connection(self, what: str, track_position: bool) -> Iterator[psycopg.Connection]:
        """A pooled connection, its errors translated; ``track_position``: remember the WAL position it saw."""
        with translate_errors(what, self.uri):
            pool = self.pool
            conn = pool.get(what, self.uri)
            try:
                yield conn
                if track_position:
                    self.saw(wal_position(conn))
            finally:
                pool.put(conn)

    @contextlib.contextmanager
    def read_connection(self, standby: Database | None, what: str, wait: Callable[[], float],
                        track_position: bool) -> Iterator[psycopg.Connection]:
        """A connection to ``standby`` once it has replayed all this process saw here (waiting at
        most ``wait()`` seconds), else (unreachable, behind, or None) one of :meth:`connection`."""
        got = standby.caught_up(what, self.seen, wait) if standby is not None else None
        if got is None:
            with self.connection(what, track_position) as conn:
                yield conn
            return
        pool, conn = got
        with translate_errors(what, standby.uri):
            try:
                yield conn
                self.saw(wal_position(conn))
            finally:
                pool.put(conn)

    # ------------------------------------------------------------------ the WAL position seen
    @property
    def seen(self) -> int:
        """The highest WAL position this process wrote or read at this URI (0: none yet)."""
        with self._lock:
            return self._seen

    def saw(self, position: int) -> None:
        """Remember that this process wrote or read up to ``position``; a lower one changes nothing."""
        with self._lock:
            self._seen = max(self._seen, position)

    # ------------------------------------------------------------------ as a standby
    @property
    def standby_state(self) -> str:
        """``"usable"`` (or not tried yet), ``"lagging"`` or ``"unreachable"`` (not tried for a while)."""
        with self._lock:
            state = self._standby
        return "lagging" if state is None else "unreachable" if state and time.monotonic() < state else "usable"

    def mark_standby(self, state: str) -> None:
        """Record what a read found here: ``"usable"``, ``"lagging"`` or ``"unreachable"``."""
        if state == "usable":
            value: float | None = 0.0
        elif state == "lagging":
            value = None
        elif state == "unreachable":
            value = time.monotonic() + STANDBY_RETRY
        else:
            raise ValueError(f"not a standby state: {state!r}")
        with self._lock:
            self._standby = value

    def caught_up(self, what: str, position: int,
                  wait: Callable[[], float]) -> tuple[Pool, psycopg.Connection] | None:
        """A connection (and its pool) whose server has replayed up to ``position``; None if
        unreachable or behind.
        A standby found lagging last time is checked without waiting; one found unreachable is not
        tried again for :data:`STANDBY_RETRY` seconds."""
        with self._lock:
            state = self._standby  # one reading of it decides both whether to try and how long to wait
        if state and time.monotonic() < state:
            return None
        pool = self.pool  # a bad URI or pool setting is the caller's error, not an unreachable standby
        try:
            conn = pool.get(what, self.uri)
        except (psycopg.Error, MlflowException):
            self.mark_standby("unreachable")
            return None
        try:
            if _replayed(conn, position, 0.0 if state is None else wait()):
                self.mark_standby("usable")
                return pool, conn
            self.mark_standby("lagging")
        except psycopg.Error:
            self.mark_standby("unreachable")
        except BaseException:
            pool.put(conn)
            raise
        pool.put(conn)
        return None

    # ------------------------------------------------------------------ the schema
    @property
    def schema_ready(self) -> bool:
        """Whether this process has checked (and if it may, upgraded) the schema here."""
        with self._lock:
            return self._schema_ready

    @property
    def as_found(self) -> bool:
        """Whether the database has the seed's ``models`` table only, which this role may not upgrade."""
        with self._lock:
            return self._as_found

    def schema_checked(self, as_found: bool) -> None:
        """Record that the schema is ready; ``as_found``: a seed-era table is read as it is."""
        with self._lock:
            self._as_found = self._as_found or as_found
            self._schema_ready = True

    def forget_schema(self) -> None:
        """Check the schema again on next use (after someone changed it under this process)."""
        with self._lock:
            self._schema_ready = False


class Databases:
    """The :class:`Database` of each URI in this process. A forked child gets its own: it never
    uses (nor closes) its parent's, whose sockets it shares."""

    def __init__(self, open_pool: Callable[[str], Pool]) -> None:
        self._open_pool = open_pool
        self._lock = threading.Lock()
        # keyed by pid: a child's copy of its parent's entries stays referenced and unused, so
        # nothing in the child ever ends the parent's connections
        self._by_key: dict[tuple[int, str], Database] = {}

    def get(self, uri: str) -> Database:
        """The Database of ``uri`` in this process, made on first use."""
        key = (os.getpid(), uri)
        with self._lock:
            database = self._by_key.get(key)
            if database is None:
                database = self._by_key[key] = Database(uri, self._open_pool)
            return database

    def close_all(self) -> None:
        """Close every Database of this process; the next :meth:`get` makes a fresh one."""
        pid = os.getpid()
        with self._lock:
            mine = [key for key in self._by_key if key[0] == pid]
            closing = [self._by_key.pop(key) for key in mine]
        for database in closing:
            database.close()


def wal_position(conn: psycopg.Connection) -> int:
    """The WAL position of what ``conn`` sees: replayed on a standby, written on a primary."""
    lsn = conn.execute("SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                       " ELSE pg_current_wal_insert_lsn() END").fetchone()[0]
    high, _, low = (lsn or "0/0").partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _replayed(conn: psycopg.Connection, position: int, wait: float) -> bool:
    """Whether ``conn``'s server reaches ``position`` within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while wal_position(conn) < position:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
