"""Bytes travel once (issue 11): what the client sends for ``log_model(..., registered_model_name=)``,
its time against stock MLflow plus one plain COPY, and what the in-database zip assembly costs.

With the database artifact root, ``log_model`` uploads the LoggedModel's files once and registering
it builds ``model_binary`` inside PostgreSQL from those files (a second write, no client bytes).
The registration step is timed alone three ways: stock MLflow; ours as it is (zip assembled by
PostgreSQL); and ours as a version of format 'files' referencing the same blobs (no second write:
what registering would cost if the assembly went), by lowering the package's 1 GB threshold in
this process only.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from typing import Any

from benchmarks import MiB, database
from benchmarks.bench import Bench, Side
from benchmarks.report import Stat
from benchmarks.wire import Forwarder, forwarded_uri, server_socket

_LOG_ARGS = {"serialization_format": "cloudpickle", "pip_requirements": ["scikit-learn"]}


def once(bench: Bench, model: Any, size: str) -> None:
    """Every row of the family for ``model`` (about ``size``)."""
    wire(bench, model, size)
    log_and_copy(bench, model, size)
    registration_alone(bench, model, size)


def _distinct(model: Any) -> Any:
    """A copy of ``model`` whose pickle differs from every other (so its upload is not deduplicated)."""
    twin = copy.deepcopy(model)
    twin.bench_nonce_ = os.urandom(16).hex()
    return twin


def wire(bench: Bench, model: Any, size: str) -> None:
    """Bytes the client sent to PostgreSQL for one ``log_model(..., registered_model_name=)``, against the zip."""
    import mlflow

    with Forwarder(server_socket(bench.ours.uri)) as fwd:
        side = Side("pgmodels", forwarded_uri(bench.ours.uri, fwd.port), bench.ours.workdir)
        side.activate()
        # each log a model of its own bytes: a file already in the database is not sent again
        _log(_distinct(model), "wire-warmup", register=True)  # connections, tables and caches of this URI
        fwd.reset()
        version = _log(model, "wire", register=True)
        sent, received = fwd.reset()
        _log(_distinct(model), None, register=False)
        upload, _ = fwd.reset()
        info = _log(_distinct(model), None, register=False)
        fwd.reset()
        mlflow.register_model(info.model_uri, "wire")
        register_sent, _ = fwd.reset()
    bench.ours.activate()
    zip_bytes = database.blob_mib(bench.pg, "wire", version.registered_model_version) * MiB
    bench.facts[f"wire {size}"] = {"sent": sent, "received": received, "zip": zip_bytes, "log_model_only": upload,
                                   "register_only": register_sent}
    bench.row(f"bytes the client sent for `log_model(..., registered_model_name=)`, {size}",
              Stat([sent / MiB], unit="MiB"), Stat([zip_bytes / MiB], unit="MiB", label="the zip"), 1.1,
              note=f"received {received / MiB:.1f} MiB")
    bench.row(f"bytes the client sent: `log_model` alone / registering the LoggedModel alone, {size}",
              Stat([upload / MiB], unit="MiB"), Stat([zip_bytes / MiB], unit="MiB", label="the zip"), None,
              note=f"registering alone: {register_sent / 1024:.0f} KiB")


def log_and_copy(bench: Bench, model: Any, size: str) -> None:
    """``log_model(..., registered_model_name=)`` against stock ``log_model`` + a plain COPY of the version's zip."""
    zip_path = bench.base / "scratch" / "once.zip"
    database.create_copy_table(bench.pg)
    ours, stock, copy = [], [], []
    for _ in range(bench.plan.repeats):
        for side, samples in ((bench.stock, stock), (bench.ours, ours)):  # alternate: drift hits both alike
            side.activate()
            fresh = _distinct(model)  # a new model each time: ours would not upload bytes it already holds
            start = time.perf_counter()
            version = _log(fresh, "once", register=True).registered_model_version
            samples.append(time.perf_counter() - start)
        zip_path.write_bytes(database.raw_fetch(bench.pg, "once", version))
        start = time.perf_counter()
        database.plain_copy(bench.pg, str(zip_path))
        copy.append(time.perf_counter() - start)
        bench.pg.execute("TRUNCATE bench_copy")
    zip_path.unlink()
    baseline = [s + c for s, c in zip(stock, copy)]
    bench.row(f"`log_model(..., registered_model_name=)`, {size}, against stock + one plain COPY", Stat(ours),
              Stat(baseline, label="stock + COPY"), 1.2,
              note=f"stock alone {Stat(stock).median:.3f} s, COPY alone {Stat(copy).median:.3f} s")


