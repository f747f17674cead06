"""Reads: repeated load, first load into an empty cache, client memory, and concurrent first loads."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks import MiB, database
from benchmarks.bench import Bench, timed
from benchmarks.processes import child, child_result, load_in_child, load_together
from benchmarks.report import Stat


def repeated_load(bench: Bench, size: str) -> None:
    """``load_model("models:/m/latest")`` again and again in one process, on both sides."""
    import mlflow

    samples = {}
    for side in (bench.stock, bench.ours):
        side.activate()
        mlflow.pyfunc.load_model("models:/m/latest")  # warm: ours fills the cache here
        samples[side.name] = [timed(mlflow.pyfunc.load_model, "models:/m/latest") for _ in range(bench.plan.loads)]
    bench.row(f'repeated `load_model("models:/m/latest")` in one process, {size}', Stat(samples["pgmodels"]),
              Stat(samples["stock"], label="stock"), 1.1)


def first_load(bench: Bench, name: str, version: str, size: str) -> None:
    """A load with an empty cache against one binary-format fetch of the same bytes plus unzip."""
    import mlflow

    bench.ours.activate()
    fetch, load, raw, raw_load = [], [], [], []
    repeats = bench.plan.repeats + 2 if size != "512 MB" else 1

    def settled(remove) -> None:
        remove()
        os.sync()  # deleting 100s of MB costs disk time later: not in the next sample

    for i in range(repeats):
        dst = bench.base / "scratch" / f"raw{i}"
        settled(bench.empty_cache)
        fetch.append(timed(mlflow.artifacts.download_artifacts, f"models:/{name}/{version}"))
        settled(bench.empty_cache)
        raw.append(timed(database.raw_fetch_unzip, bench.pg, name, version, dst))
        settled(lambda: shutil.rmtree(dst))
        if size != "512 MB":
            load.append(timed(mlflow.pyfunc.load_model, f"models:/{name}/{version}"))
            start = time.perf_counter()
            database.raw_fetch_unzip(bench.pg, name, version, dst)
            mlflow.pyfunc.load_model(str(dst))
            raw_load.append(time.perf_counter() - start)
            settled(lambda: shutil.rmtree(dst))
    bench.row(f"first load, empty cache, {size}: download into the cache", Stat(fetch),
              Stat(raw, label="raw fetch + unzip"), 1.3)
    if load:
        bench.row(f"first load, empty cache, {size}: whole `load_model`", Stat(load),
                  Stat(raw_load, label="raw fetch + unzip + load"), 1.3)


def memory(bench: Bench, name: str, version: str, stock_version: str, size: str) -> None:
    """Peak RSS during a load beyond what the loaded model itself occupies, against the blob size."""
    blob = database.blob_mib(bench.pg, name, version)
    bench.empty_cache()
    procs = [child(bench.stock, f"models:/{name}/{stock_version}"), child(bench.ours, f"models:/{name}/{version}")]
    stock, first = (child_result(p) for p in procs)  # side by side: memory is per process
    model_mib = (stock["rss_after"] - stock["rss_before"]) / MiB
    cached = load_in_child(bench.ours, f"models:/{name}/{version}") if bench.plan.cached_memory else None

    def extra(r: dict) -> float:
        return max(0.0, (r["rss_peak"] - r["rss_before"]) / MiB - model_mib)

    bench.facts[f"memory {size}"] = {"blob_mib": blob, "model_mib": model_mib, "stock": stock,
                                     "first": first, "cached": cached}
    bench.row(f"client peak memory beyond the loaded model, first load, {size}",
              Stat([extra(first)], unit="MiB"), Stat([blob], unit="MiB", label="blob"), 1.5,
              note=f"stock: {extra(stock):.0f} MiB")
    if cached and size != "512 MB":
        bench.row(f"client peak memory beyond the loaded model, cached load, {size}",
                  Stat([extra(cached)], unit="MiB"), Stat([blob], unit="MiB", label="blob"), 1.5)


def concurrent(bench: Bench, size: str, versions: list[str], stock_versions: list[str]) -> None:
    """N processes load one new version at once; each against a lone load of a new version."""
    import mlflow

    from mlflow_pgmodels._cache import cache

    plan, pg = bench.plan, bench.pg
    n = plan.concurrent
    bench.ours.activate()
    client = mlflow.MlflowClient()
    lone_v, together_v, probe_v = ([client.copy_model_version(f"models:/m/{versions[-1]}", "m").version
                                    for _ in range(k)] for k in (plan.lone, 1, 1))
    lone = [load_in_child(bench.ours, f"models:/m/{v}")["seconds"] for v in lone_v]
    before = database.chunk_reads(pg)
    results = load_together(bench.ours, f"models:/m/{together_v[0]}", n, bench.base)
    after = database.chunk_reads(pg)
    mlflow.pyfunc.load_model(f"models:/m/{probe_v[0]}")  # one read of the same bytes, for scale
    reads = (after - before) / (database.chunk_reads(pg) - after)
    entries = [e for e in cache.entries() if e.name == "m" and e.version == int(together_v[0])]
    leftovers = [p for p in Path(cache.root()).rglob(".*") if p.name.startswith((".fill-", ".deleting"))]
    together = [r["seconds"] for r in results]
    bench.facts["concurrent"] = {"lone": lone, "together": together, "blob_reads": reads,
                                 "entries": len(entries), "leftovers": len(leftovers)}
    bench.row(f"{n} processes load one new version at once, {size}: slowest", Stat([max(together)]),
              Stat(lone, label="lone first load"), 1.5, note=f"median {statistics.median(together):.3f} s")
    bench.row(f"{n} processes at once: times the blob was read from the database", Stat([round(reads, 2)], unit=""),
              None, None, note=f"{len(entries)} cache entry, {len(leftovers)} leftovers; goal: 1")
    if plan.stock_concurrent:
        lone_s = [load_in_child(bench.stock, f"models:/m/{stock_versions[-1]}")["seconds"] for _ in range(plan.lone)]
        together_s = [r["seconds"]
                      for r in load_together(bench.stock, f"models:/m/{stock_versions[-1]}", n, bench.base)]
        bench.row(f"stock MLflow, {n} processes at once (for comparison): slowest", Stat([max(together_s)]),
                  Stat(lone_s, label="stock lone load"), None)
