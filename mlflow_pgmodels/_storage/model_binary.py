"""Moving ``model_binary`` bytes: binary COPY in slices on the way in, substring reads on the way out.

Both paths keep client memory at one slice, whatever the model size (see
../shared/notes/bytea-physics.md for the measurements behind the choice).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import struct
import threading
from collections.abc import Callable
from typing import IO, Any

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels import _settings

SLICE = 8 * 1024 * 1024
# Measured: 2-4 MiB substring reads are faster than one whole-value fetch (no huge buffers).
READ_CHUNK = 4 * 1024 * 1024
# Chunks fetched ahead while the previous ones are hashed and written out.
READ_AHEAD = 2
# PostgreSQL cannot store a single value of 1 GB or more (MaxAllocSize, minus the varlena header).
MAX_BLOB_BYTES = (1 << 30) - 1 - 4
# Blobs up to this size go in one INSERT with a binary parameter (in memory once; no COPY set-up,
# and the statement can share a round trip); larger ones stream by COPY.
INSERT_MAX_BYTES = 1024 * 1024
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def check_size(size: int, what: str, at_least: bool = False) -> None:
    """Refuse, before any byte moves, a blob PostgreSQL cannot hold in one value."""
    if size > MAX_BLOB_BYTES:
        raise MlflowException(
            f"{what} is {'at least ' if at_least else ''}{size / 2**20:,.0f} MiB packed; PostgreSQL "
            "stores at most 1 GB in one "
            "value (model_binary), so it cannot be registered. Make the model smaller "
            "(fewer or smaller estimators, compression in its own format) and register again.",
            error_code=INVALID_PARAMETER_VALUE,
        )


class Int4(int):
    """Marks a value for an INTEGER column (plain ints are sent as BIGINT)."""


def copy_field(value: Any) -> bytes:
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
    with progress_bar(progress, size) as bar, \
            conn.cursor().copy(f"COPY {psycopg.sql.Identifier(table).as_string(conn)} ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(COPY_HEADER + struct.pack("!h", len(names)) + b"".join(copy_field(v) for v in columns.values()))
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
        copy.write(copy_field(hexdigest) + struct.pack("!h", -1))
    return hexdigest


def read_blob(conn: psycopg.Connection, name: str, version: int, size: int, out: IO[bytes],
              progress: str | None = None) -> tuple[str, int]:
    """Write one version's ``model_binary`` into ``out`` in chunks; returns (SHA-256, bytes read)."""
    def chunk(offset: int) -> tuple[str, tuple]:
        return ("SELECT substring(model_binary FROM %s FOR %s) FROM models WHERE name = %s AND version = %s",
                (offset + 1, READ_CHUNK, name, version))

    return read_chunks(conn, chunk, size, out, progress,
                       gone=f"Model '{name}' version {version} was deleted while it was being read")


def read_chunks(conn: psycopg.Connection, chunk_query: Callable[[int], tuple[str, tuple]], size: int,
                out: IO[bytes], progress: str | None = None, gone: str = "The file was deleted while it was being read",
                gone_code: str = RESOURCE_DOES_NOT_EXIST) -> tuple[str, int]:
    """Stream ``size`` bytes into ``out``, ``chunk_query(offset)`` giving the query of the chunk at
    ``offset`` (one row, one bytea of at most ``READ_CHUNK`` bytes); returns (SHA-256, bytes read).

    A helper thread runs the chunk queries ``READ_AHEAD`` chunks ahead of this thread, which
    hashes and writes them, so the database and the local disk work at the same time; at most
    ``READ_AHEAD + 2`` chunks are in memory. All chunks come from one snapshot: a REPEATABLE READ
    transaction of their own, or the caller's when ``conn`` is in one (which then holds the
    snapshot that also gave ``size``).
    """
    own_transaction = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    chunks: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def fetch() -> None:
        got = 0
        try:
            with conn.transaction() if own_transaction else contextlib.nullcontext():
                if own_transaction:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur = conn.cursor(binary=True)
                while got < size or got == 0:
                    row = cur.execute(*chunk_query(got)).fetchone()
                    if row is None:
                        if got == size:  # an empty file: no piece at all
                            break
                        raise MlflowException(gone, error_code=gone_code)
                    if not row[0] or not put(row[0]):
                        break
                    got += len(row[0])
            put(None)
        except BaseException as e:  # handed to the consuming thread
            put(e)

    digest = hashlib.sha256()
    got = 0
    reader = threading.Thread(target=fetch, name="pgmodels-read", daemon=True)
    with progress_bar(progress, size) as bar:
        reader.start()
        try:
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                digest.update(chunk)
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        finally:
            stop.set()
            reader.join()
    return digest.hexdigest(), got


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def progress_bar(desc: str | None, total: int):
    """A tqdm bar on stderr that shows up only once a transfer has taken more than 2 seconds."""
    if desc is None or not _settings.PROGRESS.get():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, delay=2, leave=False)