def registration_alone(bench: Bench, model: Any, size: str) -> None:
    """``register_model`` of a logged LoggedModel: stock, ours (zip assembled in the database), ours as 'files'."""
    samples: dict[str, list[float]] = {"stock": [], "zip": [], "files": [], "log": [], "stock log": []}
    wal: dict[str, list[float]] = {"zip": [], "files": []}
    for _ in range(bench.plan.repeats):
        bench.stock.activate()
        start = time.perf_counter()
        logged = _log(model, None, register=False)
        samples["stock log"].append(time.perf_counter() - start)
        samples["stock"].append(_timed_register(logged.model_uri, "alone"))
        bench.ours.activate()
        for how in ("zip", "files"):
            start = time.perf_counter()
            logged = _log(model, None, register=False)
            samples["log"].append(time.perf_counter() - start)
            lsn = _wal(bench)
            with _as_files() if how == "files" else contextlib.nullcontext():
                samples[how].append(_timed_register(logged.model_uri, f"alone-{how}"))
            wal[how].append((_wal(bench) - lsn) / MiB)
    formats = bench.pg.execute("SELECT name, array_agg(DISTINCT format) FROM models WHERE name LIKE 'alone-%%'"
                               " GROUP BY name ORDER BY name").fetchall()
    assert formats == [("alone-files", ["files"]), ("alone-zip", ["mlflow-zip"])], formats
    bench.facts[f"registration alone {size}"] = {**samples, "wal_mib": wal}
    bench.row(f"`log_model` without registering (the one upload), {size}", Stat(samples["log"]),
              Stat(samples["stock log"], label="stock"), None)
    bench.row(f"registering the LoggedModel alone, zip assembled in the database, {size}", Stat(samples["zip"]),
              Stat(samples["stock"], label="stock"), None)
    bench.row(f"registering the LoggedModel alone: zip assembled against format 'files' (no second write), {size}",
              Stat(samples["zip"]), Stat(samples["files"], label="'files'"), None)
    bench.row(f"WAL written by registering alone: zip assembled against format 'files', {size}",
              Stat(wal["zip"], unit="MiB"), Stat(wal["files"], unit="MiB", label="'files'"), None)


def _log(model: Any, name: str | None, register: bool):
    """``mlflow.sklearn.log_model`` in a new run (registered as ``name`` if ``register``); its ModelInfo."""
    import mlflow

    with mlflow.start_run():
        return mlflow.sklearn.log_model(model, name="model", registered_model_name=name if register else None,
                                        **_LOG_ARGS)


def _timed_register(model_uri: str, name: str) -> float:
    import mlflow

    start = time.perf_counter()
    mlflow.register_model(model_uri, name)
    return time.perf_counter() - start


def _wal(bench: Bench) -> int:
    """The server's WAL insert position, in bytes."""
    return int(bench.pg.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0])


@contextlib.contextmanager
def _as_files() -> Iterator[None]:
    """Versions registered meanwhile (in this process) are of format 'files' whatever their size."""
    from mlflow_pgmodels._storage import model_binary

    limit = model_binary.MAX_BLOB_BYTES
    model_binary.MAX_BLOB_BYTES = 0
    try:
        yield
    finally:
        model_binary.MAX_BLOB_BYTES = limit
