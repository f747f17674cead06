"""Connections for reading versions, whatever the schema the database has.

A database the store may upgrade is upgraded first (schema.ensure_schema). One it may not — the
seed's own ``models`` table, read by a role without DDL rights or through a hot standby — is read
as it is: each query's ``SELECT`` gets ``WITH`` definitions of the same names, so the store's
queries see the columns and tables the upgrade would add, empty or derived from the seed's columns
(stage ``None``, no tags, aliases or descriptions, registered models from the names in ``models``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg

from mlflow_pgmodels._pg import db
from mlflow_pgmodels._pg.schema import ensure_schema, read_as_found

# The upgrade's columns and tables over the seed's models table. A CTE's name hides the table of
# that name in its query; inside its own definition the name is still the table. NOT MATERIALIZED:
# a query using one of them more than once must not copy model_binary of every row.
SEED_ERA_TABLES = """models AS NOT MATERIALIZED (
    SELECT id, name, version, model_type, event, model_binary, created_at, is_active,
           'None'::varchar(20) AS stage, NULL::text AS description, NULL::text AS source,
           NULL::varchar(32) AS run_id, NULL::text AS run_link, NULL::varchar(64) AS model_id,
           NULL::varchar(255) AS user_id, created_at::timestamptz AS last_updated_at,
           NULL::varchar(16) AS format, NULL::char(64) AS sha256, NULL::bigint AS size_bytes, xmin
      FROM models),
  pgm_registered_models AS NOT MATERIALIZED (
    SELECT name, NULL::text AS description, min(created_at)::timestamptz AS created_at,
           max(created_at)::timestamptz AS last_updated_at, max(version) + 1 AS next_version
      FROM models GROUP BY name),
  pgm_registered_model_tags AS (SELECT NULL::varchar(255) AS name, NULL::varchar(250) AS key,
                                       NULL::text AS value WHERE false),
  pgm_model_version_tags AS (SELECT NULL::varchar(255) AS name, NULL::integer AS version,
                                    NULL::varchar(250) AS key, NULL::text AS value WHERE false),
  pgm_aliases AS (SELECT NULL::varchar(255) AS name, NULL::varchar(255) AS alias,
                         NULL::integer AS version WHERE false),
  pgm_version_files AS (SELECT NULL::varchar(255) AS name, NULL::integer AS version,
                               NULL::text AS path, NULL::bigint AS blob_id, NULL::bigint AS size_bytes WHERE false)"""

_SELECT = re.compile(r"\s*(SELECT\b|WITH\s+(RECURSIVE\s+)?)", re.IGNORECASE)


def over_seed_era(query: Any, conn: psycopg.Connection) -> Any:
    """``query`` reading the seed-era tables through :data:`SEED_ERA_TABLES`; other statements as they are."""
    text = query if isinstance(query, str) else query.as_string(conn)
    match = _SELECT.match(text)
    if match is None:
        return query
    if match.group(1).upper().startswith("SELECT"):
        return f"WITH {SEED_ERA_TABLES}\n{text}"
    return f"{match.group(0)}{SEED_ERA_TABLES},\n{text[match.end():]}"


class _SeedEraCursor:
    def __init__(self, cursor: psycopg.Cursor, conn: psycopg.Connection) -> None:
        self._cursor, self._conn = cursor, conn

    def execute(self, query: Any, params: Any = None, **kwargs):
        self._cursor.execute(over_seed_era(query, self._conn), params, **kwargs)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class SeedEraConnection:
    """A connection whose reads see a seed-era ``models`` table as the upgraded schema (read-only use)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def execute(self, query: Any, params: Any = None, **kwargs) -> psycopg.Cursor:
        return self._conn.execute(over_seed_era(query, self._conn), params, **kwargs)

    def cursor(self, *args, **kwargs) -> _SeedEraCursor:
        return _SeedEraCursor(self._conn.cursor(*args, **kwargs), self._conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextlib.contextmanager
def read_connection(uri: str, what: str = "read the model database") -> Iterator[psycopg.Connection]:
    """:func:`db.read_connection` on a database whose schema was upgraded if this role may, else
    one that reads a seed-era table as it is."""
    ensure_schema(uri)
    with db.read_connection(uri, what) as conn:
        yield SeedEraConnection(conn) if read_as_found(uri) else conn
