"""Promote a registered model version from one pgmodels database to another (dev → prod).

The version's bytes (its zip, or its files in pieces) are streamed from the source's snapshot
into one transaction on the target, chunk by chunk, and checked against the SHA-256 recorded at
the source before that transaction commits. The target gets a normal new version (its history
records the creation and its webhooks fire) with the source's description and tags, and the
lineage a reviewer needs as tags under :data:`LINEAGE`. The source needs only read access.
Either side may instead be a stock MLflow registry (files downloaded, then registered).
docs/lifecycle.md has the decisions.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import psycopg
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST
from psycopg.rows import dict_row

from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.uri import is_pgmodels_uri, redact
from mlflow_pgmodels._registry import search, versions
from mlflow_pgmodels._registry.arguments import name as _name
from mlflow_pgmodels._registry.arguments import version as _version
from mlflow_pgmodels._registry.entities import MV_COLUMNS, model_version, version_not_found
from mlflow_pgmodels._registry.store import PgModelsRegistryStore
from mlflow_pgmodels._storage import archive, blobs
from mlflow_pgmodels._storage.model_binary import READ_CHUNK

LINEAGE = "pgmodels.promoted_from."
# at the source, when its role may write: "<target database>" -> "<name> v<version>"
PROMOTED_TO = "pgmodels.promoted_to."


def lock_key(name: str) -> str:
    """The text whose ``hashtextextended(…, 0)`` is the target's advisory lock for promotions into ``name``."""
    return "pgmodels.promote:" + name


@dataclass(frozen=True)
class Promotion:
    """The outcome of :func:`promote`."""

    version: ModelVersion  # on the target
    created: bool  # False: an earlier promotion of the same version was found and reused
    alias: str | None
    recorded_at_source: bool  # the source's role could write, and the promotion is in its history


@dataclass(frozen=True)
class _Identity:
    system_identifier: str | None  # None when the role may not read pg_control_system()
    started: str
    port: str
    database_oid: int
    database: str

    def same_as(self, other: _Identity) -> bool:
        if self.database_oid != other.database_oid:
            return False
        if self.system_identifier and other.system_identifier:
            return self.system_identifier == other.system_identifier
        return (self.started, self.port) == (other.started, other.port)


def parse_model_uri(model_uri: str) -> tuple[str, str]:
    """``(name, reference)`` of ``models:/<name>/<version>``, ``models:/<name>/latest`` or ``models:/<name>@<alias>``;
    the reference is the version number, ``latest`` or ``@alias``."""
    rest = model_uri[len("models:/"):].strip("/") if model_uri.startswith("models:/") else ""
    name, at, alias = rest.rpartition("@")
    if at and name and alias and "/" not in alias:
        return name, "@" + alias
    name, _, ref = rest.rpartition("/")
    if not name or not (ref.isdigit() or ref == "latest"):
        raise MlflowException.invalid_parameter_value(
            f"Cannot promote {model_uri!r}: expected models:/<name>/<version>, models:/<name>/latest "
            "or models:/<name>@<alias>.")
    return name, ref


def promote(model_uri: str, to: str, source_uri: str | None = None, name: str | None = None,
            alias: str | None = None) -> Promotion:
    """Copy the version ``model_uri`` (``models:/churn/3``) of the store at ``source_uri`` (default:
    MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI) into the store at ``to``, as a version of ``name``
    (default: the same name), and point ``alias`` at it there.

    Idempotent: a version already promoted (same source database, name, version and SHA-256) is
    reused and only the alias is (re)applied.
    """
    src_name, ref = parse_model_uri(model_uri)
    target_name = _name(name or src_name)
    stock_source = bool(source_uri) and not is_pgmodels_uri(source_uri)
    if stock_source and not is_pgmodels_uri(to):
        raise MlflowException.invalid_parameter_value(
            f"Neither {redact(source_uri)!r} nor {redact(to)!r} is a pgmodels:// database: promote needs one "
            "on at least one side.")
    if not is_pgmodels_uri(to):
        return _to_stock(resolve_uri(source_uri), src_name, ref, to, target_name, alias)
    if stock_source:
        return _from_stock(source_uri, src_name, ref, to, target_name, alias)
    source_uri = resolve_uri(source_uri)
    if _identity(source_uri).same_as(_identity(to)):
        raise MlflowException.invalid_parameter_value(
            f"The target of the promotion is the source database itself ({redact(to)}): promote to another "
            "database. Inside one database, register a copy with "
            f"MlflowClient().copy_model_version('models:/{src_name}/<version>', '{target_name}').")
    store = PgModelsRegistryStore(to)
    with connection(source_uri, f"read model '{src_name}' at the source") as src, src.transaction():
        # one snapshot for the metadata and every byte; the source is never written here
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        mv, stored, lineage = _read_source(src, src_name, ref)
        with connection(to, f"look for an earlier promotion into '{target_name}'") as conn:
            promoted = _find_promoted(conn, target_name, lineage)
        created = promoted is None
        if created:
            description = src.execute("SELECT description FROM pgm_registered_models WHERE name = %s",
                                      (src_name,)).fetchone()[0]
            promoted, created = _copy(store.store_uri, src, source_uri, mv, stored, target_name, lineage,
                                      description)
    if alias:
        _set_alias(store, target_name, alias, promoted)
    recorded = _record_at_source(source_uri, mv, to, target_name, promoted) if created else False
    return Promotion(store.get_model_version(target_name, promoted), created, alias, recorded)


