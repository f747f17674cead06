"""Writing a version: the one place a row of ``models`` is born.

Four ways, one function each: :func:`upload` (the model's files, streamed by binary COPY),
:func:`copy` (a version of this store, copied inside the database), :func:`without_files`
(a prompt) and :func:`import_numbered` (a version of another registry, keeping its number).

All share one transaction: the row is written under a placeholder number (minus the backend's
pid: unique among open transactions, invisible to everyone else), then the registered model's
row is locked, the next number taken and the row renumbered — the UPDATE leaves the TOASTed
bytes where they are. So the lock that serializes registrations of one name is held for
milliseconds whatever the size, and numbers stay gap-free and never reused: a registration
that fails or is killed rolls back its row and its number together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
from psycopg import errors as pg_errors

from mlflow_pgmodels import actor, blobs, column_tags, search
from mlflow_pgmodels.db import connection
from mlflow_pgmodels.entities import MV_COLUMNS, model_not_found, model_version, version_not_found

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_ROW_COLUMNS = ("name", "version", "model_type", "event", "description", "source", "run_id", "run_link",
                "model_id")


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
        return {"name": self.name, "version": blobs.Int4(version), "model_type": columns["model_type"],
                "event": columns["event"], "description": self.description, "source": self.source,
                "run_id": self.run_id, "run_link": self.run_link, "model_id": self.model_id}


@dataclass(frozen=True)
class ImportedState:
    """What a version imported from another registry keeps besides its number."""

    active: bool
    stage: str
    user_id: str | None
    created_ms: int | None


def upload(uri: str, new: NewVersion, packed: IO[bytes]) -> ModelVersion:
    """Register ``packed`` (a zip made by archive.pack, at position 0) as the next version."""
    return _register(uri, new, _blob_writer(new, packed))


def copy(uri: str, new: NewVersion, src_name: str, src_version: int) -> ModelVersion:
    """Register a copy of version ``src_version`` of ``src_name`` of this store as the next version of ``new.name``."""
    def write(conn, version: int, columns: dict[str, str]) -> None:
        values = new.row(version, columns)
        copied = conn.execute(
            f"INSERT INTO models ({', '.join(_ROW_COLUMNS)}, model_binary, format, sha256, size_bytes)"
            f" SELECT {', '.join(['%s'] * (len(_ROW_COLUMNS) - 1))}, coalesce(%s, model_id), model_binary,"
            " format, sha256, size_bytes FROM models WHERE name = %s AND version = %s",
            (*[values[c] for c in _ROW_COLUMNS], src_name, src_version)).rowcount
        if not copied:
            raise version_not_found(src_name, src_version)

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
                    packed: IO[bytes] | None) -> ModelVersion:
    """Register a version under its own ``number`` (import-registry); a number that is taken is
    RESOURCE_ALREADY_EXISTS. Later registrations continue after the highest number."""
    write = _empty_writer(new) if packed is None else _blob_writer(new, packed)
    return _register(uri, new, write, number=number, state=state)


def _blob_writer(new: NewVersion, packed: IO[bytes]) -> Callable:
    size = os.fstat(packed.fileno()).st_size
    blobs.check_size(size, f"Model '{new.name}'")  # before any transaction opens

    def write(conn, version: int, columns: dict[str, str]) -> None:
        blobs.copy_row_with_blob(
            conn, "models", {**new.row(version, columns), "format": "mlflow-zip", "size_bytes": size},
            "model_binary", packed, size, "sha256", progress=f"Uploading {new.name}")
    return write


def _empty_writer(new: NewVersion) -> Callable:
    def write(conn, version: int, columns: dict[str, str]) -> None:
        values = new.row(version, columns)
        conn.execute(
            f"INSERT INTO models ({', '.join(_ROW_COLUMNS)}, model_binary, format, sha256, size_bytes)"
            f" VALUES ({', '.join(['%s'] * len(_ROW_COLUMNS))}, '', 'none', %s, 0)",
            (*[values[c] for c in _ROW_COLUMNS], _EMPTY_SHA256))
    return write


def _register(uri: str, new: NewVersion, write_row: Callable, number: int | None = None,
              state: ImportedState | None = None) -> ModelVersion:
    """Write the row under a placeholder number, then number it; returns the new version."""
    name = new.name
    with connection(uri, f"register a version of '{name}'") as conn, conn.transaction():
        actor.mark(conn)
        model_tags = conn.execute(
            "SELECT r.name, t.key, t.value FROM pgm_registered_models r LEFT JOIN pgm_registered_model_tags t"
            " ON t.name = r.name AND t.key = ANY(%s) WHERE r.name = %s",
            (list(column_tags.COLUMNS), name)).fetchall()
        if not model_tags:
            raise model_not_found(name)
        columns = column_tags.for_new_version(new.tags, {key: value for _, key, value in model_tags if key})
        placeholder = conn.execute("SELECT -pg_backend_pid()").fetchone()[0]
        try:
            write_row(conn, placeholder, columns)
        except pg_errors.ForeignKeyViolation:  # the registered model was deleted or renamed meanwhile
            raise model_not_found(name) from None
        version = _take_number(conn, name, number)
        conn.execute("UPDATE models SET version = %s WHERE name = %s AND version = %s", (version, name, placeholder))
        _, other_tags = column_tags.split(new.tags)
        if other_tags:
            conn.cursor().executemany(
                "INSERT INTO pgm_model_version_tags (name, version, key, value) VALUES (%s, %s, %s, %s)",
                [(name, version, k, v) for k, v in other_tags.items()])
        if state is not None:
            conn.execute(
                "UPDATE models SET is_active = %s, stage = %s, user_id = %s,"
                " created_at = coalesce(to_timestamp(%s::bigint / 1000.0), created_at)"
                " WHERE name = %s AND version = %s",
                (state.active, state.stage, state.user_id, state.created_ms, name, version))
        row = conn.execute(f"SELECT {MV_COLUMNS} FROM models m WHERE m.name = %s AND m.version = %s",
                           (name, version)).fetchone()
        return model_version(row)


def _take_number(conn, name: str, number: int | None) -> int:
    """Lock the registered model's row and take the next number (or record ``number`` as taken)."""
    if number is None:
        row = conn.execute(
            "UPDATE pgm_registered_models SET next_version = next_version + 1, last_updated_at = now()"
            " WHERE name = %s RETURNING next_version - 1", (name,)).fetchone()
    else:
        row = conn.execute(
            "UPDATE pgm_registered_models SET next_version = GREATEST(next_version, %s + 1),"
            " last_updated_at = now() WHERE name = %s RETURNING %s", (number, name, number)).fetchone()
    if row is None:  # deleted between the row's insert and now (the insert only held a key-share lock)
        raise model_not_found(name)
    return row[0]
