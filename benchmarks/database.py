"""Direct SQL on both stores' databases: physical baselines, bulk-made versions and read counters."""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import zipfile
from pathlib import Path

from benchmarks import MiB

_TOAST = "(SELECT reltoastrelid FROM pg_class WHERE oid = 'models'::regclass)"


def conninfo(uri: str) -> str:
    from mlflow_pgmodels._pg.uri import to_conninfo

    return to_conninfo(uri)


def evict_toast(conn) -> None:
    """Drop the TOAST blocks of ``models`` (where ``model_binary`` lives) from shared buffers.

    Afterwards every block of ``model_binary`` that anything reads is back in shared buffers
    (:func:`toast_blocks_read`): exact and immediate, whichever connection read it.
    """
    skipped = conn.execute(f"SELECT buffers_skipped FROM pg_buffercache_evict_relation({_TOAST}::regclass)"
                           ).fetchone()[0]
    if skipped:
        raise RuntimeError(f"{skipped} TOAST buffers of models are pinned: cannot count reads from a clean start")


def toast_blocks_read(conn) -> int:
    """How many TOAST blocks of ``models`` were read since :func:`evict_toast`."""
    return int(conn.execute(
        "SELECT count(*) FROM pg_buffercache WHERE reldatabase = (SELECT oid FROM pg_database"
        f" WHERE datname = current_database()) AND relfilenode = pg_relation_filenode({_TOAST})").fetchone()[0])


def chunk_reads(conn) -> int:
    """How many chunk reads of ``model_binary`` (the plugin's ``substring`` query) the server has run so far.

    pg_stat_statements counts each statement when it ends, in shared memory: exact, no delay.
    """
    return int(conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                            " WHERE query LIKE 'SELECT substring(model_binary FROM%'").fetchone()[0])


def raw_fetch(conn, name: str, version: str) -> bytes:
    """The whole model_binary in one binary-format fetch: the fastest read PostgreSQL offers."""
    return conn.cursor(binary=True).execute(
        "SELECT model_binary FROM models WHERE name = %s AND version = %s", (name, int(version))).fetchone()[0]


def raw_fetch_unzip(conn, name: str, version: str, dst: Path) -> None:
    zipfile.ZipFile(io.BytesIO(raw_fetch(conn, name, version))).extractall(dst)


def blob_mib(conn, name: str, version: str) -> float:
    """The stored size of a version, in MiB."""
    return conn.execute("SELECT size_bytes FROM models WHERE name = %s AND version = %s",
                        (name, int(version))).fetchone()[0] / MiB


def create_copy_table(conn) -> None:
    """The one-column table :func:`plain_copy` writes into, stored like ``model_binary``."""
    conn.execute("CREATE TABLE IF NOT EXISTS bench_copy (b bytea)")
    conn.execute("ALTER TABLE bench_copy ALTER COLUMN b SET STORAGE EXTERNAL")


def plain_copy(conn, path: str) -> None:
    """The bytes of ``path`` into a one-column table by binary COPY in 8 MiB slices."""
    size = os.path.getsize(path)
    with conn.transaction(), conn.cursor().copy("COPY bench_copy (b) FROM STDIN (FORMAT BINARY)") as copy, \
            open(path, "rb") as f:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!iih", 0, 0, 1) + struct.pack("!i", size))
        while chunk := f.read(8 * MiB):
            copy.write(chunk)
        copy.write(struct.pack("!h", -1))


def bulk_versions_pg(uri: str, name: str, upto: int) -> None:
    """Copy version 1 of ``name`` (a tiny model) into versions 2..``upto`` with one INSERT."""
    import psycopg

    with psycopg.connect(conninfo(uri), autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'models'"
            " AND column_name NOT IN ('id', 'version') ORDER BY ordinal_position")]
        have = conn.execute("SELECT max(version) FROM models WHERE name = %s", (name,)).fetchone()[0]
        listed = ", ".join(cols)
        # no autovacuum pass over the new rows' TOAST while the metadata queries are being measured
        conn.execute("ALTER TABLE models SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
        conn.execute(f"INSERT INTO models ({listed}, version) SELECT {listed}, g FROM models,"
                     " generate_series(%s::int, %s::int) g WHERE name = %s AND version = 1", (have + 1, upto, name))
        conn.execute("VACUUM ANALYZE models")


def bulk_versions_sqlite(db_path: Path, name: str, upto: int) -> None:
    """The same for stock MLflow's sqlite registry."""
    with sqlite3.connect(db_path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(model_versions)") if r[1] != "version"]
        have = conn.execute("SELECT max(version) FROM model_versions WHERE name = ?", (name,)).fetchone()[0]
        listed = ", ".join(cols)
        conn.execute(f"WITH RECURSIVE g(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM g WHERE v < ?)"
                     f" INSERT INTO model_versions ({listed}, version) SELECT {listed}, g.v FROM model_versions, g"
                     " WHERE name = ? AND version = 1", (have + 1, upto, name))
