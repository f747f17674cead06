"""Creating and upgrading the store's tables from the SQL files in ``sql/``."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import psycopg

from mlflow_pgmodels.db import connection

SCHEMA_VERSION = 3
# The files the store needs, in order; sql/create-tables.sql includes them for psql users.
SCHEMA_FILES = ("create_models_table.sql", "pgmodels_schema.sql", "pgmodels_history.sql",
                "pgmodels_webhooks.sql")
# Any constant works; it only has to be the same in every process that creates the schema.
ADVISORY_LOCK_KEY = 0x70676D6F64656C73  # "pgmodels"

_ready: set[str] = set()
_ready_lock = threading.Lock()


def sql_dir() -> Path:
    """The ``sql/`` directory: inside the installed package, or at the top of a source checkout."""
    installed = Path(__file__).with_name("sql")
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "sql"


def read_sql(filename: str) -> str:
    """The text of one file of ``sql/``, with psql's ``\\ir file`` includes expanded."""
    text = (sql_dir() / filename).read_text()
    return re.sub(r"^\\ir\s+(\S+)\s*$", lambda m: read_sql(m.group(1)), text, flags=re.MULTILINE)


def installed_version(conn: psycopg.Connection) -> int | None:
    """The schema version recorded in the database, or None before the first install."""
    if conn.execute("SELECT to_regclass('pgm_schema_info')").fetchone()[0] is None:
        return None
    return conn.execute("SELECT schema_version FROM pgm_schema_info").fetchone()[0]


def upgrade(conn: psycopg.Connection) -> int | None:
    """Create or upgrade the schema; safe to run at once from many processes.

    Returns the version that was there before (None: no schema), as seen under the lock.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        before = installed_version(conn)
        for filename in SCHEMA_FILES:
            conn.execute(read_sql(filename))
    return before


def ensure_schema(uri: str) -> None:
    """Create the schema on first use of a database (once per process and URI)."""
    if uri in _ready:
        return
    with _ready_lock:
        if uri in _ready:
            return
        with connection(uri, "create the pgmodels schema") as conn:
            version = installed_version(conn)
            if version is None or version < SCHEMA_VERSION:
                upgrade(conn)
        _ready.add(uri)