def _identity(uri: str) -> _Identity:
    with connection(uri, "identify the database") as conn:
        try:
            with conn.transaction():
                sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
        except psycopg.errors.InsufficientPrivilege:
            sysid = None
        row = conn.execute(
            "SELECT pg_postmaster_start_time()::text, current_setting('port'), d.oid::bigint, d.datname"
            " FROM pg_database d WHERE d.datname = current_database()").fetchone()
    return _Identity(sysid, *row)


@dataclass(frozen=True)
class _Stored:
    format: str
    size: int
    sha256: str
    files: list[tuple[str, int, int, str]]  # 'files': (path, blob id, size, SHA-256)


def _read_source(conn, name: str, ref: str) -> tuple[ModelVersion, _Stored, dict[str, str]]:
    """The version ``ref`` of ``name`` at the source, how it is stored, and its lineage tags."""
    if ref.startswith("@"):
        row = conn.execute("SELECT version FROM pgm_aliases WHERE name = %s AND alias = %s", (name, ref[1:])).fetchone()
        if row is None:
            raise MlflowException(f"Registered model '{name}' has no alias '{ref[1:]}' at the source.",
                                  RESOURCE_DOES_NOT_EXIST)
        number = row[0]
    elif ref == "latest":
        number = search.latest_active_version(conn, name)
        if number is None:
            raise MlflowException(f"Registered model '{name}' has no active version at the source.",
                                  RESOURCE_DOES_NOT_EXIST)
    else:
        number = _version(ref)
    row = conn.cursor(row_factory=dict_row).execute(
        f"SELECT {MV_COLUMNS}, m.format, m.size_bytes, m.sha256 FROM models m WHERE m.name = %s AND m.version = %s",
        (name, number)).fetchone()
    if row is None:
        raise version_not_found(name, number)
    fmt, size, sha = row["format"], row["size_bytes"], row["sha256"]
    if fmt not in ("mlflow-zip", "files"):
        raise MlflowException.invalid_parameter_value(
            f"Model '{name}' version {number} has no model files (format {fmt!r}: a prompt); only model "
            "versions are promoted.")
    files = []
    if fmt == "files":
        files = conn.execute(
            "SELECT f.path, f.blob_id, b.size_bytes, b.sha256 FROM pgm_version_files f JOIN pgm_blobs b"
            " ON b.id = f.blob_id WHERE f.name = %s AND f.version = %s ORDER BY f.path", (name, number)).fetchall()
    mv = model_version(row)
    database = conn.execute("SELECT current_database()").fetchone()[0]
    return mv, _Stored(fmt, size, sha.strip(), files), _lineage(database, mv, sha.strip())


def _lineage(database: str, mv: ModelVersion, sha256: str) -> dict[str, str]:
    lineage = {f"{LINEAGE}database": database, f"{LINEAGE}name": mv.name, f"{LINEAGE}version": str(mv.version),
               f"{LINEAGE}sha256": sha256}
    if mv.run_id:
        lineage[f"{LINEAGE}run_id"] = mv.run_id
    return lineage


def _find_promoted(conn, name: str, lineage: dict[str, str], same_bytes: bool = True) -> int | None:
    """The target version that an earlier promotion with this lineage created, if any (``same_bytes``:
    stored with the SHA-256 of the lineage, as a copy from a pgmodels database is)."""
    row = conn.execute(
        "SELECT m.version FROM models m WHERE m.name = %s AND (m.sha256 = %s OR NOT %s) AND %s::jsonb <@"
        " (SELECT coalesce(jsonb_object_agg(t.key, t.value), '{}') FROM pgm_model_version_tags t"
        "  WHERE t.name = m.name AND t.version = m.version AND t.key LIKE 'pgmodels.promoted\\_from.%%')"
        " ORDER BY m.version LIMIT 1",
        (name, lineage[f"{LINEAGE}sha256"], same_bytes, json.dumps(lineage))).fetchone()
    return row[0] if row else None


