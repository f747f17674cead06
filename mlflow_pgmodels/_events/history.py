"""Reading the change history that the database records in ``pgm_history`` (sql/pgmodels_history.sql).

The rows are written by triggers, for changes made through MLflow and by plain SQL alike; this
module only reads them: a model's changes for ``mlflow-pgmodels history``, and the rows that
``NOTIFY pgmodels_changes`` announces, for live reload.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
)
from psycopg.rows import dict_row

from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.schema import (
    ensure_schema,
    read_as_found,
    seed_era_is_read_only,
)

CHANNEL = "pgmodels_changes"
# named as the fields of Change: rows are read by name
_COLUMNS = "id, at AS time, txid::text AS txid, db_user, mlflow_user, name, version, action, old, new"


@dataclass(frozen=True)
class Change:
    """One recorded change: a row of ``pgm_history``."""

    id: int
    time: dt.datetime
    txid: int
    db_user: str
    mlflow_user: str | None
    name: str
    version: int | None  # None: a change of the registered model itself
    action: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Change":
        """A change from a row of ``SELECT {_COLUMNS}`` read with ``dict_row``."""
        return cls(**{**row, "txid": int(row["txid"])})

    def names(self) -> set[str]:
        """The registered model names this change concerns (both names of a rename)."""
        found = {self.name}
        for side in (self.old, self.new):
            if self.action == "registered_model_renamed" and side and side.get("name"):
                found.add(side["name"])
        return found

    def to_json(self) -> dict[str, Any]:
        """The change as a JSON object (``time`` in ISO 8601 with its offset)."""
        return {"id": self.id, "time": self.time.isoformat(), "name": self.name, "version": self.version,
                "action": self.action, "old": self.old, "new": self.new, "db_user": self.db_user,
                "mlflow_user": self.mlflow_user, "txid": str(self.txid)}

    def describe(self) -> str:
        """One line for people: when, what, who."""
        what = f"{self.name} v{self.version}" if self.version is not None else self.name
        who = f"{self.mlflow_user} (db: {self.db_user})" if self.mlflow_user else f"db: {self.db_user}"
        detail = _detail(self.action, self.old or {}, self.new or {})
        return f"{self.time.isoformat(sep=' ', timespec='seconds')}  {what}  {self.action}" \
               f"{'  ' + detail if detail else ''}  [{who}]"


def _detail(action: str, old: dict, new: dict) -> str:
    if action.endswith("_tag_set"):
        before = f"{old.get('value')!r} → " if old else ""
        return f"{new.get('key')} = {before}{new.get('value')!r}"
    if action.endswith("_tag_deleted"):
        return f"{old.get('key')} (was {old.get('value')!r})"
    if action == "alias_set":
        return f"@{new.get('alias')}: " + (f"v{old.get('version')} → " if old else "") + f"v{new.get('version')}"
    if action == "alias_deleted":
        return f"@{old.get('alias')} (was v{old.get('version')})"
    if action == "model_version_stage_changed":
        return f"{_stage(old)} → {_stage(new)}"
    if action.endswith("_description_changed"):
        return f"{old.get('description')!r} → {new.get('description')!r}"
    if action == "registered_model_renamed":
        return f"{old.get('name')} → {new.get('name')}"
    if action == "model_version_created":
        return f"source {new.get('source')!r}" if new.get("source") else ""
    if action.startswith(("protection_", "write_rights_")):  # governance rules (docs/governance.md)
        rule = new or old
        return " ".join(f"{k}={v}" for k, v in sorted(rule.items()))
    return ""


def _stage(side: dict) -> str:
    return "Archived" if side.get("is_active") is False else str(side.get("stage"))


def parse_notification(payload: str) -> Change | int:
    """A ``pgmodels_changes`` payload: the change it carries, or only its id (long rows)."""
    if payload.isdigit():
        return int(payload)
    row = json.loads(payload)
    return Change(row["id"], dt.datetime.fromisoformat(row["at"]), int(row["txid"]), row["db_user"],
                  row["mlflow_user"], row["name"], row["version"], row["action"], row["old"], row["new"])


def get_change(conn: psycopg.Connection, change_id: int) -> Change | None:
    """The change with this id, or None."""
    row = conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM pgm_history WHERE id = %s", (change_id,)).fetchone()
    return Change.from_row(row) if row else None


def parse_since(conn: psycopg.Connection, text: str) -> dt.datetime:
    """A point in time: an ISO 8601 or PostgreSQL timestamp ('yesterday' too), or an interval
    meaning that long ago ('2 hours', '3d')."""
    for sql in ("SELECT %s::timestamptz", "SELECT now() - %s::interval"):
        try:
            with conn.transaction():
                return conn.execute(sql, (text,)).fetchone()[0]
        except psycopg.errors.DataError:
            continue
    raise MlflowException(
        f"--since {text!r} is neither a time nor a duration. Give an ISO 8601 time such as "
        "2026-12-01T09:30:00+01:00, a PostgreSQL timestamp such as '2026-12-01 09:30' or 'yesterday', "
        "or a duration such as '2 hours' (that long ago).", error_code=INVALID_PARAMETER_VALUE)


def model_history(uri: str, name: str, version: int | None = None, since: str | None = None) -> list[Change]:
    """The changes of the registered model ``name``, newest first, following its renames.

    ``version`` keeps that version's changes (model-level ones are left out); ``since`` keeps
    changes from then on (see :func:`parse_since`). A name with no recorded change at all is
    RESOURCE_DOES_NOT_EXIST.
    """
    ensure_schema(uri)
    if read_as_found(uri):
        raise seed_era_is_read_only(f"read the change history of '{name}' (none is recorded yet)", uri)
    with connection(uri, f"read the change history of '{name}'") as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM pgm_model_history(%s) ORDER BY at DESC, id DESC", (name,)).fetchall()
        if not rows:
            raise MlflowException(
                f"No change of registered model '{name}' is recorded in this database: check the name "
                "(names are case-sensitive). Changes are recorded from schema version 3 on.",
                error_code=RESOURCE_DOES_NOT_EXIST)
        start = parse_since(conn, since) if since is not None else None
    changes = [Change.from_row(r) for r in rows]
    return [c for c in changes
            if (version is None or c.version == version) and (start is None or c.time >= start)]
