"""Retention (``mlflow-pgmodels prune``): delete old model versions by rules a team writes, safely;
old webhook deliveries; and, for the owner only, old history.

A version is never pruned while it has an alias, is in ``Staging`` or ``Production``, is the latest
active version of its model, or carries the keep marker (the version tag :data:`KEEP_TAG`, set by a
deployment that uses it: ``mlflow-pgmodels keep models:/churn/3``). Deletes go through the registry
store (history, webhooks and governance triggers see them), one transaction per model, with the
rules checked again under row locks (:meth:`PgModelsRegistryStore.delete_model_versions_checked`);
only versions the plan listed can go, so a version registered after the plan never does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels import _settings
from mlflow_pgmodels._lifecycle import space
from mlflow_pgmodels._pg.db import connection, read_connection
from mlflow_pgmodels._pg.schema import ensure_schema

KEEP_TAG = "pgmodels.keep"
DELIVERY_RETENTION_ENV = _settings.DELIVERY_RETENTION.name


def duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a timedelta; anything else is INVALID_PARAMETER_VALUE."""
    parsed = _settings.parse_duration(text)
    if parsed is None:
        raise MlflowException(f"Invalid duration {text!r}: give a whole number and a unit, e.g. 30d, 12h, 90m, "
                              "45s or 2w.", INVALID_PARAMETER_VALUE)
    return parsed


@dataclass(frozen=True)
class Rules:
    """Which versions may go: all of the given rules must hold (and no protection)."""

    name: str = "*"                       # a model name or pattern ('churn*')
    keep_last: int | None = None          # keep the N highest version numbers of each model
    older_than: dt.timedelta | None = None
    archived_only: bool = False
    allow_empty: bool = False             # may a model lose every version?

    def check(self) -> None:
        if self.keep_last is None and self.older_than is None and not self.archived_only:
            raise MlflowException("prune needs a rule: --keep-last N, --older-than DURATION and/or --archived-only "
                                  "(without one, every unprotected version would qualify).", INVALID_PARAMETER_VALUE)
        if self.keep_last is not None and self.keep_last < 1:
            raise MlflowException(f"--keep-last {self.keep_last}: keep at least 1 version (the latest active one is "
                                  "kept anyway).", INVALID_PARAMETER_VALUE)
        if not self.name or not self.name.strip():
            raise MlflowException("--name: give a model name or a pattern such as 'churn*'.", INVALID_PARAMETER_VALUE)

    def params(self, pattern: str) -> dict:
        return {"pattern": pattern, "keep_last": self.keep_last, "older_than": self.older_than,
                "archived_only": self.archived_only, "keep_tag": KEEP_TAG}


# The versions the rules pick, with the total count of their model's versions; {names}: which models.
_CANDIDATES = """
WITH v AS (
    SELECT m.name, m.version, m.is_active, m.stage, m.created_at,
           row_number() OVER (PARTITION BY m.name ORDER BY m.version DESC) AS rank,
           max(m.version) FILTER (WHERE m.is_active IS NOT FALSE) OVER (PARTITION BY m.name) AS latest,
           count(*) OVER (PARTITION BY m.name) AS total
    FROM models m WHERE {names} AND m.version > 0)
SELECT v.name, v.version, v.total FROM v
WHERE (%(keep_last)s::int IS NULL OR v.rank > %(keep_last)s::int)
  AND (%(older_than)s::interval IS NULL OR v.created_at < (now() - %(older_than)s::interval)::timestamp)
  AND (NOT %(archived_only)s OR v.is_active IS FALSE)
  AND v.version IS DISTINCT FROM v.latest
  AND NOT (v.is_active IS NOT FALSE AND v.stage IN ('Staging', 'Production'))
  AND NOT EXISTS (SELECT 1 FROM pgm_aliases a WHERE a.name = v.name AND a.version = v.version)
  AND NOT EXISTS (SELECT 1 FROM pgm_model_version_tags t
                  WHERE t.name = v.name AND t.version = v.version AND t.key = %(keep_tag)s)
ORDER BY v.name, v.version
"""


