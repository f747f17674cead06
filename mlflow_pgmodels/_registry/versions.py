"""Writing a version: the ways a row of ``models`` is born (its SQL is built by models_table.py).

The ways, one function each: :func:`upload` (the model's files, streamed by binary COPY; past
PostgreSQL's 1 GB value limit as files in pieces), :func:`from_artifacts` (a LoggedModel or run
whose files are in the database: assembled inside the database, no byte travels), :func:`copy`
(a version of this store, copied inside the database), :func:`without_files` (a prompt),
:func:`import_numbered` (a version of another registry, keeping its number) and :func:`transfer`
(a version of another pgmodels database, streamed from there: promote.py).

A version is stored one of two ways. ``format = 'mlflow-zip'``: ``model_binary`` is the zip of
the model directory, as the seed's table always held. ``format = 'files'`` (a model whose zip
would pass 1 GB): the files are blobs of blobs.py listed in ``pgm_version_files``, and
``model_binary`` holds only :data:`FILES_MARKER`, a line of text that no zip or pickle reader
takes for a model.

All share one transaction: the row is written under a placeholder number (minus the backend's
pid: unique among open transactions, invisible to everyone else), then the registered model's
row is locked, the next number taken and the row renumbered — the UPDATE leaves the TOASTed
bytes where they are. So the lock that serializes registrations of one name is held for
milliseconds whatever the size, and numbers stay gap-free and never reused: a registration
that fails or is killed rolls back its row and its number together.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import psycopg
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
from mlflow.protos.databricks_pb2 import DATA_LOSS, TEMPORARILY_UNAVAILABLE
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from mlflow_pgmodels._pg.db import batched_transaction, connection
from mlflow_pgmodels._pg.sql_build import Expr, column
from mlflow_pgmodels._registry import actor, column_tags, search
from mlflow_pgmodels._registry.entities import MV_COLUMNS, model_not_found, model_version, version_not_found
from mlflow_pgmodels._registry.models_table import MODELS
from mlflow_pgmodels._storage import archive, artifacts, blobs, model_binary, stored_zip

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass
class NewVersion:
    """What a new version is registered with (already validated)."""

    name: str
    source: str = ""
    run_id: str | None = None
    run_link: str | None = None
    description: str | None = None
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # ``event`` / ``model_type`` included

    def row(self, version: int, columns: dict[str, str]) -> dict:
        """The values of the row's metadata columns."""
        return {"name": self.name, "version": model_binary.Int4(version), "model_type": columns["model_type"],
                "event": columns["event"], "description": self.description, "source": self.source,
                "run_id": self.run_id, "run_link": self.run_link, "model_id": self.model_id}


@dataclass(frozen=True)
class ImportedState:
    """What a version imported from another registry keeps besides its number."""

    active: bool
    stage: str
    user_id: str | None
    created_ms: int | None


FILES_MARKER = ("pgmodels: this model version is stored as files in pgm_version_files, not in model_binary "
                "(its zip would pass PostgreSQL's 1 GB value limit). Load it with "
                "mlflow.pyfunc.load_model('models:/<name>/<version>') or mlflow_pgmodels.load_model_from_db.\n")


def upload(uri: str, new: NewVersion, model_dir: str, prepare: Callable | None = None) -> ModelVersion:
    """Register the MLflow model directory ``model_dir`` as the next version.

    One zip in ``model_binary`` when it fits in a PostgreSQL value, else the files in pieces.
    ``prepare(conn)`` runs first in the registration's transaction (see :func:`transfer`).
    """
    with _writer_for(new, model_dir) as write:
        return _register(uri, new, write, prepare=prepare)


def from_artifacts(uri: str, new: NewVersion, key: str) -> ModelVersion | None:
    """Register the model whose files are the artifacts below ``key`` (pgm_artifacts); no byte leaves
    the database. None when there are no artifacts below ``key`` (the caller fetches the files)."""
    def write(conn, version: int, columns: dict[str, str]) -> None:
        rows = [r for r in _locked_files(conn, key, new.source) if r[0] not in archive.SKIPPED]
        if not rows:
            raise _NoArtifacts()
        if not any(r[0] == "MLmodel" for r in rows):
            raise MlflowException.invalid_parameter_value(
                f"The source {new.source!r} is not an MLflow model (no MLmodel file at its root). Register "
                "a directory written by mlflow.<flavor>.log_model or save_model.")
        members = [stored_zip.Member(path, size, crc) for path, _, size, crc, _ in rows]
        if stored_zip.zip_size(members) > model_binary.MAX_BLOB_BYTES or len(members) > stored_zip.MAX_ENTRIES:
            _insert_files(conn, new, version, columns, [(path, blob_id, size, sha) for path, blob_id, size, _, sha in rows])
            return
        _insert_assembled_zip(conn, new, version, columns, members, [r[1] for r in rows])

    try:
        return _register(uri, new, write)
    except _NoArtifacts:
        return None


