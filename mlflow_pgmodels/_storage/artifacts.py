"""Artifact files in the database (``pgm_artifacts``): their keys, and writing, listing, reading, deleting them.

A file's key is its whole path below the database artifact root: ``1/<run id>/artifacts/plot.png``
for ``pgmodels-artifacts:/1/<run id>/artifacts`` and ``plot.png``. Its bytes are a blob of
blobs.py. Every path is checked before anything is written: no ``..``, no absolute paths, no
NUL bytes, at most ``MAX_KEY_BYTES``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from psycopg import sql

from mlflow_pgmodels._mlflow import EXPERIMENTS_TABLE
from mlflow_pgmodels._pg.db import connection, read_connection
from mlflow_pgmodels._pg.schema import ensure_schema
from mlflow_pgmodels._pg.uri import ARTIFACTS_SCHEME
from mlflow_pgmodels._storage import blobs

# A btree entry holds at most ~2.7 kB; 1024 bytes is far beyond any real artifact path.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class StoredFile:
    key: str
    blob_id: int
    size: int
    sha256: str


def root_key(artifact_uri: str) -> str:
    """The key prefix of a ``pgmodels-artifacts:/<path>`` URI ("" for the database root itself)."""
    prefix = ARTIFACTS_SCHEME + ":"
    if not artifact_uri.startswith(prefix):
        raise MlflowException(f"Not a database artifact URI: {artifact_uri!r}; expected {prefix}/<path>",
                              error_code=INVALID_PARAMETER_VALUE)
    rest = artifact_uri[len(prefix):]
    if rest.startswith("//"):  # pgmodels-artifacts://host/... would name a host: there is none
        raise MlflowException(f"Invalid database artifact URI {artifact_uri!r}: it names no host; "
                              f"expected {prefix}/<path>", error_code=INVALID_PARAMETER_VALUE)
    return relative(rest.lstrip("/"), artifact_uri)


def relative(path: str | None, what: str = "") -> str:
    """``path`` as a checked relative key part ('a/b'); INVALID_PARAMETER_VALUE for a path that
    could leave its root or that PostgreSQL cannot hold."""
    path = path or ""
    shown = what or path
    if "\x00" in path:
        raise _bad(shown, "it contains a NUL byte")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":" and path[0].isalpha()):
        raise _bad(shown, "it is absolute; artifact paths are relative to the run's or model's artifact root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(shown, "it contains '..'; artifact paths stay below their run's or model's artifact root")
    if any("\\" in p for p in parts):
        raise _bad(shown, "it contains a backslash; artifact paths separate directories with '/' "
                          "(rename a local file whose name contains '\\')")
    clean = "/".join(parts)
    try:
        clean.encode("utf-8")
    except UnicodeEncodeError:  # a local file name in another encoding, decoded by os.fsdecode
        raise _bad(shown.encode("utf-8", "backslashreplace").decode(), "it is not valid UTF-8") from None
    if len(clean.encode("utf-8")) > MAX_KEY_BYTES:
        raise _bad(shown[:80] + "…", f"it is longer than {MAX_KEY_BYTES} bytes")
    return clean


def destination(path: str | None) -> str:
    """``path`` to log files to, checked like :func:`relative` and, as MLflow's own repositories
    check it, written the one way it names its directory (no '.', '//' or trailing '/')."""
    clean = relative(path)
    if path and (path != clean or clean == ""):
        raise _bad(path, f"write it as {clean!r}" if clean else "name a directory below the run's or model's "
                   "artifact root, or no artifact path at all for the root itself")
    return clean


def join(root: str, rel: str | None) -> str:
    """The key of ``rel`` below ``root`` (both already checked or about to be)."""
    rel = relative(rel)
    key = f"{root}/{rel}" if root and rel else root or rel
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise _bad(key[:80] + "…", f"its full path is longer than {MAX_KEY_BYTES} bytes")
    return key


def under(key: str) -> tuple[str, str]:
    """The index range (lower bound included, upper excluded) of every key below ``key``."""
    if not key:
        return "", "\U0010ffff"
    return key + "/", key + "0"  # '0' follows '/' in byte order ("C" collation)


def _bad(path: str, why: str) -> MlflowException:
    return MlflowException(f"Invalid artifact path {path!r}: {why}. Nothing was read or written.",
                           error_code=INVALID_PARAMETER_VALUE)


def store(uri: str, files: Iterable[tuple[str, str]]) -> None:
    """Write local files as artifacts, ``files`` being (local path, key) pairs; all or nothing.

    A key that exists is overwritten (as on a file system); the old bytes go with it. A key below
    a stored file, or one that is a directory of stored files, is INVALID_PARAMETER_VALUE. A file
    whose bytes are already stored references them (blobs.store_files) and sends none.
    """
    files = sorted(files, key=lambda f: f[1])  # rows locked in key order: two uploads cannot deadlock
    local = [blobs.LocalFile(path, blobs.fingerprint(path), key) for path, key in files]  # before any lock
    ensure_schema(uri)  # a tracking store alone does not create pgm_artifacts
    with connection(uri, "log artifacts") as conn, conn.transaction():
        # the bytes first, the rows last: the rows' locks (sql/pgmodels_artifacts.sql) are held
        # only while the rows are written, not while the bytes travel; the path locks are taken
        # before existing blobs are claimed, as an overwrite that frees a blob takes them
        def lock_paths() -> None:
            conn.execute("SELECT count(pgm_lock_artifact_path(k)) FROM (SELECT k FROM unnest(%s::text[])"
                         " WITH ORDINALITY u(k, i) ORDER BY i) keys", ([key for _, key in files],))

        written = blobs.store_files(conn, local, _progress, before_claim=lock_paths)
        try:
            conn.cursor().executemany(
                "INSERT INTO pgm_artifacts (path, blob_id, size_bytes) VALUES (%s, %s, %s) ON CONFLICT (path)"
                " DO UPDATE SET blob_id = EXCLUDED.blob_id, size_bytes = EXCLUDED.size_bytes, created_at = now()",
                [(key, blob.id, blob.size) for (_, key), blob in zip(files, written)])
        except psycopg.Error as e:
            if e.sqlstate == PATH_CLASH:
                raise _clash(e.diag) from None
            raise


def _progress(f: blobs.LocalFile) -> str | None:
    return f"Uploading {os.path.basename(f.name)}" if f.print.size > 64 << 20 else None


# SQLSTATE of sql/pgmodels_artifacts.sql's refusal of a path that is both a file and a directory
PATH_CLASH = "PGM01"


def _clash(diag) -> MlflowException:
    shown = f"{ARTIFACTS_SCHEME}:/{diag.message_detail}"
    return MlflowException(
        f"Cannot store artifact {shown!r}: {diag.message_hint}, and a path cannot be both a file and a "
        "directory (as on a file system). Nothing was written. Log it under another name, or delete "
        "the other first.", error_code=INVALID_PARAMETER_VALUE)


def listing(uri: str, key: str) -> list[tuple[str, bool, int | None]]:
    """The entries right below ``key``: (name, is_dir, size of a file), sorted by name."""
    low, high = under(key)
    start = len(low) + 1
    with read_connection(uri, "list artifacts") as conn:
        rows = conn.execute(
            "SELECT split_part(substr(path, %s), '/', 1) AS entry, bool_or(strpos(substr(path, %s), '/') > 0),"
            " max(size_bytes) FROM pgm_artifacts WHERE path >= %s AND path < %s GROUP BY 1 ORDER BY 1",
            (start, start, low, high)).fetchall()
    return [(name, is_dir, None if is_dir else size) for name, is_dir, size in rows]


def stat(conn: psycopg.Connection, key: str) -> StoredFile | None:
    """The stored file at ``key``, or None."""
    row = conn.execute("SELECT a.blob_id, b.size_bytes, b.sha256 FROM pgm_artifacts a JOIN pgm_blobs b"
                       " ON b.id = a.blob_id WHERE a.path = %s", (key,)).fetchone()
    return StoredFile(key, *row) if row else None


def read(uri: str, key: str, out: IO[bytes], shown: str) -> None:
    """Write the artifact at ``key`` into ``out`` (verified); RESOURCE_DOES_NOT_EXIST if there is none.

    The row and the bytes come from one snapshot: a file overwritten meanwhile is read whole, as it was.
    """
    with read_connection(uri, f"read artifact {shown}") as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        found = stat(conn, key)
        if found is None:
            raise MlflowException(f"No artifact {shown} in the database", error_code=RESOURCE_DOES_NOT_EXIST)
        blobs.read(conn, found.blob_id, found.size, found.sha256, out, f"Artifact {shown}",
                    progress=f"Downloading {os.path.basename(key)}" if found.size > 64 << 20 else None)


def delete(uri: str, key: str) -> int:
    """Delete the artifact at ``key`` and everything below it; returns how many files went.

    Blobs that a registered version still uses stay (see sql/pgmodels_artifacts.sql).
    """
    if not key:
        raise MlflowException("Refusing to delete every artifact of the database: name a run's or "
                              "model's artifact path", error_code=INVALID_PARAMETER_VALUE)
    low, high = under(key)
    with connection(uri, "delete artifacts") as conn:
        return conn.execute("DELETE FROM pgm_artifacts WHERE path = %s OR (path >= %s AND path < %s)",
                            (key, low, high)).rowcount


def delete_experiment_files(uri: str, experiment_id: str, artifact_location: str | None) -> int:
    """Delete every file below a permanently deleted experiment's database root (its runs',
    LoggedModels' and traces'); returns how many went. Blobs left referenced by nothing go too.

    Files below the root of another experiment (one created with an artifact location inside
    this one's, however spelled: ``/1/shared/``, ``/1//shared``) stay, and so does everything
    when this root is the whole database.
    """
    if not (artifact_location or "").startswith(ARTIFACTS_SCHEME + ":"):
        return 0
    key = root_key(artifact_location)
    if not key:
        return 0
    low, high = under(key)
    with connection(uri, "delete an experiment's artifacts") as conn:
        with conn.transaction():
            others = conn.execute(sql.SQL("SELECT artifact_location FROM {experiments} WHERE experiment_id <> %s"
                                          " AND artifact_location LIKE %s").format(
                                              experiments=sql.Identifier(EXPERIMENTS_TABLE)),
                                  (int(experiment_id), ARTIFACTS_SCHEME + ":%")).fetchall()
            # normalised as this root is (root_key), so no spelling of an inner root escapes
            kept = sorted({k for k in map(_key_or_none, (loc for loc, in others))
                           if k is not None and _starts_below(k, key)})
            gone = conn.execute(
                "DELETE FROM pgm_artifacts a WHERE a.path >= %s AND a.path < %s AND NOT EXISTS ("
                " SELECT 1 FROM unnest(%s::text[]) k WHERE starts_with(a.path, k || '/'))",
                (low, high, kept)).rowcount
        sweep(conn)
    return gone


def _starts_below(other: str, key: str) -> bool:
    """Whether the key ``other`` is ``key`` itself or lies below it."""
    return other == key or other.startswith(key + "/")


def _key_or_none(location: str) -> str | None:
    """The key of a root, None for one that names no place in this database."""
    try:
        return root_key(location)
    except MlflowException:
        return None


def sweep(conn: psycopg.Connection) -> int:
    """Delete blobs referenced by nothing (none unless a release before schema 5 leaked them)."""
    return conn.execute("SELECT pgm_sweep_orphan_blobs()").fetchone()[0]


def sweep_orphans(uri: str) -> int:
    """Delete the blobs of the database at ``uri`` that nothing references; returns how many went."""
    with connection(uri, "delete unreferenced artifact blobs") as conn:
        return sweep(conn)


def orphan_count(uri: str) -> int:
    """How many blobs nothing references (0 unless something leaked them)."""
    with read_connection(uri, "count unreferenced artifact blobs") as conn:
        return conn.execute("SELECT pgm_orphan_blob_count()").fetchone()[0]