def _preparer(name: str, description: str | None, lineage: dict[str, str],
              same_bytes: bool = True) -> Callable[[psycopg.Connection], None]:
    """What runs first in the target's transaction: the lock, the registered model, the lookup."""
    def prepare(conn) -> None:
        # promotions into one name, one at a time: the second of two racing ones finds the first's version
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key(name),))
        conn.execute("INSERT INTO pgm_registered_models (name, description) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (name, description))
        found = _find_promoted(conn, name, lineage, same_bytes)
        if found is not None:
            raise _AlreadyPromoted(found)
    return prepare


class _AlreadyPromoted(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def _copy(target_uri: str, src, source_uri: str, mv: ModelVersion, stored: _Stored, name: str,
          lineage: dict[str, str], description: str | None) -> tuple[int, bool]:
    """Write the new target version (and its registered model, if new, with ``description``) in one
    transaction; returns (its number, True), or (the number of an earlier promotion's version, False)."""
    new = versions.NewVersion(name=name, source="", run_id=None, description=mv.description,
                              tags={**_copied_tags(mv), **lineage})

    def still_at_source() -> None:
        with connection(source_uri, f"check model '{mv.name}' at the source") as now:
            row = now.execute("SELECT sha256 FROM models WHERE name = %s AND version = %s",
                              (mv.name, mv.version)).fetchone()
        if row is None or row[0].strip() != stored.sha256:
            raise MlflowException(
                f"Model '{mv.name}' version {mv.version} was deleted (or replaced) at the source while it was "
                "being promoted; nothing was written to the target.", RESOURCE_DOES_NOT_EXIST)

    if stored.format == "mlflow-zip":
        incoming = versions.Incoming("mlflow-zip", stored.size, stored.sha256, open_zip=lambda: _ChunkReader(
            src, stored.size, lambda offset: (
                "SELECT substring(model_binary FROM %s FOR %s) FROM models WHERE name = %s AND version = %s",
                (offset + 1, READ_CHUNK, mv.name, mv.version))))
    else:
        incoming = versions.Incoming("files", stored.size, stored.sha256, files=[
            versions.IncomingFile(path, size, sha, _piece_reader(src, blob_id, size))
            for path, blob_id, size, sha in stored.files])
    try:
        created = versions.transfer(target_uri, new, incoming, _preparer(name, description, lineage),
                                    still_at_source)
    except _AlreadyPromoted as e:
        return e.version, False
    return int(created.version), True


def _copied_tags(mv: ModelVersion) -> dict[str, str]:
    """The source version's tags that go along (not the lineage of its own promotions)."""
    tags = mv.tags if isinstance(mv.tags, dict) else {t.key: t.value for t in mv.tags or []}
    return {k: v for k, v in tags.items() if not k.startswith((LINEAGE, PROMOTED_TO))}


def _piece_reader(src, blob_id: int, size: int) -> Callable[[], IO[bytes]]:
    return lambda: _ChunkReader(src, size, lambda offset: (
        "SELECT substring(data FROM %s FOR %s) FROM pgm_blob_pieces WHERE blob_id = %s AND seq = %s",
        (offset % blobs.PIECE + 1, READ_CHUNK, blob_id, offset // blobs.PIECE)))


class _ChunkReader:
    """``read(n)`` over a value of the source read in chunk queries, in the source's snapshot."""

    def __init__(self, conn, size: int, chunk_query: Callable[[int], tuple[str, tuple]]) -> None:
        self._cur = conn.cursor(binary=True)
        self._size = size
        self._query = chunk_query
        self._offset = 0
        self._buffer = memoryview(b"")

    def read(self, n: int) -> bytes:
        if not self._buffer and self._offset < self._size:
            row = self._cur.execute(*self._query(self._offset)).fetchone()
            if row is None or not row[0]:
                raise MlflowException(
                    "The source's bytes end early: a piece is missing there (damaged, or lost in a partial "
                    "restore). Nothing was written to the target.", error_code=DATA_LOSS)
            self._buffer = memoryview(bytes(row[0]))
            self._offset += len(self._buffer)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(out)


def _from_stock(source_uri: str, src_name: str, ref: str, to: str, name: str, alias: str | None) -> Promotion:
    """Promote a version of a stock MLflow registry (sqlite://, postgresql://, http://…): its files are
    downloaded from the source's artifact store, then registered as in import-registry."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    source = MlflowClient(tracking_uri=source_uri, registry_uri=source_uri)
    if ref.startswith("@"):
        mv = source.get_model_version_by_alias(src_name, ref[1:])
    elif ref == "latest":
        mv = max(source.get_latest_versions(src_name), key=lambda v: int(v.version))
    else:
        mv = source.get_model_version(src_name, ref)
    store = PgModelsRegistryStore(to)
    with tempfile.TemporaryDirectory(prefix="pgmodels-promote-") as tmp:
        files = mlflow.artifacts.download_artifacts(
            artifact_uri=source.get_model_version_download_uri(mv.name, mv.version), dst_path=tmp,
            tracking_uri=source_uri)
        digest = blobs.manifest_digest([(arcname, 0, size, _file_sha256(path))
                                         for path, arcname, size in archive.model_files(files)])
        lineage = _lineage(_registry_label(source_uri), mv, digest)
        tags = _copied_tags(mv)
        new = versions.NewVersion(name=name, description=mv.description, tags={**tags, **lineage})
        description = source.get_registered_model(mv.name).description
        try:
            number, created = int(versions.upload(
                store.store_uri, new, files, _preparer(name, description, lineage, same_bytes=False)).version), True
        except _AlreadyPromoted as e:
            number, created = e.version, False
    if alias:
        _set_alias(store, name, alias, number)
    return Promotion(store.get_model_version(name, number), created, alias, False)


def _to_stock(source_uri: str, src_name: str, ref: str, to: str, name: str, alias: str | None) -> Promotion:
    """Promote into a stock MLflow registry (``to``: its tracking and registry URI): the files go into
    a LoggedModel of its default experiment, registered as a version with the lineage tags. The
    lookup of an earlier promotion takes no lock there: two promotions racing may both register."""
    from mlflow import MlflowClient

    from mlflow_pgmodels._cache.fetch import DatabaseSource

    with connection(source_uri, f"read model '{src_name}' at the source") as src, src.transaction():
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        mv, _, lineage = _read_source(src, src_name, ref)
    target = MlflowClient(tracking_uri=to, registry_uri=to)
    earlier = [v for v in target.search_model_versions(f"tags.`{LINEAGE}sha256` = '{lineage[LINEAGE + 'sha256']}'")
               if v.name == name and all(v.tags.get(k) == value for k, value in lineage.items())]
    created = not earlier
    if created:
        try:
            target.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            target.create_registered_model(name)
        with DatabaseSource(source_uri).borrowed(mv.name, int(mv.version)) as model_dir:  # verified by SHA-256
            logged = target.create_logged_model(experiment_id="0", name=name, tags={**lineage})
            target.log_model_artifacts(logged.model_id, model_dir)
            target.finalize_logged_model(logged.model_id, "READY")
        promoted = target.create_model_version(name, logged.artifact_location, description=mv.description,
                                               tags={**_copied_tags(mv), **lineage})
    else:
        promoted = min(earlier, key=lambda v: int(v.version))
    if alias:
        target.set_registered_model_alias(name, alias, promoted.version)
    return Promotion(target.get_model_version(name, promoted.version), created, alias, False)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _registry_label(uri: str) -> str:
    """A stock registry's URI as lineage: no user, password or query (sqlite:///x/mlflow.db -> mlflow.db)."""
    parsed = urllib.parse.urlsplit(uri)
    where = parsed.path.rsplit("/", 1)[-1] if parsed.scheme.startswith("sqlite") else (
        f"{parsed.hostname or ''}{':' + str(parsed.port) if parsed.port else ''}{parsed.path}")
    return f"{parsed.scheme}:{where}"


def _set_alias(store: PgModelsRegistryStore, name: str, alias: str, version: int) -> None:
    try:
        store.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise MlflowException(
            f"Model '{name}' version {version} was promoted and stays on the target, but the alias '{alias}' "
            f"was not set: {e.message} Set it with a role that may (or promote again with one: the version is "
            "reused, only the alias is applied).", error_code=PERMISSION_DENIED) from None


def _record_at_source(source_uri: str, mv: ModelVersion, to: str, name: str, version: int) -> bool:
    """Tag the source version with where it went, when the source's role may write (else nothing)."""
    with connection(to, "identify the database") as conn:
        target_db = conn.execute("SELECT current_database()").fetchone()[0]
    key = PROMOTED_TO + (re.sub(r"[^\w.\- /]", "_", target_db) or "_")
    try:
        PgModelsRegistryStore(source_uri).set_model_version_tag(
            mv.name, mv.version, ModelVersionTag(key, f"{name} v{version}"))
    except MlflowException as e:
        if e.error_code in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise
    return True

