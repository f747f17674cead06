"""Moving ``model_binary`` bytes: binary COPY in slices on the way in, substring reads on the way out.

Both paths keep client memory at one slice, whatever the model size (see
../shared/notes/bytea-physics.md for the measurements behind the choice).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from typing import IO, Any

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

SLICE = 8 * 1024 * 1024
READ_CHUNK = 32 * 1024 * 1024
# PostgreSQL cannot store a single value of 1 GB or more.
MAX_BLOB_BYTES = (1 << 30) - 1
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def check_size(size: int, what: str) -> None:
    """Refuse, before any byte moves, a blob PostgreSQL cannot hold in one value."""
    if size > MAX_BLOB_BYTES:
        raise MlflowException(
            f"{what} is {size / 2**20:,.0f} MiB packed; PostgreSQL stores at most 1 GB in one "
            "value (model_binary), so it cannot be registered. Make the model smaller "
            "(fewer or smaller estimators, compression in its own format) and register again.",
            error_code=INVALID_PARAMETER_VALUE,
        )


class Int4(int):
    """Marks a value for an INTEGER column (plain ints are sent as BIGINT)."""


def _field(value: Any) -> bytes:
    if value is None:
        return struct.pack("!i", -1)
    if isinstance(value, bool):
        return struct.pack("!i?", 1, value)
    if isinstance(value, Int4):
        return struct.pack("!ii", 4, value)
    if isinstance(value, int):
        return struct.pack("!iq", 8, value)
    data = value.encode("utf-8")
    return struct.pack("!i", len(data)) + data


def copy_row_with_blob(conn: psycopg.Connection, table: str, columns: dict[str, Any],
                       blob_column: str, blob: IO[bytes], size: int, digest_column: str,
                       progress: str | None = None) -> str:
    """Insert one row by binary COPY, streaming ``blob`` in slices; returns its SHA-256.

    ``columns`` holds str, bool, None, :class:`Int4` (INTEGER) or int (BIGINT) values. The digest, computed while streaming, is written
    into ``digest_column`` after the blob.
    """
    names = [*columns, blob_column, digest_column]
    quoted = ", ".join(psycopg.sql.Identifier(n).as_string(conn) for n in names)
    digest = hashlib.sha256()
    with _progress_bar(progress, size) as bar, \
            conn.cursor().copy(f"COPY {psycopg.sql.Identifier(table).as_string(conn)} ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_COPY_HEADER + struct.pack("!h", len(names)) + b"".join(_field(v) for v in columns.values()))
        copy.write(struct.pack("!i", size))
        sent = 0
        while sent < size:
            chunk = blob.read(min(SLICE, size - sent))
            if not chunk:
                raise MlflowException("the packed model file ended early", error_code=DATA_LOSS)
            digest.update(chunk)
            copy.write(chunk)
            sent += len(chunk)
            bar.update(len(chunk))
        hexdigest = digest.hexdigest()
        copy.write(_field(hexdigest) + struct.pack("!h", -1))
    return hexdigest


def read_blob(conn: psycopg.Connection, name: str, version: int, size: int, out: IO[bytes],
              progress: str | None = None) -> tuple[str, int]:
    """Write one version's ``model_binary`` into ``out`` in chunks; returns (SHA-256, bytes read)."""
    digest = hashlib.sha256()
    got = 0
    with _progress_bar(progress, size) as bar, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur = conn.cursor(binary=True)
        while True:
            cur.execute(
                "SELECT substring(model_binary FROM %s FOR %s) FROM models WHERE name = %s AND version = %s",
                (got + 1, READ_CHUNK, name, version),
            )
            row = cur.fetchone()
            if row is None:
                raise MlflowException(f"Model '{name}' version {version} was deleted while it was being read",
                                      error_code=RESOURCE_DOES_NOT_EXIST)
            chunk = row[0]
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            if got >= size:
                break
    return digest.hexdigest(), got


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _progress_bar(desc: str | None, total: int):
    """A tqdm bar on stderr that shows up only once a transfer has taken more than 2 seconds."""
    if desc is None or os.environ.get("MLFLOW_PGMODELS_PROGRESS", "1") == "0":
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, delay=2, leave=False)