_LOCK_ATTEMPTS = 20


def _locked_files(conn, key: str, source: str) -> list[tuple[str, int, int, int, str]]:
    """The files below ``key`` as (path, blob id, size, CRC-32, SHA-256), their rows share-locked
    until the caller's transaction ends: neither overwritten nor deleted meanwhile.

    A row another transaction is changing is waited for and read as it committed; the locked set
    is then compared with a fresh read, so a file that appeared or went meanwhile is not missed:
    the version gets the files exactly as they were at one moment.
    """
    low, high = artifacts.under(key)
    listing = ("SELECT substr(path, %s), blob_id FROM pgm_artifacts WHERE path >= %s AND path < %s"
               " ORDER BY path")
    params = (len(low) + 1, low, high)
    for _ in range(_LOCK_ATTEMPTS):
        locked = conn.execute(listing + " FOR SHARE", params).fetchall()
        if conn.execute(listing, params).fetchall() == locked:
            break
    else:
        raise MlflowException(f"The files of {source!r} kept changing while they were being registered "
                              "(a concurrent upload to the same path); nothing was registered. Try again once "
                              "the upload is done.", error_code=TEMPORARILY_UNAVAILABLE)
    info = dict((r[0], r[1:]) for r in conn.execute(
        "SELECT id, size_bytes, crc32, sha256 FROM pgm_blobs WHERE id = ANY(%s)", ([b for _, b in locked],)))
    return [(path, blob_id, *info[blob_id]) for path, blob_id in locked]


class _NoArtifacts(Exception):
    """No artifact below the key: the source's files are elsewhere."""


# Whether the pieces of blob b (joined to f.blob_id) still have the SHA-256 recorded at upload;
# one file's bytes in memory at a time.
_INTACT = ("encode(sha256(coalesce((SELECT string_agg(p.data, ''::bytea ORDER BY p.seq) FROM pgm_blob_pieces p"
           " WHERE p.blob_id = f.blob_id), ''::bytea)), 'hex') = b.sha256")


def _insert_assembled_zip(conn, new: NewVersion, version: int, columns: dict[str, str],
                          members: list[stored_zip.Member], blob_ids: list[int]) -> None:
    """Insert the row with ``model_binary`` = the zip of the blobs, put together by PostgreSQL.

    Each file's pieces are checked against the SHA-256 recorded at upload: DATA_LOSS, and no row,
    when one is damaged or missing.
    """
    zip_of_blobs = Expr(sql.SQL(
        "WITH files AS (SELECT * FROM unnest(%s::bytea[], %s::bigint[]) WITH ORDINALITY AS f(header, blob_id, i)),"
        " parts AS (SELECT i, -1 AS seq, header AS data FROM files"
        "  UNION ALL SELECT f.i, p.seq, p.data FROM files f JOIN pgm_blob_pieces p ON p.blob_id = f.blob_id"
        "  UNION ALL SELECT %s::bigint, -1, %s::bytea),"
        " zip AS (SELECT string_agg(data, ''::bytea ORDER BY i, seq) AS z FROM parts),"
        f" intact AS (SELECT bool_and({_INTACT}) AND count(*) = %s AS ok FROM files f JOIN pgm_blobs b ON b.id = f.blob_id)"),
        ([stored_zip.local_header(m) for m in members], blob_ids, len(members) + 1, stored_zip.trailer(members),
         len(members)))
    inserted = MODELS.insert(
        conn, {**new.row(version, columns), "model_binary": column("z"), "format": Expr(sql.SQL("'mlflow-zip'")),
               "sha256": Expr(sql.SQL("encode(sha256(z), 'hex')")), "size_bytes": Expr(sql.SQL("octet_length(z)"))},
        with_=zip_of_blobs, select_from=Expr(sql.SQL("FROM zip, intact WHERE intact.ok")),
        returning=sql.SQL("size_bytes")).fetchone()
    if inserted is None:
        damaged = [m.name for m, (ok,) in zip(members, conn.execute(
            f"SELECT {_INTACT} FROM unnest(%s::bigint[]) WITH ORDINALITY AS f(blob_id, i)"
            " LEFT JOIN pgm_blobs b ON b.id = f.blob_id ORDER BY f.i", (blob_ids,))) if not ok]
        raise MlflowException(
            f"The files of {new.source!r} are damaged in the database: {', '.join(damaged) or 'a file'} no longer "
            "match the SHA-256 recorded when they were logged. Nothing was registered. Log the model again "
            "(or restore the database from a backup).", error_code=DATA_LOSS)
    if inserted[0] != stored_zip.zip_size(members):
        raise MlflowException(f"The files of {new.source!r} are incomplete in the database ({inserted[0]} of "
                              f"{stored_zip.zip_size(members)} bytes); nothing was registered. Log the model "
                              "again.", error_code=DATA_LOSS)


