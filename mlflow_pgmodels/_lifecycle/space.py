"""What the store costs on disk (``mlflow-pgmodels du``): per registered model and version, per
experiment, files shared by several owners (counted once), the history and webhook delivery
tables, and the whole database.

Every figure comes from PostgreSQL: ``pg_column_size`` of the stored values (for a TOASTed value,
its size on disk, read from its pointer without reading the value), ``pg_total_relation_size``
(heap, TOAST and indexes) and ``pg_database_size``. A blob (sql/pgmodels_artifacts.sql) referenced
by more than one artifact or version file is *shared*: its bytes are shown as shared wherever it
is referenced and counted once in the totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from mlflow_pgmodels._pg.db import read_connection
from mlflow_pgmodels._pg.schema import ensure_schema

# The tables shown on their own; everything else in the database is "other" (MLflow's tables, catalogs).
TABLES = ("models", "pgm_blob_pieces", "pgm_blobs", "pgm_artifacts", "pgm_version_files", "pgm_history",
          "pgm_webhook_deliveries")


def like_pattern(name: str) -> str:
    """A model name or pattern (``*`` = any run of characters, as the governance rules) as a LIKE pattern."""
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


@dataclass(slots=True)  # not frozen: 100,000 of them are made in a fraction of a second
class VersionSpace:
    """One version: ``bytes`` its own (the zip, or its files no one else references), ``shared_bytes``
    its files that other versions or artifacts reference too."""

    name: str
    version: int
    format: str
    size_bytes: int | None  # the model's size as registered (zip or files), not on disk
    bytes: int
    shared_bytes: int


@dataclass
class ModelSpace:
    name: str
    bytes: int = 0
    shared_bytes: int = 0
    versions: list[VersionSpace] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentSpace:
    """Run artifacts and LoggedModel files of one experiment (by the first segment of their key)."""

    experiment_id: str
    name: str | None
    runs_bytes: int
    logged_models_bytes: int
    shared_bytes: int


@dataclass
class Usage:
    """The whole answer of :func:`usage`."""

    database_bytes: int
    tables: dict[str, int]            # pg_total_relation_size of each of TABLES (0: absent)
    models: list[ModelSpace]
    experiments: list[ExperimentSpace]
    model_content_bytes: int          # sum of pg_column_size(model_binary), every row
    piece_content_bytes: int          # sum of pg_column_size(data) of every blob piece
    shared_bytes: int                 # blobs referenced more than once, counted once
    shared_blobs: int
    unreferenced_bytes: int           # blobs no one references (the orphan sweeper's work)

    def other_bytes(self) -> int:
        """The database minus the tables shown: MLflow's tables, other pgm_* tables, the catalogs."""
        return self.database_bytes - sum(self.tables.values())

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("models", "experiments")}
        out["other_bytes"] = self.other_bytes()
        out["models"] = [{"name": m.name, "bytes": m.bytes, "shared_bytes": m.shared_bytes,
                          "versions": [{"version": v.version, "format": v.format, "size_bytes": v.size_bytes,
                                        "bytes": v.bytes, "shared_bytes": v.shared_bytes} for v in m.versions]}
                         for m in self.models]
        out["experiments"] = [asdict(e) for e in self.experiments]
        return out


_VERSIONS = """
WITH vf AS (SELECT DISTINCT name, version, blob_id FROM pgm_version_files WHERE name LIKE %(pattern)s),
b AS (SELECT u.blob_id,
             (SELECT coalesce(sum(pg_column_size(p.data)), 0) FROM pgm_blob_pieces p WHERE p.blob_id = u.blob_id) AS bytes,
             (SELECT count(*) FROM pgm_artifacts a WHERE a.blob_id = u.blob_id)
             + (SELECT count(*) FROM pgm_version_files f WHERE f.blob_id = u.blob_id) AS refs
      FROM (SELECT DISTINCT blob_id FROM vf) u),
files AS (SELECT vf.name, vf.version, sum(b.bytes) FILTER (WHERE b.refs <= 1) AS own,
                 sum(b.bytes) FILTER (WHERE b.refs > 1) AS shared
          FROM vf JOIN b USING (blob_id) GROUP BY vf.name, vf.version)
SELECT m.name, m.version, coalesce(m.format, 'unknown'), m.size_bytes,
       (pg_column_size(m.model_binary) + coalesce(f.own, 0))::bigint, coalesce(f.shared, 0)::bigint
FROM models m LEFT JOIN files f ON f.name = m.name AND f.version = m.version
WHERE m.name LIKE %(pattern)s AND m.version > 0
"""

