"""Files of any size in the database: a blob is a row of ``pgm_blobs`` and its 32 MiB pieces.

The way past PostgreSQL's 1 GB limit on one value, shared by run artifacts, LoggedModel files
and the files of versions stored as files (sql/pgmodels_artifacts.sql). Bytes go in by binary
COPY in slices and come out in chunk queries read ahead, so client memory stays at a few
slices whatever the file size.

Each file once: :func:`store_files` hashes a local file before it opens anything, and when a
blob with the same SHA-256 and size is already stored, PostgreSQL re-hashes that blob's pieces
and they are compared with the local file's; only a blob that matches piece for piece is
referenced (its row key-share locked until commit, so it cannot be freed meanwhile), and the
file's bytes are not sent.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS

from mlflow_pgmodels._storage.model_binary import (
    COPY_HEADER,
    READ_CHUNK,
    SLICE,
    Int4,
    copy_field,
    progress_bar,
    read_chunks,
)

PIECE = 32 * 1024 * 1024  # a multiple of READ_CHUNK: a chunk never spans two pieces
# Files up to this size go in one statement (blob and piece), read into memory once.
_SMALL = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    id: int
    size: int
    sha256: str
    crc32: int


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's bytes: size, SHA-256, and the SHA-256 of each ``PIECE``-long slice
    (the pieces it would be stored as), which PostgreSQL can check against a stored blob piece by piece."""

    size: int
    sha256: str
    pieces: tuple[bytes, ...]


def fingerprint(path: str) -> Fingerprint:
    """The :class:`Fingerprint` of the local file at ``path`` (read once, a slice at a time)."""
    with open(path, "rb") as src:
        first = src.read(PIECE)
        if len(first) < PIECE or not src.peek(1):  # one piece (most files): its digest is the file's
            whole = hashlib.sha256(first)
            return Fingerprint(len(first), whole.hexdigest(), (whole.digest(),) if first else ())
        return _fingerprint_pieces(src, first)


def _fingerprint_pieces(src: IO[bytes], first: bytes) -> Fingerprint:
    whole, parts, size = hashlib.sha256(), [], 0
    # the two digests of a slice on two cores (hashlib lets go of the GIL on large buffers)
    with ThreadPoolExecutor(1, thread_name_prefix="pgmodels-hash") as pool:
        piece_bytes: bytes | None = first
        while piece_bytes:
            hashed = pool.submit(whole.update, piece_bytes)
            parts.append(hashlib.sha256(piece_bytes).digest())
            hashed.result()
            size += len(piece_bytes)
            piece_bytes = src.read(PIECE)
    return Fingerprint(size, whole.hexdigest(), tuple(parts))


@dataclass(frozen=True)
class LocalFile:
    """A file to store: where it is, its fingerprint taken beforehand, and what to call it."""

    path: str
    print: Fingerprint
    name: str


def store_files(conn: psycopg.Connection, files: Sequence[LocalFile], progress: Callable[[LocalFile], str | None],
                before_claim: Callable[[], None] = lambda: None) -> list[Blob]:
    """The blobs of ``files``, in order, in the caller's transaction: a blob already stored with the
    same bytes (verified) is referenced, the others are written (their bytes sent once per call).

    ``before_claim`` runs after the new bytes are written and before existing blobs are locked
    (the caller's locks that must come first). DATA_LOSS if a file changed meanwhile.
    """
    found = _verified(conn, {f.print for f in files})
    blobs: dict[Fingerprint, Blob] = {}
    for f in files:
        if f.print not in found and f.print not in blobs:
            blobs[f.print] = _write_file(conn, f, progress(f))
    before_claim()
    blobs.update(_claim(conn, {p: c for p, c in found.items() if p not in blobs}))
    for f in files:  # freed since it was verified: sent after all
        if f.print not in blobs:
            blobs[f.print] = _write_file(conn, f, progress(f))
    return [blobs[f.print] for f in files]


def _verified(conn: psycopg.Connection, prints: set[Fingerprint]) -> dict[Fingerprint, Blob]:
    """For each of ``prints`` that has one, the oldest stored blob whose pieces PostgreSQL re-hashed
    and found equal to the print's (nothing comes back but the pieces' digests). Unlocked."""
    if not prints:
        return {}
    by_key = {(p.sha256, p.size): p for p in prints}
    candidates: dict[Fingerprint, list[Blob]] = {}
    for blob_id, size, sha, crc in conn.execute(
            "SELECT b.id, b.size_bytes, b.sha256, b.crc32 FROM unnest(%s::text[], %s::bigint[]) k(sha256, size_bytes)"
            " JOIN pgm_blobs b ON b.sha256 = k.sha256::char(64) AND b.size_bytes = k.size_bytes ORDER BY b.id",
            ([p.sha256 for p in prints], [p.size for p in prints])):
        candidates.setdefault(by_key[(sha.strip(), size)], []).append(Blob(blob_id, size, sha.strip(), crc))
    verified: dict[Fingerprint, Blob] = {}
    while candidates:  # one candidate per print a round: a second copy is hashed only if the first is damaged
        trying = {p: c.pop(0) for p, c in candidates.items()}
        hashes: dict[int, list[bytes]] = {b.id: [] for b in trying.values()}
        for blob_id, digest in conn.execute(
                "SELECT blob_id, sha256(data) FROM pgm_blob_pieces WHERE blob_id = ANY(%s) ORDER BY blob_id, seq",
                ([b.id for b in trying.values()],)):
            hashes[blob_id].append(bytes(digest))
        verified.update((p, b) for p, b in trying.items() if tuple(hashes[b.id]) == p.pieces)
        candidates = {p: c for p, c in candidates.items() if c and p not in verified}
    return verified


def _claim(conn: psycopg.Connection, verified: dict[Fingerprint, Blob]) -> dict[Fingerprint, Blob]:
    """Those of the ``verified`` blobs that still exist, key-share locked (in id order) until the
    transaction ends.

    A blob that a concurrent delete frees is either gone already (left out: the caller writes the
    bytes) or kept, the delete's trigger waiting for this transaction and then seeing the new
    reference. Its pieces are the ones verified: they are never changed, only deleted with it, and
    a blob's id is never used again.
    """
    if not verified:
        return {}
    alive = {blob_id for blob_id, in conn.execute(
        "SELECT id FROM pgm_blobs WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE", ([b.id for b in verified.values()],))}
    return {p: b for p, b in verified.items() if b.id in alive}


def _write_file(conn: psycopg.Connection, f: LocalFile, progress: str | None) -> Blob:
    with open(f.path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        blob = write(conn, src, size, progress)
        if src.read(1) or (blob.sha256, blob.size) != (f.print.sha256, f.print.size):
            raise MlflowException(f"The file {f.name!r} changed while it was being stored (is something still "
                                  "writing it?); nothing was stored. Store it again once it is complete.",
                                  error_code=DATA_LOSS)
    return blob


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
