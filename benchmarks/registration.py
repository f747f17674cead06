"""Writes: ``log_model(..., registered_model_name=)`` on both sides, and the register step against a plain COPY."""

from __future__ import annotations

import shutil
import time
from typing import Any

from benchmarks import MiB, database
from benchmarks.bench import Bench, timed
from benchmarks.models import log_model
from benchmarks.report import Stat


def log_and_register(bench: Bench, model: Any, name: str, size: str) -> dict[str, list[str]]:
    """Log and register ``model`` as ``name`` on both sides; the version numbers made on each."""
    versions: dict[str, list[str]] = {"pgmodels": [], "stock": []}
    samples: dict[str, list[float]] = {"pgmodels": [], "stock": []}
    repeats = bench.plan.repeats if size != "512 MB" else 1
    for _ in range(repeats):
        for side in (bench.stock, bench.ours):  # alternate, so drift hits both alike
            side.activate()
            start = time.perf_counter()
            versions[side.name].append(log_model(model, name))
            samples[side.name].append(time.perf_counter() - start)
    bench.row(f"`log_model(..., registered_model_name=)`, {size}", Stat(samples["pgmodels"]),
              Stat(samples["stock"], label="stock"), 1.2 if size != "512 MB" else None)
    return versions


def database_part(bench: Bench, model: Any, size: str) -> None:
    """The register step alone (version number + COPY + digest) against a plain COPY of the same zip.

    ``create_model_version`` of a saved model directory packs it and inserts it; the packing,
    timed on its own just before, is taken off its time.
    """
    import mlflow

    from mlflow_pgmodels import archive
    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    saved = bench.base / "scratch" / "saved"
    zip_path = bench.base / "scratch" / "model.zip"
    mlflow.sklearn.save_model(model, saved, serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    store = PgModelsRegistryStore(bench.ours.uri)
    store.create_registered_model("dbpart")
    database.create_copy_table(bench.pg)
    ours, copy, pack = [], [], []
    for _ in range(bench.plan.repeats):
        start = time.perf_counter()
        with archive.pack(str(saved)) as packed:
            pack.append(time.perf_counter() - start)
            whole = timed(store.create_model_version, "dbpart", str(saved), local_model_path=str(saved))
            ours.append(whole - pack[-1])
            with open(zip_path, "wb") as f:
                shutil.copyfileobj(packed, f, 8 * MiB)
        copy.append(timed(database.plain_copy, bench.pg, str(zip_path)))
        bench.pg.execute("TRUNCATE bench_copy")
    bench.row(f"register, database part, {size}", Stat(ours), Stat(copy, label="plain COPY"), 1.2)
    bench.row(f"register, packing the zip, {size}", Stat(pack), None, None)
    shutil.rmtree(saved)