_EXPERIMENTS = """
WITH a AS (SELECT DISTINCT split_part(path, '/', 1) AS experiment_id,
                  split_part(path, '/', 2) = 'models' AS logged_model, blob_id FROM pgm_artifacts),
b AS (SELECT u.blob_id,
             (SELECT coalesce(sum(pg_column_size(p.data)), 0) FROM pgm_blob_pieces p WHERE p.blob_id = u.blob_id) AS bytes,
             (SELECT count(*) FROM pgm_artifacts x WHERE x.blob_id = u.blob_id)
             + (SELECT count(*) FROM pgm_version_files f WHERE f.blob_id = u.blob_id) AS refs
      FROM (SELECT DISTINCT blob_id FROM a) u)
SELECT a.experiment_id,
       coalesce(sum(b.bytes) FILTER (WHERE b.refs <= 1 AND NOT a.logged_model), 0)::bigint,
       coalesce(sum(b.bytes) FILTER (WHERE b.refs <= 1 AND a.logged_model), 0)::bigint,
       coalesce(sum(b.bytes) FILTER (WHERE b.refs > 1), 0)::bigint
FROM a JOIN b USING (blob_id) GROUP BY a.experiment_id ORDER BY a.experiment_id
"""

_BLOBS = """
WITH r AS (SELECT blob_id, count(*) AS n
           FROM (SELECT blob_id FROM pgm_artifacts UNION ALL SELECT blob_id FROM pgm_version_files) x GROUP BY blob_id),
b AS (SELECT blob_id, sum(pg_column_size(data)) AS bytes FROM pgm_blob_pieces GROUP BY blob_id)
SELECT coalesce(sum(b.bytes), 0)::bigint, coalesce(sum(b.bytes) FILTER (WHERE r.n > 1), 0)::bigint,
       count(*) FILTER (WHERE r.n > 1), coalesce(sum(b.bytes) FILTER (WHERE r.n IS NULL), 0)::bigint
FROM b LEFT JOIN r USING (blob_id)
"""


def usage(uri: str, name: str | None = None) -> Usage:
    """Bytes on disk of the store at ``uri``; ``name`` (a name or a pattern with ``*``) limits the
    models listed and leaves the experiments out. Reads only (a reader role may ask)."""
    ensure_schema(uri)
    pattern = like_pattern(name) if name else "%"
    with read_connection(uri, "measure the store's size") as conn:
        models = model_usage(conn, pattern)
        experiments = [] if name else _experiments(conn)
        sizes = conn.execute(
            "SELECT pg_database_size(current_database()), "
            + ", ".join("coalesce(pg_total_relation_size(to_regclass(%s)), 0)" for _ in TABLES)
            + ", (SELECT coalesce(sum(pg_column_size(model_binary)), 0)::bigint FROM models)", TABLES).fetchone()
        pieces, shared, shared_blobs, unreferenced = conn.execute(_BLOBS).fetchone()
    return Usage(database_bytes=sizes[0], tables=dict(zip(TABLES, sizes[1:-1])), models=models,
                 experiments=experiments, model_content_bytes=sizes[-1], piece_content_bytes=pieces,
                 shared_bytes=shared, shared_blobs=shared_blobs, unreferenced_bytes=unreferenced)