def _files_upload_writer(new: NewVersion, files: list[tuple[str, str, int]]) -> Callable:
    """Writes the files as blobs; a file already stored (e.g. weights shared with the previous
    version) references its blob and sends no byte (blobs.store_files)."""
    local = [blobs.LocalFile(path, blobs.fingerprint(path), arcname) for path, arcname, _ in files]

    @_copies
    def write(conn, version: int, columns: dict[str, str]) -> None:
        written = blobs.store_files(conn, local, lambda f: f"Uploading {new.name}: {f.name}")
        _insert_files(conn, new, version, columns,
                      [(f.name, blob.id, blob.size, blob.sha256) for f, blob in zip(local, written)])
    return write


def _insert_files(conn, new: NewVersion, version: int, columns: dict[str, str],
                  files: list[tuple[str, int, int, str]]) -> None:
    """Insert a ``format = 'files'`` row and its ``pgm_version_files``; ``files`` are (path, blob id, size, SHA-256)."""
    MODELS.insert(conn, {**new.row(version, columns), "model_binary": FILES_MARKER.encode(), "format": "files",
                         "sha256": blobs.manifest_digest(files), "size_bytes": sum(size for _, _, size, _ in files)})
    conn.cursor().executemany(
        "INSERT INTO pgm_version_files (name, version, path, blob_id, size_bytes) VALUES (%s, %s, %s, %s, %s)",
        [(new.name, version, path, blob_id, size) for path, blob_id, size, _ in files])


@dataclass(frozen=True)
class IncomingFile:
    """One file of a ``'files'`` version arriving from elsewhere, with the size and SHA-256 it must have."""

    path: str
    size: int
    sha256: str
    open: Callable[[], IO[bytes]]


@dataclass(frozen=True)
class Incoming:
    """A version's bytes arriving from elsewhere: one zip (``format = 'mlflow-zip'``) or files
    (``'files'``), and the SHA-256 of the version (of the zip, or :func:`blobs.manifest_digest`)."""

    format: str
    size: int
    sha256: str
    open_zip: Callable[[], IO[bytes]] | None = None
    files: list[IncomingFile] = field(default_factory=list)


def transfer(uri: str, new: NewVersion, incoming: Incoming, prepare: Callable[[psycopg.Connection], None],
             before_commit: Callable[[], None]) -> ModelVersion:
    """Register ``incoming`` as the next version of ``new.name``, its bytes streamed into one
    transaction and checked against their SHA-256 (DATA_LOSS, nothing kept, on a mismatch).

    Both callbacks run inside that transaction, so that raising there leaves nothing behind:
    ``prepare(conn)`` first of all (it may lock, or create the registered model), ``before_commit()``
    once every byte is written.
    """
    def write(conn, version: int, columns: dict[str, str]) -> None:
        if incoming.format == "mlflow-zip":
            digest = MODELS.copy_blob(
                conn, {**new.row(version, columns), "format": "mlflow-zip", "size_bytes": incoming.size},
                incoming.open_zip(), incoming.size, progress=f"Copying {new.name}")
            _check_digest(new.name, digest, incoming.sha256)
        else:
            stored = []
            for f in incoming.files:
                blob = blobs.write(conn, f.open(), f.size, progress=f"Copying {new.name}: {f.path}")
                _check_digest(f"{new.name}: {f.path}", blob.sha256, f.sha256)
                stored.append((f.path, blob.id, blob.size, blob.sha256))
            _check_digest(new.name, blobs.manifest_digest(stored), incoming.sha256)
            _insert_files(conn, new, version, columns, stored)
        before_commit()

    write.copies = True  # streams by COPY: a plain transaction, not a pipelined one (main's _copies)
    return _register(uri, new, write, prepare=prepare)