@dataclass
class Plan:
    """What a prune deletes: versions per model (with du's bytes for each) and the bytes freed."""

    rules: Rules
    versions: dict[str, list[int]] = field(default_factory=dict)
    bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    freed_bytes: int = 0

    def count(self) -> int:
        return sum(len(v) for v in self.versions.values())

    def lines(self) -> list[str]:
        return [f"{name} v{version}\t{space.human(self.bytes.get((name, version), 0))}"
                for name, versions in self.versions.items() for version in versions]


def plan(uri: str, rules: Rules) -> Plan:
    """The versions ``rules`` would delete now, and the bytes that frees; nothing is changed.

    A rule that would leave a model without versions is INVALID_PARAMETER_VALUE unless
    ``rules.allow_empty``; a name (without ``*``) that is no registered model is RESOURCE_DOES_NOT_EXIST,
    a pattern matching none plans nothing (a nightly prune on a new store).
    """
    rules.check()
    ensure_schema(uri)
    pattern = space.like_pattern(rules.name)
    with read_connection(uri, "plan a prune") as conn:
        if "*" not in rules.name and not conn.execute(
                "SELECT 1 FROM pgm_registered_models WHERE name = %s", (rules.name,)).fetchone():
            raise MlflowException(f"There is no registered model {rules.name!r} (names are case-sensitive; '*' "
                                  "stands for any characters).", RESOURCE_DOES_NOT_EXIST)
        result = Plan(rules)
        emptied = []
        candidates = _CANDIDATES.format(names="m.name LIKE %(pattern)s")
        for name, version, total in conn.execute(candidates, rules.params(pattern)).fetchall():
            result.versions.setdefault(name, []).append(version)
            if len(result.versions[name]) == total:
                emptied.append(name)
        if emptied and not rules.allow_empty:
            raise MlflowException(
                f"These rules would delete every version of {len(emptied)} model(s) ({', '.join(emptied[:5])}"
                f"{', …' if len(emptied) > 5 else ''}): their versions are all archived and unprotected. Nothing "
                "was deleted. Narrow the rules (--keep-last 1 keeps the newest), or pass --allow-empty to leave "
                "those registered models without versions.", INVALID_PARAMETER_VALUE)
        pairs = [(n, v) for n, vs in result.versions.items() for v in vs]
        if pairs:
            for model in space.model_usage(conn, pattern):
                for v in model.versions:
                    if v.version in result.versions.get(v.name, ()):
                        result.bytes[v.name, v.version] = v.bytes
            result.freed_bytes = space.freed_bytes(conn, pairs)
    return result


@dataclass
class Outcome:
    """What :func:`execute` did, per model."""

    deleted: dict[str, list[int]] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)   # planned, but protected or changed meanwhile
    failed: dict[str, str] = field(default_factory=dict)        # model -> error message


def execute(uri: str, planned: Plan, store=None) -> Outcome:
    """Delete what ``planned`` lists and the rules still pick, model by model (one transaction each).

    A model whose versions changed since the plan loses only the planned versions the rules still
    pick, and never its last one unless ``allow_empty``. An error on one model (e.g. PERMISSION_DENIED
    from a governance rule) leaves that model as it was and the others are still pruned.
    """
    if store is None:
        from mlflow_pgmodels._registry.store import PgModelsRegistryStore

        store = PgModelsRegistryStore(uri, tracking_uri=uri)
    rules, outcome = planned.rules, Outcome()
    for name, versions in planned.versions.items():
        try:
            deleted = store.delete_model_versions_checked(name, _picker(rules, name, versions))
        except MlflowException as e:
            outcome.failed[name] = e.message
            continue
        if deleted:
            outcome.deleted[name] = deleted
        if len(deleted) < len(versions):
            outcome.kept[name] = sorted(set(versions) - set(deleted))
    return outcome


_ONE_MODEL = _CANDIDATES.format(names="m.name = %(pattern)s")  # an index probe, not a LIKE over every row


