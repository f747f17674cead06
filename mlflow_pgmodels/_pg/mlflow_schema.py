"""MLflow's own schema in a pgmodels database, shared by clients of several MLflow releases.

MLflow migrates its tables with Alembic, and a process of one release refuses a database another
release migrated. A database upgraded by a newer MLflow is refused here with what happened (the
revision, and the release that upgraded it when it was done through this package) and what to do;
``mlflow-pgmodels db upgrade`` says what it will change before it changes it (:func:`plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_STATE
from psycopg import sql

from mlflow_pgmodels import _mlflow

_MARK = "upgraded by MLflow "  # the comment on alembic_version naming the release that migrated last


def revision(conn: psycopg.Connection) -> str | None:
    """The Alembic revision of MLflow's tables (None: no MLflow tables yet)."""
    if conn.execute("SELECT to_regclass(%s)", (_mlflow.ALEMBIC_VERSION_TABLE,)).fetchone()[0] is None:
        return None
    row = conn.execute(sql.SQL("SELECT version_num FROM {}").format(
        sql.Identifier(_mlflow.ALEMBIC_VERSION_TABLE))).fetchone()
    return row[0] if row else None


def upgraded_by(conn: psycopg.Connection) -> str | None:
    """The MLflow release that migrated the tables to their current revision, where this package
    recorded it (an upgrade by MLflow alone leaves an older record, which does not count)."""
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       (_mlflow.ALEMBIC_VERSION_TABLE,)).fetchone()
    words = (row[0] or "").split() if row else []
    if len(words) < 7 or " ".join(words[:3]) != _MARK.strip() or words[4:6] != ["to", "revision"]:
        return None
    return words[3] if words[6] == revision(conn) else None


def record_upgrader(conn: psycopg.Connection) -> None:
    """Name the installed MLflow as the one that migrated the tables (a comment on alembic_version)."""
    current = revision(conn)
    if current is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            sql.Identifier(_mlflow.ALEMBIC_VERSION_TABLE),
            sql.Literal(f"{_MARK}{_mlflow.MLFLOW_VERSION} to revision {current} (mlflow-pgmodels)")))


def newer_mlflow_error(conn: psycopg.Connection, found: str) -> MlflowException:
    """The refusal of a database that a newer MLflow migrated to revision ``found``."""
    by = upgraded_by(conn)
    who = f"MLflow {by}" if by else "a newer MLflow"
    install = f'pip install "mlflow>={by}"' if by else "pip install -U mlflow"
    return MlflowException(
        f"This database's MLflow tables were upgraded by {who} (Alembic revision {found}, which MLflow "
        f"{_mlflow.MLFLOW_VERSION} does not know; its newest is {_mlflow.mlflow_schema_head()}). "
        f"MLflow {_mlflow.MLFLOW_VERSION} cannot use them: upgrade MLflow in this environment "
        f"({install}): every client of one database needs "
        "an MLflow that knows its schema. MLflow cannot downgrade a database: to stay on the older "
        "MLflow, restore a backup taken before the upgrade.", error_code=INVALID_STATE)


def older_schema_error(found: str) -> MlflowException:
    """The refusal of a database whose MLflow tables are older than the installed MLflow's."""
    return MlflowException(
        f"This database's MLflow tables are at Alembic revision {found}, older than MLflow "
        f"{_mlflow.MLFLOW_VERSION}'s ({_mlflow.mlflow_schema_head()}): run `mlflow-pgmodels db upgrade "
        "--uri <the pgmodels:// URI>` (add --dry-run first to see what it changes; take a backup). Clients "
        "of older MLflow releases are refused by the upgraded database until they upgrade MLflow too.",
        error_code=INVALID_STATE)


def refuse_newer(conn: psycopg.Connection) -> None:
    """Raise :func:`newer_mlflow_error` when a newer MLflow migrated this database."""
    found = revision(conn)
    if found is None:
        return
    try:
        _mlflow.mlflow_migrations(found)
    except LookupError:
        raise newer_mlflow_error(conn, found) from None


@dataclass
class Plan:
    """What ``db upgrade`` changes: MLflow's tables (Alembic revisions) and the pgmodels schema."""

    mlflow_from: str | None          # None: no MLflow tables yet
    mlflow_to: str
    migrations: list[tuple[str, str]]  # (revision, description), oldest first
    pgmodels_from: int | None          # None: no pgmodels schema yet
    pgmodels_to: int
    registry_only: bool

    @property
    def changes_anything(self) -> bool:
        mlflow = not self.registry_only and (self.mlflow_from is None or bool(self.migrations))
        return mlflow or self.pgmodels_from is None or self.pgmodels_from < self.pgmodels_to

    def describe(self) -> list[str]:
        """One line per part: what it is at, and what it will be."""
        if self.registry_only:
            mlflow = "MLflow's tables: left as they are (--registry-only)"
        elif self.mlflow_from is None:
            mlflow = f"MLflow's tables: none yet; create them at revision {self.mlflow_to} (MLflow {_mlflow.MLFLOW_VERSION})"
        elif not self.migrations:
            mlflow = f"MLflow's tables: at revision {self.mlflow_to}, current for MLflow {_mlflow.MLFLOW_VERSION}"
        else:
            steps = ", ".join(f"{rev} ({doc})" if doc else rev for rev, doc in self.migrations)
            mlflow = (f"MLflow's tables: from revision {self.mlflow_from} to {self.mlflow_to} (MLflow "
                      f"{_mlflow.MLFLOW_VERSION}): {len(self.migrations)} migration(s): {steps}. Clients of "
                      "older MLflow releases will then be refused until they upgrade MLflow")
        if self.pgmodels_from is None:
            ours = f"pgmodels schema: none yet; create version {self.pgmodels_to}"
        elif self.pgmodels_from >= self.pgmodels_to:
            ours = f"pgmodels schema: at version {self.pgmodels_from}, current"
        else:
            ours = f"pgmodels schema: from version {self.pgmodels_from} to {self.pgmodels_to}"
        return [mlflow, ours]


def plan(conn: psycopg.Connection, registry_only: bool = False) -> Plan:
    """What an upgrade of this database would change; refuses a database a newer MLflow migrated."""
    from mlflow_pgmodels._pg.schema import SCHEMA_VERSION, installed_version

    found = revision(conn)
    migrations: list[tuple[str, str]] = []
    if found is not None:
        try:
            migrations = _mlflow.mlflow_migrations(found)
        except LookupError:
            if not registry_only:
                raise newer_mlflow_error(conn, found) from None
    return Plan(found, _mlflow.mlflow_schema_head(), migrations, installed_version(conn), SCHEMA_VERSION,
                registry_only)
