"""The ``models`` table: the one writer of a version's row, and the checks that a registered model or
a version exists.

Every way of writing a version (versions.py) hands :data:`MODELS` the row as a dict, column →
value (a plain value travels as a parameter, an :class:`~mlflow_pgmodels._pg.sql_build.Expr` is
computed by the server). They differ only in which columns they give and where the row comes
from: VALUES, a SELECT (a copy of another row, a zip put together in the database) or a binary
COPY that streams ``model_binary``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import IO, Any

import psycopg
from psycopg import sql

from mlflow_pgmodels._pg.sql_build import NOW, Expr, set_clause, values_list
from mlflow_pgmodels._registry.entities import model_not_found, version_not_found
from mlflow_pgmodels._storage import model_binary

# The seed's columns (sql/create_models_table.sql) and the store's (sql/pgmodels_schema.sql).
COLUMNS = frozenset({
    "id", "name", "version", "model_type", "event", "model_binary", "created_at", "is_active",
    "stage", "description", "source", "run_id", "run_link", "model_id", "user_id", "last_updated_at",
    "format", "sha256", "size_bytes",
})


class ModelsTable:
    """Rows of ``models`` (one per version) and of ``pgm_registered_models`` as far as their existence goes."""

    name = "models"

    # ------------------------------------------------------------------ writing a version's row
    def insert(self, conn: psycopg.Connection, row: Mapping[str, Any], *, with_: Expr | None = None,
               select_from: Expr | None = None, returning: sql.Composable | None = None) -> psycopg.Cursor:
        """Insert one version's row: VALUES of ``row``, or with ``select_from`` (``FROM ...``) its
        values selected from there. ``with_`` is a leading WITH clause; the cursor is returned."""
        # Int4 marks an INTEGER column for COPY; as a parameter a plain int does
        columns, values, params = values_list({k: int(v) if isinstance(v, model_binary.Int4) else v
                                               for k, v in self._checked(row).items()})
        parts: list[sql.Composable] = []
        all_params: list = []
        if with_ is not None:
            parts.append(with_.sql)
            all_params += with_.params
        parts.append(sql.SQL("INSERT INTO {} ({})").format(sql.Identifier(self.name), columns))
        if select_from is None:
            parts.append(sql.SQL("VALUES ({})").format(values))
            all_params += params
        else:
            parts += [sql.SQL("SELECT {}").format(values), select_from.sql]
            all_params += [*params, *select_from.params]
        if returning is not None:
            parts += [sql.SQL("RETURNING"), returning]
        return conn.execute(sql.SQL(" ").join(parts), all_params)

    def insert_blob(self, conn: psycopg.Connection, row: Mapping[str, Any], blob: bytes) -> str:
        """Insert a row whose ``model_binary`` is ``blob`` (small: one parameter) with its SHA-256; the digest."""
        digest = hashlib.sha256(blob).hexdigest()
        self.insert(conn, {**row, "model_binary": blob, "sha256": digest})
        return digest

    def copy_blob(self, conn: psycopg.Connection, row: Mapping[str, Any], blob: IO[bytes], size: int,
                  progress: str | None = None) -> str:
        """Insert a row by binary COPY, ``model_binary`` streamed from ``blob`` in slices (any size
        PostgreSQL takes); the SHA-256 computed on the way goes into ``sha256`` and is returned.
        ``row`` holds str, bool, None, int or :class:`model_binary.Int4` values only."""
        return model_binary.copy_row_with_blob(conn, self.name, self._checked(row), "model_binary", blob, size,
                                               "sha256", progress=progress)

    def update(self, conn: psycopg.Connection, name: str, version: int, changes: Mapping[str, Any]) -> None:
        """Set ``changes`` on version ``version`` of ``name``; RESOURCE_DOES_NOT_EXIST when there is none."""
        sets, params = set_clause(self._checked(changes))
        query = sql.SQL("UPDATE {} SET {} WHERE name = %s AND version = %s").format(sql.Identifier(self.name), sets)
        if conn.execute(query, [*params, name, version]).rowcount == 0:
            raise version_not_found(name, version)

    def touch(self, conn: psycopg.Connection, name: str, version: int,
              changes: Mapping[str, Any] | None = None) -> None:
        """:meth:`update` with ``last_updated_at`` moved to now."""
        self.update(conn, name, version, {**(changes or {}), "last_updated_at": NOW})

    # ------------------------------------------------------------------ existence
    @staticmethod
    def version_exists(conn: psycopg.Connection, name: str, version: int) -> bool:
        return conn.execute("SELECT 1 FROM models WHERE name = %s AND version = %s",
                            (name, version)).fetchone() is not None

    def require_version(self, conn: psycopg.Connection, name: str, version: int) -> None:
        """RESOURCE_DOES_NOT_EXIST unless version ``version`` of ``name`` exists."""
        if not self.version_exists(conn, name, version):
            raise version_not_found(name, version)

    @staticmethod
    def registered_model_exists(conn: psycopg.Connection, name: str, lock: bool = False) -> bool:
        """Whether registered model ``name`` exists; ``lock``: its row locked FOR NO KEY UPDATE until the
        transaction ends (concurrent registrations, stage changes and aliases of the name wait)."""
        query = "SELECT 1 FROM pgm_registered_models WHERE name = %s" + (" FOR NO KEY UPDATE" if lock else "")
        return conn.execute(query, (name,)).fetchone() is not None

    def require_registered_model(self, conn: psycopg.Connection, name: str, lock: bool = False) -> None:
        """RESOURCE_DOES_NOT_EXIST unless registered model ``name`` exists (``lock``: as in :meth:`registered_model_exists`)."""
        if not self.registered_model_exists(conn, name, lock):
            raise model_not_found(name)

    @staticmethod
    def touch_registered_model(conn: psycopg.Connection, name: str) -> None:
        """Move registered model ``name``'s ``last_updated_at`` to now; RESOURCE_DOES_NOT_EXIST when there is none."""
        if conn.execute("UPDATE pgm_registered_models SET last_updated_at = now() WHERE name = %s",
                        (name,)).rowcount == 0:
            raise model_not_found(name)

    @staticmethod
    def _checked(row: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(row) - COLUMNS
        if unknown:
            raise ValueError(f"not columns of models: {sorted(unknown)}")
        return dict(row)


MODELS = ModelsTable()
