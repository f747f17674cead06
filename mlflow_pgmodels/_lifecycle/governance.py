"""Governance rules the database enforces (sql/pgmodels_governance.sql): read and change them, approve.

The rules are rows (``pgm_protections``, ``pgm_four_eyes``, ``pgm_write_rights``) that triggers read
at every write, whoever writes: changing them here takes effect at once for every client, running
``mlflow server`` processes included. Only an owner of the store (``pgmodels_owner``, the tables'
owner, a superuser) may change them; anyone else gets PERMISSION_DENIED. docs/governance.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from mlflow.entities.model_registry.model_version_stages import get_canonical_stage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels._pg.db import connection, read_connection
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.schema import ensure_schema
from mlflow_pgmodels._registry.entities import version_not_found

PROTECTABLE_STAGES = ("Staging", "Production", "Archived")
APPROVAL_TAG = "pgmodels.approved_by"
_MAX_NAME = 255


@dataclass(frozen=True)
class Protection:
    """A protected alias or stage of the models matching ``name_pattern``, and who may change it."""

    name_pattern: str
    kind: str  # 'alias' | 'stage'
    value: str
    role: str

    def describe(self) -> str:
        return f"{self.name_pattern}\t--{self.kind} {self.value}\t--role {self.role}"


def _pattern(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise MlflowException(f"Invalid model name or pattern {name!r}: give a registered model name, a pattern "
                              f"with '*' ('team-a-*') or '*' for every model (at most {_MAX_NAME} characters).",
                              INVALID_PARAMETER_VALUE)
    return name


def _target(alias: str | None, stage: str | None) -> tuple[str, str]:
    """(kind, value) of exactly one of ``alias`` / ``stage``, in the form the rules store."""
    if (alias is None) == (stage is None):
        raise MlflowException("Give exactly one of an alias (--alias champion) or a stage (--stage Production).",
                              INVALID_PARAMETER_VALUE)
    if alias is not None:
        if not alias.strip() or len(alias) > _MAX_NAME:
            raise MlflowException(f"Invalid alias {alias!r}.", INVALID_PARAMETER_VALUE)
        return "alias", "latest" if alias.lower() == "latest" else alias
    try:
        canonical = get_canonical_stage(stage)
    except MlflowException:
        canonical = None
    if canonical not in PROTECTABLE_STAGES:
        raise MlflowException(f"Cannot protect stage {stage!r}: protectable stages are "
                              f"{', '.join(PROTECTABLE_STAGES)}.", INVALID_PARAMETER_VALUE)
    return "stage", canonical


def _require_role(conn, role: str) -> None:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        raise MlflowException(f"There is no PostgreSQL role {role!r} in this database server: create it first "
                              "(CREATE ROLE ... NOLOGIN) or name an existing one.", RESOURCE_DOES_NOT_EXIST)


@contextlib.contextmanager
def _rules_connection(uri: str, what: str) -> Iterator[psycopg.Connection]:
    """A connection to change rules with; a refusal says who may change them."""
    try:
        with connection(uri, what) as conn:
            yield conn
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise MlflowException(f"Cannot {what}: only an owner of the store (a member of pgmodels_owner, the owner "
                              f"of the tables or a superuser) changes the governance rules ({e.message})",
                              PERMISSION_DENIED) from None


def protect(uri: str | None, name: str, role: str, alias: str | None = None, stage: str | None = None) -> Protection:
    """Protect ``alias`` or ``stage`` of model ``name`` (a pattern; ``'*'``: all) so that only members
    of ``role`` may set, move or remove it. Protecting it again names the new role."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    pattern, (kind, value) = _pattern(name), _target(alias, stage)
    with _rules_connection(uri, f"protect {kind} '{value}' of '{pattern}'") as conn:
        _require_role(conn, role)
        conn.execute("INSERT INTO pgm_protections (name_pattern, kind, value, role) VALUES (%s, %s, %s, %s)"
                     " ON CONFLICT (name_pattern, kind, value) DO UPDATE SET role = EXCLUDED.role,"
                     " created_at = now(), created_by = session_user", (pattern, kind, value, role))
    return Protection(pattern, kind, value, role)


