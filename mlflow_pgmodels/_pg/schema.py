"""Creating and upgrading the store's tables from the SQL files in ``sql/``."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE
from psycopg import errors as pg_errors

from mlflow_pgmodels import _settings
from mlflow_pgmodels._pg.db import connection, databases
from mlflow_pgmodels._pg.uri import redact

SCHEMA_VERSION = 5
# The files the store needs, in order; sql/create-tables.sql includes them for psql users.
SCHEMA_FILES = ("create_models_table.sql", "pgmodels_schema.sql", "pgmodels_history.sql",
                "pgmodels_webhooks.sql", "pgmodels_artifacts.sql", "pgmodels_governance.sql",
                "pgmodels_privileges.sql")
# Any constant works; it only has to be the same in every process that creates the schema.
ADVISORY_LOCK_KEY = 0x70676D6F64656C73  # "pgmodels"
LOCK_TIMEOUT_ENV = _settings.LOCK_TIMEOUT.name
# What the seed's columns event and model_type of a models row hold when a version names neither
# (the version tags of the same names: _registry/column_tags.py; webhook payloads leave them out).
SEED_COLUMN_DEFAULTS = {"event": "default", "model_type": "unspecified"}

_log = logging.getLogger(__name__)


def sql_dir() -> Path:
    """The ``sql/`` directory: inside the installed package, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "sql"
    return installed if installed.is_dir() else package.parent / "sql"


def read_sql(filename: str) -> str:
    """The text of one file of ``sql/``, with psql's ``\\ir file`` includes expanded."""
    text = (sql_dir() / filename).read_text()
    return re.sub(r"^\\ir\s+(\S+)\s*$", lambda m: read_sql(m.group(1)), text, flags=re.MULTILINE)


def installed_version(conn: psycopg.Connection) -> int | None:
    """The schema version recorded in the database, or None before the first install."""
    # A scan of pg_class, not to_regclass(): right after taking the advisory lock, name lookups can
    # still use the catalog cache from before the lock, missing a schema another process has just
    # committed (an advisory lock does not process invalidations as a table lock does).
    if not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname = 'pgm_schema_info' AND n.nspname = current_schema())").fetchone()[0]:
        return None
    return conn.execute("SELECT schema_version FROM pgm_schema_info").fetchone()[0]


@contextlib.contextmanager
def schema_lock(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction on ``conn`` holding the advisory lock of schema changes (ours and MLflow's).

    A waiter polls with ``pg_try_advisory_xact_lock`` between transactions instead of blocking in
    one: behind a transaction pooler (PgBouncer) a blocked waiter would hold a server connection
    that the lock's holder may need for MLflow's own connections, and with a small pool both wait
    for ever.
    """
    delay = 0.01
    while True:
        with conn.transaction():
            if conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[0]:
                yield
                return
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def upgrade(conn: psycopg.Connection) -> int | None:
    """Create or upgrade the schema; safe to run at once from many processes.

    Does nothing (and locks no table) when the recorded version is current. Otherwise waits at most
    ``MLFLOW_PGMODELS_LOCK_TIMEOUT`` seconds for each table lock, so that it never queues every
    reader of ``models`` behind a long transaction. Returns the version that was there before
    (None: no schema), as seen under the lock.
    """
    lock_timeout = _settings.LOCK_TIMEOUT.get()
    before = None
    try:
        with schema_lock(conn):
            before = installed_version(conn)
            if before is not None and before >= SCHEMA_VERSION:
                return before
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{round(lock_timeout * 1000)}ms",))
            for filename in SCHEMA_FILES:
                conn.execute(read_sql(filename))
    except pg_errors.LockNotAvailable:
        raise _lock_timeout_error(conn, before, lock_timeout) from None
    return before


def _lock_timeout_error(conn: psycopg.Connection, before: int | None, waited: float) -> MlflowException:
    holders = conn.execute(
        "SELECT a.pid, a.usename, a.application_name, a.state,"
        "       extract(epoch FROM now() - a.xact_start)::int, string_agg(DISTINCT c.relname, ', ')"
        " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.granted AND l.pid <> pg_backend_pid() AND c.relkind IN ('r', 'p')"
        "   AND c.relnamespace <> 'pg_catalog'::regnamespace"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " GROUP BY 1, 2, 3, 4, 5 ORDER BY 5 DESC NULLS LAST LIMIT 5").fetchall()
    held = "; ".join(f"pid {pid} of user {user}, application '{app}', {state} for {age} s, on {tables}"
                     for pid, user, app, state, age, tables in holders)
    return MlflowException(
        f"Cannot upgrade the pgmodels schema from version {before or 'absent'} to {SCHEMA_VERSION}: "
        f"a table it changes stayed locked by another session for {waited:g} s "
        f"(held by: {held or 'a session that has ended since'}). The upgrade gave up and changed nothing, "
        "rather than make every reader of the models table wait behind it. Run `mlflow-pgmodels db "
        "upgrade` when no long transaction is open on these tables (see pg_stat_activity), or end that "
        f"session (pg_terminate_backend), then retry; {LOCK_TIMEOUT_ENV} sets how long to wait.",
        error_code=TEMPORARILY_UNAVAILABLE)


def ensure_schema(uri: str) -> None:
    """Create or upgrade the schema on first use of a database (once per process and URI).

    A role that may not (no DDL rights, a hot standby) leaves it as it is: a seed-era ``models``
    table is then read as it is (:func:`read_as_found`), an older pgmodels schema as it stands;
    writes need the upgrade, which the table's owner runs (``mlflow-pgmodels db upgrade``).
    """
    database = databases.get(uri)
    if database.schema_ready:
        return
    with database.schema_setup:
        if database.schema_ready:
            return
        as_found = False
        with connection(uri, "create the pgmodels schema") as conn:
            version = installed_version(conn)
            if version is None or version < SCHEMA_VERSION:
                try:
                    upgrade(conn)
                except (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction) as e:
                    if version is None and not _seed_table_exists(conn):
                        raise
                    _read_as_it_is(uri, version, e)
                    as_found = version is None
        database.schema_checked(as_found)


def read_as_found(uri: str) -> bool:
    """Whether ``uri``'s database has the seed's ``models`` table only, which this role may not upgrade."""
    return databases.get(uri).as_found


def seed_era_is_read_only(what: str, uri: str) -> MlflowException:
    """The error for a change asked of a seed-era table read as it is."""
    return MlflowException(
        f"Cannot {what}: {redact(uri)} has the seed's models table without the pgmodels schema, and this "
        "connection may not add it (no DDL rights, or a hot standby), so the table is read as it is. "
        "Run `mlflow-pgmodels db upgrade` once as the table's owner on the primary.",
        error_code=PERMISSION_DENIED)


def _seed_table_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('models') IS NOT NULL").fetchone()[0]


def _read_as_it_is(uri: str, version: int | None, error: psycopg.Error) -> None:
    what = "the seed's models table" if version is None else f"pgmodels schema version {version}"
    _log.warning(
        "%s cannot be upgraded to pgmodels schema version %s by this connection (%s): reading it as it "
        "is. Versions load (by number and latest); registering, stages, tags and aliases need the "
        "upgrade: run `mlflow-pgmodels db upgrade` once as the table's owner, on the primary.",
        f"{what} in {redact(uri)}", SCHEMA_VERSION, " ".join(str(error).split()))