def _check_digest(what: str, got: str, expected: str) -> None:
    if got != expected.strip():
        raise MlflowException(
            f"The bytes of {what} arrived with SHA-256 {got[:16]}…, not the {expected.strip()[:16]}… recorded for "
            "them at the source: they are corrupt there or were damaged on the way. Nothing was written. Check "
            "the source (load the version there) and try again.", error_code=DATA_LOSS)


def copy(uri: str, new: NewVersion, src_name: str, src_version: int) -> ModelVersion:
    """Register a copy of version ``src_version`` of ``src_name`` of this store as the next version of ``new.name``."""
    def write(conn, version: int, columns: dict[str, str]) -> None:
        values = new.row(version, columns)
        copied = MODELS.insert(
            conn, {**values, "model_id": Expr(sql.SQL("coalesce(%s, model_id)"), (values["model_id"],)),
                   **{c: column(c) for c in ("model_binary", "format", "sha256", "size_bytes")}},
            select_from=Expr(sql.SQL("FROM models WHERE name = %s AND version = %s"), (src_name, src_version))).rowcount
        if not copied:
            raise version_not_found(src_name, src_version)
        conn.execute("INSERT INTO pgm_version_files (name, version, path, blob_id, size_bytes)"
                     " SELECT %s, %s, path, blob_id, size_bytes FROM pgm_version_files WHERE name = %s AND version = %s",
                     (new.name, version, src_name, src_version))

    return _register(uri, new, write)


def without_files(uri: str, new: NewVersion) -> ModelVersion:
    """Register a version with no files; only prompts have none (MLflow's placeholder sources)."""
    insert_empty = _empty_writer(new)

    def write(conn, version: int, columns: dict[str, str]) -> None:
        if new.tags.get(IS_PROMPT_TAG_KEY) != "true" and not search.is_prompt(conn, new.name):
            raise MlflowException.invalid_parameter_value(
                f"Invalid model version source: {new.source!r}. A version of model '{new.name}' needs the "
                "model's files: pass the URI of an MLflow model as source (runs:/<run id>/<path>, "
                "models:/m-<id>, a model directory). Only prompts are registered without files.")
        insert_empty(conn, version, columns)

    return _register(uri, new, write)


def import_numbered(uri: str, new: NewVersion, number: int, state: ImportedState,
                    model_dir: str | None) -> ModelVersion:
    """Register a version under its own ``number`` (import-registry); a number that is taken is
    RESOURCE_ALREADY_EXISTS. Later registrations continue after the highest number."""
    if model_dir is None:
        return _register(uri, new, _empty_writer(new), number=number, state=state)
    with _writer_for(new, model_dir) as write:
        return _register(uri, new, write, number=number, state=state)


@contextlib.contextmanager
def _writer_for(new: NewVersion, model_dir: str) -> Iterator[Callable]:
    """How to write a model directory: as one zip when it fits in a value, else as files in pieces."""
    files = archive.model_files(model_dir)
    if sum(size for _, _, size in files) <= model_binary.MAX_BLOB_BYTES:
        with archive.pack(model_dir) as packed:
            if os.fstat(packed.fileno()).st_size <= model_binary.MAX_BLOB_BYTES:
                yield _blob_writer(new, packed)
                return
    yield _files_upload_writer(new, files)


def _blob_writer(new: NewVersion, packed: IO[bytes]) -> Callable:
    size = os.fstat(packed.fileno()).st_size
    model_binary.check_size(size, f"Model '{new.name}'")  # before any transaction opens
    if size <= model_binary.INSERT_MAX_BYTES:  # a small model: one INSERT, sent along with the numbering
        data = packed.read()

        def insert(conn, version: int, columns: dict[str, str]) -> None:
            MODELS.insert_blob(conn, {**new.row(version, columns), "format": "mlflow-zip", "size_bytes": size}, data)
        return insert

    @_copies
    def write(conn, version: int, columns: dict[str, str]) -> None:
        MODELS.copy_blob(conn, {**new.row(version, columns), "format": "mlflow-zip", "size_bytes": size},
                         packed, size, progress=f"Uploading {new.name}")
    return write