def unprotect(uri: str | None, name: str, alias: str | None = None, stage: str | None = None) -> bool:
    """Remove the rule protecting ``alias`` or ``stage`` of ``name``; False if there was none."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    pattern, (kind, value) = _pattern(name), _target(alias, stage)
    with _rules_connection(uri, f"unprotect {kind} '{value}' of '{pattern}'") as conn:
        return conn.execute("DELETE FROM pgm_protections WHERE name_pattern = %s AND kind = %s AND value = %s",
                            (pattern, kind, value)).rowcount > 0


def protections(uri: str | None) -> list[Protection]:
    """Every protection rule, by pattern."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with read_connection(uri, "read the protection rules") as conn:
        rows = conn.execute("SELECT name_pattern, kind, value, role FROM pgm_protections"
                            " ORDER BY name_pattern, kind, value").fetchall()
    return [Protection(*row) for row in rows]


def set_four_eyes(uri: str | None, name: str, on: bool) -> bool:
    """Turn four-eyes promotion on or off for ``name`` (a pattern); False if nothing changed."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    pattern = _pattern(name)
    with _rules_connection(uri, f"turn four-eyes {'on' if on else 'off'} for '{pattern}'") as conn:
        if on:
            return conn.execute("INSERT INTO pgm_four_eyes (name_pattern) VALUES (%s) ON CONFLICT DO NOTHING",
                                (pattern,)).rowcount > 0
        return conn.execute("DELETE FROM pgm_four_eyes WHERE name_pattern = %s", (pattern,)).rowcount > 0


def four_eyes(uri: str | None) -> list[str]:
    """The model names and patterns with four-eyes promotion on."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with read_connection(uri, "read the four-eyes rules") as conn:
        return [r[0] for r in conn.execute("SELECT name_pattern FROM pgm_four_eyes ORDER BY 1").fetchall()]


def approve(uri: str | None, name: str, version: int) -> list[str]:
    """Approve ``version`` of ``name`` as the database user of ``uri``; returns everyone who approved it.

    Refused (PERMISSION_DENIED) for the database user who registered the version. The approval
    shows as the version tag ``pgmodels.approved_by``, in the history and to webhooks.
    """
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with connection(uri, f"approve model '{name}' version {version}") as conn, conn.transaction():
        if not conn.execute("SELECT 1 FROM models WHERE name = %s AND version = %s", (name, int(version))).fetchone():
            raise version_not_found(name, int(version))
        conn.execute("INSERT INTO pgm_approvals (name, version) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (name, int(version)))
        return [r[0] for r in conn.execute("SELECT approved_by FROM pgm_approvals WHERE name = %s AND version = %s"
                                           " ORDER BY approved_at, approved_by", (name, int(version)))]


def grant_write_rights(uri: str | None, role: str, pattern: str) -> None:
    """Let members of ``role`` write the models matching ``pattern``; a role with any such rights
    writes those models only."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with _rules_connection(uri, f"grant write rights on '{pattern}' to role '{role}'") as conn:
        _require_role(conn, role)
        conn.execute("INSERT INTO pgm_write_rights (role, name_pattern) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (role, _pattern(pattern)))


def revoke_write_rights(uri: str | None, role: str, pattern: str | None = None) -> int:
    """Take back the write rights of ``role`` on ``pattern`` (None: all its patterns, so that it is not
    limited any more); returns how many were removed."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with _rules_connection(uri, f"revoke write rights of role '{role}'") as conn:
        return conn.execute("DELETE FROM pgm_write_rights WHERE role = %s AND (%s::text IS NULL OR name_pattern = %s)",
                            (role, pattern, pattern)).rowcount


def write_rights(uri: str | None) -> list[tuple[str, str]]:
    """Every (role, pattern) of per-model write rights."""
    uri = resolve_uri(uri)
    ensure_schema(uri)
    with read_connection(uri, "read the write rights") as conn:
        return [tuple(r) for r in conn.execute("SELECT role, name_pattern FROM pgm_write_rights ORDER BY 1, 2")]
