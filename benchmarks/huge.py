"""The 512 MB model: register, first load, memory, and that it predicts (full run only)."""

from __future__ import annotations

from benchmarks import database
from benchmarks.bench import Bench
from benchmarks.loading import first_load, memory
from benchmarks.models import huge_model
from benchmarks.registration import log_and_register
from benchmarks.report import Stat


def huge(bench: Bench, target_mb: int) -> None:
    """Register a ``target_mb`` MiB model on both sides, load it with an empty cache, and predict."""
    import mlflow

    model, X = huge_model(target_mb)
    size = f"{target_mb} MB"
    versions = log_and_register(bench, model, "huge", size)
    version = versions["pgmodels"][-1]
    bench.facts["huge_blob_mib"] = database.blob_mib(bench.pg, "huge", version)
    del model
    first_load(bench, "huge", version, size)
    memory(bench, "huge", version, versions["stock"][-1], size)
    bench.ours.activate()
    loaded = mlflow.pyfunc.load_model(f"models:/huge/{version}")
    bench.row(f"{size} model: register + load + predict work", Stat([1], unit=""), None, None,
              note=f"blob {bench.facts['huge_blob_mib']:.0f} MiB, prediction {loaded.predict(X)[0]}")
