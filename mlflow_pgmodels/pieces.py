"""Files of any size in the database: a blob is a row of ``pgm_blobs`` and its 32 MiB pieces.

The way past PostgreSQL's 1 GB limit on one value, shared by run artifacts, LoggedModel files
and the files of versions stored as files (sql/pgmodels_artifacts.sql). Bytes go in by binary
COPY in slices and come out in chunk queries read ahead, so client memory stays at a few
slices whatever the file size.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import IO

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS

from mlflow_pgmodels.blobs import COPY_HEADER, READ_CHUNK, SLICE, Int4, copy_field, progress_bar, read_chunks

PIECE = 32 * 1024 * 1024  # a multiple of READ_CHUNK: a chunk never spans two pieces
# Files up to this size go in one statement (blob and piece), read into memory once.
_SMALL = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    id: int
    size: int
    sha256: str
    crc32: int


def write(conn: psycopg.Connection, src: IO[bytes], size: int, progress: str | None = None) -> Blob:
    """Store the next ``size`` bytes of ``src`` as a new blob, in the caller's transaction.

    DATA_LOSS if ``src`` ends early (nothing is kept once the caller's transaction rolls back).
    """
    if size <= _SMALL:
        data = src.read(size)
        _check_length(len(data), size)
        digest, crc = hashlib.sha256(data).hexdigest(), zlib.crc32(data)
        blob_id = conn.execute("INSERT INTO pgm_blobs (size_bytes, sha256, crc32) VALUES (%s, %s, %s) RETURNING id",
                               (size, digest, crc)).fetchone()[0]
        if size:
            conn.execute("INSERT INTO pgm_blob_pieces (blob_id, seq, data) VALUES (%s, 0, %s)", (blob_id, data))
        return Blob(blob_id, size, digest, crc)
    blob_id = conn.execute("INSERT INTO pgm_blobs (size_bytes, sha256, crc32) VALUES (%s, '', 0) RETURNING id",
                           (size,)).fetchone()[0]
    sha, crc = hashlib.sha256(), 0
    sent = 0
    with progress_bar(progress, size) as bar, \
            conn.cursor().copy("COPY pgm_blob_pieces (blob_id, seq, data) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(COPY_HEADER)
        seq = 0
        while sent < size:
            piece = min(PIECE, size - sent)
            copy.write(struct.pack("!h", 3) + copy_field(blob_id) + copy_field(Int4(seq)) + struct.pack("!i", piece))
            left = piece
            while left:
                chunk = src.read(min(SLICE, left))
                if not chunk:
                    _check_length(sent, size)
                sha.update(chunk)
                crc = zlib.crc32(chunk, crc)
                copy.write(chunk)
                left -= len(chunk)
                sent += len(chunk)
                bar.update(len(chunk))
            seq += 1
        copy.write(struct.pack("!h", -1))
    digest = sha.hexdigest()
    conn.execute("UPDATE pgm_blobs SET sha256 = %s, crc32 = %s WHERE id = %s", (digest, crc, blob_id))
    return Blob(blob_id, size, digest, crc)


def _check_length(got: int, expected: int) -> None:
    if got != expected:
        raise MlflowException("The file ended early while it was being stored (was it changed meanwhile?); "
                              "nothing was stored. Try again.", error_code=DATA_LOSS)


def read(conn: psycopg.Connection, blob_id: int, size: int, sha256: str, out: IO[bytes], what: str,
         progress: str | None = None) -> None:
    """Write blob ``blob_id`` into ``out``; DATA_LOSS unless its bytes match the recorded size and SHA-256."""
    def chunk(offset: int) -> tuple[str, tuple]:
        return ("SELECT substring(data FROM %s FOR %s) FROM pgm_blob_pieces WHERE blob_id = %s AND seq = %s",
                (offset % PIECE + 1, READ_CHUNK, blob_id, offset // PIECE))

    digest, got = read_chunks(
        conn, chunk, size, out, progress, gone_code=DATA_LOSS,
        gone=f"{what} is incomplete in the database: a piece of it is missing (deleted while it was read, or "
             "lost in a partial restore). Nothing was loaded. Restore the database from a backup or log the "
             "file again.")
    if got != size or digest != sha256.strip():
        raise MlflowException(
            f"{what} is corrupt in the database: {got} bytes with SHA-256 {digest[:16]}… were read, but "
            f"{size} bytes with SHA-256 {sha256[:16]}… were stored. Nothing was loaded. Restore the "
            "database from a backup or log the file again.",
            error_code=DATA_LOSS)


def manifest_digest(files: list[tuple[str, int, int, str]]) -> str:
    """The SHA-256 a set of files is known by (a ``'files'`` version): of its sorted
    (path, file SHA-256, size) list; ``files`` are (path, blob id, size, SHA-256)."""
    lines = "".join(f"{path}\t{sha.strip()}\t{size}\n" for path, _, size, sha in sorted(files))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()