def _copies(write_row: Callable) -> Callable:
    """Marks a row writer that uses COPY (which psycopg's pipeline mode does not allow)."""
    write_row.copies = True
    return write_row


def _empty_writer(new: NewVersion) -> Callable:
    def write(conn, version: int, columns: dict[str, str]) -> None:
        MODELS.insert(conn, {**new.row(version, columns), "model_binary": b"", "format": "none",
                             "sha256": _EMPTY_SHA256, "size_bytes": 0})
    return write


def _register(uri: str, new: NewVersion, write_row: Callable, number: int | None = None,
              state: ImportedState | None = None, prepare: Callable | None = None) -> ModelVersion:
    """Write the row under a placeholder number, then number it; returns the new version.

    Three round trips for a small model (db.batched_transaction): the registered model's tags
    and the placeholder; the row, its tags and the numbering; the commit.
    """
    name = new.name
    _, other_tags = column_tags.split(new.tags)
    with connection(uri, f"register a version of '{name}'") as conn, _transaction(conn, write_row):
        actor.mark(conn)
        if prepare is not None:
            prepare(conn)
        model_tags = conn.execute(
            "SELECT -pg_backend_pid(), t.key, t.value FROM pgm_registered_models r LEFT JOIN pgm_registered_model_tags t"
            " ON t.name = r.name AND t.key = ANY(%s) WHERE r.name = %s",
            (list(column_tags.COLUMNS), name)).fetchall()
        if not model_tags:
            raise model_not_found(name)
        placeholder = model_tags[0][0]
        columns = column_tags.for_new_version(new.tags, {key: value for _, key, value in model_tags if key})
        try:
            write_row(conn, placeholder, columns)
            if other_tags:  # under the placeholder: the renumbering carries them (ON UPDATE CASCADE)
                conn.cursor().executemany(
                    "INSERT INTO pgm_model_version_tags (name, version, key, value) VALUES (%s, %s, %s, %s)",
                    [(name, placeholder, k, v) for k, v in other_tags.items()])
            row = _take_number(conn, name, placeholder, number)
        except pg_errors.ForeignKeyViolation:  # the registered model was deleted or renamed meanwhile
            raise model_not_found(name) from None
        if state is None:  # the tags' subquery ran before the renumbering reached them; aliases: none yet
            return model_version({**row, "tags": [[k, v] for k, v in other_tags.items()], "aliases": []})
        MODELS.update(conn, name, row["version"], {
            "is_active": state.active, "stage": state.stage, "user_id": state.user_id,
            "created_at": Expr(sql.SQL("coalesce(to_timestamp(%s::bigint / 1000.0), created_at)"), (state.created_ms,))})
        row = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {MV_COLUMNS} FROM models m WHERE m.name = %s AND m.version = %s", (name, row["version"])).fetchone()
        return model_version(row)


def _transaction(conn, write_row: Callable):
    """A batched transaction, unless ``write_row`` uses COPY (a large model: round trips do not count there)."""
    return conn.transaction() if getattr(write_row, "copies", False) else batched_transaction(conn)


def _take_number(conn, name: str, placeholder: int, number: int | None) -> dict:
    """Lock the registered model's row, take the next number (or record ``number`` as taken) and
    give it to the row written under ``placeholder``; the row (``MV_COLUMNS``, by name)."""
    if number is None:
        take = ("UPDATE pgm_registered_models SET next_version = next_version + 1, last_updated_at = now()"
                " WHERE name = %(name)s RETURNING next_version - 1 AS version")
    else:
        take = ("UPDATE pgm_registered_models SET next_version = GREATEST(next_version, %(number)s + 1),"
                " last_updated_at = now() WHERE name = %(name)s RETURNING %(number)s::integer AS version")
    row = conn.cursor(row_factory=dict_row).execute(
        f"WITH n AS ({take}) UPDATE models m SET version = n.version FROM n"
        f" WHERE m.name = %(name)s AND m.version = %(placeholder)s RETURNING {MV_COLUMNS}",
        {"name": name, "number": number, "placeholder": placeholder}).fetchone()
    if row is None:  # deleted between the row's insert and now (the insert only held a key-share lock)
        raise model_not_found(name)
    return row