def model_usage(conn: psycopg.Connection, pattern: str) -> list[ModelSpace]:
    """The models whose names match the LIKE ``pattern``, each with its versions' bytes, by name."""
    models: dict[str, ModelSpace] = {}
    for row in conn.execute(_VERSIONS, {"pattern": pattern}).fetchall():
        v = VersionSpace(*row)
        model = models.get(v.name)
        if model is None:
            model = models[v.name] = ModelSpace(v.name)
        model.versions.append(v)
        model.bytes += v.bytes
        model.shared_bytes += v.shared_bytes
    for model in models.values():
        model.versions.sort(key=lambda v: v.version)
    return [models[name] for name in sorted(models)]


def _experiments(conn: psycopg.Connection) -> list[ExperimentSpace]:
    names: dict[str, str] = {}
    if conn.execute("SELECT to_regclass('experiments') IS NOT NULL").fetchone()[0]:
        try:
            with conn.transaction():
                names = dict(conn.execute("SELECT experiment_id::text, name FROM experiments").fetchall())
        except psycopg.errors.InsufficientPrivilege:
            pass
    return [ExperimentSpace(eid, names.get(eid), runs, logged, shared)
            for eid, runs, logged, shared in conn.execute(_EXPERIMENTS)]


def freed_bytes(conn: psycopg.Connection, versions: list[tuple[str, int]]) -> int:
    """Bytes that deleting ``versions`` (name, number) frees: their zips, and the blobs of their files
    that nothing else references (neither an artifact nor a version left)."""
    if not versions:
        return 0
    names, numbers = [n for n, _ in versions], [v for _, v in versions]
    return conn.execute("""
        WITH gone AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS g(name, version)),
        fb AS (SELECT DISTINCT f.blob_id FROM pgm_version_files f JOIN gone USING (name, version)),
        freed AS (SELECT fb.blob_id FROM fb
                  WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = fb.blob_id)
                    AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = fb.blob_id
                                    AND NOT EXISTS (SELECT 1 FROM gone g WHERE g.name = f.name AND g.version = f.version)))
        SELECT (coalesce((SELECT sum(pg_column_size(m.model_binary)) FROM models m JOIN gone USING (name, version)), 0)
                + coalesce((SELECT sum(pg_column_size(p.data)) FROM pgm_blob_pieces p JOIN freed USING (blob_id)), 0))::bigint
        """, (names, numbers)).fetchone()[0]


def human(n: int) -> str:
    """``n`` bytes for people: 1.5 GiB, 12.0 MiB, 900 B."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def describe(u: Usage, versions: bool) -> list[str]:
    """The lines ``mlflow-pgmodels du`` prints; ``versions``: each version under its model."""
    lines = [f"{'database':<26} {human(u.database_bytes):>10}  (pg_database_size)"]
    for table, size in u.tables.items():
        lines.append(f"  {table:<24} {human(size):>10}")
    lines.append(f"  {'other (MLflow, catalogs)':<24} {human(u.other_bytes()):>10}")
    lines.append(f"model zips in models: {human(u.model_content_bytes)}; file pieces: {human(u.piece_content_bytes)}, "
                 f"of which shared: {human(u.shared_bytes)} in {u.shared_blobs} files (counted once), "
                 f"unreferenced: {human(u.unreferenced_bytes)}")
    if u.models:
        lines.append("")
        lines.append(f"{'registered model':<40} {'versions':>8} {'own':>10} {'shared':>10}")
        for m in sorted(u.models, key=lambda m: (-m.bytes - m.shared_bytes, m.name)):
            lines.append(f"{m.name:<40} {len(m.versions):>8} {human(m.bytes):>10} {human(m.shared_bytes):>10}")
            if versions:
                for v in m.versions:
                    lines.append(f"  v{v.version:<8} {v.format:<37} {human(v.bytes):>10} {human(v.shared_bytes):>10}")
    if u.experiments:
        lines.append("")
        lines.append(f"{'experiment':<40} {'runs':>10} {'LoggedModels':>12} {'shared':>10}")
        for e in u.experiments:
            label = f"{e.experiment_id} {e.name}" if e.name else e.experiment_id
            lines.append(f"{label[:40]:<40} {human(e.runs_bytes):>10} {human(e.logged_models_bytes):>12} "
                         f"{human(e.shared_bytes):>10}")
    return lines