def _picker(rules: Rules, name: str, versions: list[int]) -> Callable[[psycopg.Connection], list[int]]:
    planned = set(versions)

    def pick(conn: psycopg.Connection) -> list[int]:
        rows = conn.execute(_ONE_MODEL, rules.params(name)).fetchall()
        chosen = [version for _, version, _ in rows if version in planned]
        if rows and len(chosen) == rows[0][2] and not rules.allow_empty:
            return []  # it would empty the model (versions were archived meanwhile)
        return chosen
    return pick


def delivery_retention() -> str | None:
    """How long finished webhook deliveries are kept when ``prune`` is not told (a duration; None: for ever)."""
    return _settings.DELIVERY_RETENTION.get()


def prune_deliveries(uri: str, older_than: dt.timedelta, dry_run: bool = False) -> int:
    """Delete (count, when ``dry_run``) the webhook deliveries finished (delivered, failed, skipped)
    longer than ``older_than`` ago; pending ones stay. Returns how many."""
    ensure_schema(uri)
    where = "status <> 'pending' AND created_at < now() - %s::interval"
    with connection(uri, "prune webhook deliveries") as conn, conn.transaction():
        if dry_run:
            return conn.execute(f"SELECT count(*) FROM pgm_webhook_deliveries WHERE {where}", (older_than,)).fetchone()[0]
        return conn.execute(f"DELETE FROM pgm_webhook_deliveries WHERE {where}", (older_than,)).rowcount


def prune_history(uri: str, older_than: dt.timedelta, dry_run: bool = False) -> int:
    """Delete (count, when ``dry_run``) the history rows older than ``older_than``: the owner of
    ``pgm_history`` only (anyone else: PERMISSION_DENIED). Rows a pending webhook delivery still
    needs stay. Returns how many."""
    ensure_schema(uri)
    where = ("h.at < now() - %s::interval AND NOT EXISTS (SELECT 1 FROM pgm_webhook_deliveries d"
             " WHERE d.history_id = h.id AND d.status = 'pending')")
    with connection(uri, "prune the change history") as conn, conn.transaction():
        owner = conn.execute("SELECT pg_has_role(current_user, relowner, 'MEMBER') FROM pg_class"
                             " WHERE oid = 'pgm_history'::regclass").fetchone()[0]
        if not owner:
            raise MlflowException(
                "Permission denied: only the owner of pgm_history may delete history (it is the audit trail, "
                "append-only for everyone else). Run this as the role that owns the tables.", PERMISSION_DENIED)
        if dry_run:
            return conn.execute(f"SELECT count(*) FROM pgm_history h WHERE {where}", (older_than,)).fetchone()[0]
        return conn.execute(f"DELETE FROM pgm_history h WHERE {where}", (older_than,)).rowcount


def keep(uri: str, model_uri: str, reason: str = "true", off: bool = False) -> tuple[str, int]:
    """Mark the version ``models:/NAME/N`` (or ``models:/NAME@ALIAS``, resolved now) as in use, so
    that no prune removes it (the version tag :data:`KEEP_TAG` = ``reason``); ``off`` removes the
    marker. Returns (name, version)."""
    from mlflow.entities.model_registry import ModelVersionTag

    from mlflow_pgmodels._registry.store import PgModelsRegistryStore

    match = re.fullmatch(r"models:/(.+?)(?:/(\d+)|@([^/@]+))", model_uri or "")
    if not match:
        raise MlflowException(f"Invalid model URI {model_uri!r}: give models:/NAME/VERSION or models:/NAME@ALIAS.",
                              INVALID_PARAMETER_VALUE)
    store = PgModelsRegistryStore(uri, tracking_uri=uri)
    name = match[1]
    version = int(match[2]) if match[2] else int(store.get_model_version_by_alias(name, match[3]).version)
    if off:
        store.delete_model_version_tag(name, version, KEEP_TAG)
    else:
        store.set_model_version_tag(name, version, ModelVersionTag(KEEP_TAG, reason or "true"))
    return name, version
