"""Many remote clients load one new version at once through `mlflow server` (issue 13): ``--serving``.

Two 4-worker servers on this machine, one after the other: this store (``--backend-store-uri
pgmodels://``) and stock MLflow serving proxied artifacts from local files (``--backend-store-uri
sqlite:…``, ``--artifacts-destination`` its default ``./mlartifacts``). The same ~100 MB model is
logged and registered through each; then 32 client processes, each with an empty model cache and
nothing but the server's address, call ``mlflow.pyfunc.load_model("models:/served/1")`` at the same
moment. The clients are forked from one fork server that imported MLflow once and each loads a tiny
model first, so imports and set-up are not measured; the clock starts when all are ready (a go
file). On this store's side ``pg_stat_statements`` counts how often the server read the blob.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import database
from benchmarks.bench import FULL, Bench
from benchmarks.models import huge_model, log_model, tiny_model
from benchmarks.report import Stat

CLIENTS = {True: 32, False: 8}  # full run, quick run
MODEL_MB = {True: 100, False: 10}
WORKERS = 4
GOAL = 1.5  # slowest client, against stock MLflow's
NAME = "served"
_PRELOAD = ["mlflow", "mlflow.pyfunc", "mlflow.sklearn", "sklearn.neighbors", "sklearn.linear_model",
            "mlflow_pgmodels.version_artifact_repo", "benchmarks.serving"]


def serving(bench: Bench) -> None:
    """The rows of the ``--serving`` table: slowest and median client on both sides, blob reads."""
    from tests.mlflow_server import mlflow_server

    full = bench.plan == FULL
    n, size = CLIENTS[full], f"{MODEL_MB[full]} MB"
    model, X = huge_model(MODEL_MB[full])
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    sides = {"stock": f"sqlite:///{bench.base / 'serving-stock' / 'mlflow.db'}", "pgmodels": bench.ours.uri}
    times, reads = {}, None
    for side, backend in sides.items():
        workdir = bench.base / f"serving-{side}"
        bench.phase(f"serving: {side}")
        with mlflow_server(workdir, backend, workers=WORKERS,
                           env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}) as server:
            _log_through(server.url, model, workdir)
            times[side], chunks = _load_together(ctx, server.url, workdir, n, lambda: database.chunk_reads(bench.pg))
            if side == "pgmodels":
                reads = chunks / _chunks_per_read(bench, NAME, "1")
    ours, stock = times["pgmodels"], times["stock"]
    bench.facts["serving"] = {"clients": n, "workers": WORKERS, "times": times, "blob_reads": reads}
    bench.row(f"{n} remote clients load one new version at once through a {WORKERS}-worker `mlflow server`,"
              f" {size}: slowest", Stat([max(ours)]), Stat([max(stock)], label="stock, proxied local files"),
              GOAL, note=f"median {statistics.median(ours):.3f} s, stock {statistics.median(stock):.3f} s")
    bench.row(f"{n} remote clients at once: times the server read the blob from the database",
              Stat([round(reads, 2)], unit=""), None, None, note="goal: 1")


def _log_through(server_url: str, model, workdir: Path) -> None:
    """Register a tiny ``warmup`` and then ``model`` as version 1 of NAME, as a remote client of the server."""
    import mlflow

    mlflow.set_tracking_uri(server_url)
    mlflow.set_registry_uri(server_url)
    os.chdir(workdir)
    try:
        log_model(tiny_model()[0], "warmup")
        assert log_model(model, NAME) == "1"
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _chunks_per_read(bench: Bench, name: str, version: str) -> int:
    """How many chunk queries one whole read of a version's blob makes (blobs.read_blob)."""
    from mlflow_pgmodels._storage.model_binary import READ_CHUNK

    return math.ceil(database.blob_mib(bench.pg, name, version) * 2**20 / READ_CHUNK)


def _load_together(ctx, server_url: str, workdir: Path, n: int, count: Callable[[], int]) -> tuple[list[float], int]:
    """``n`` client processes load version 1 of NAME once a go file appears.

    Returns the seconds from then to each one's end, and by how much ``count()`` grew meanwhile.
    """
    go = workdir / "go"
    dirs = [workdir / f"client{i}" for i in range(n)]
    children = [ctx.Process(target=_client, args=(server_url, str(d), str(go))) for d in dirs]
    for child in children:
        child.start()
    deadline = time.monotonic() + 600
    while not all((d / "ready").exists() for d in dirs):
        if time.monotonic() > deadline or any(c.exitcode not in (None, 0) for c in children):
            raise RuntimeError("benchmark clients did not get ready")
        time.sleep(0.05)
    counted = count()
    started = time.time()
    go.touch()
    for child in children:
        child.join(timeout=600)
        if child.exitcode != 0:
            raise RuntimeError(f"a benchmark client failed ({child.exitcode})")
    counted = count() - counted
    results = [json.loads((d / "result.json").read_text()) for d in dirs]
    return [r["finished"] - started for r in results], counted


def _client(server_url: str, workdir: str, go_file: str) -> None:
    """One remote client: an empty cache of its own; loads version 1 of NAME once ``go_file`` exists."""
    import mlflow

    os.makedirs(workdir)
    os.chdir(workdir)
    for var in [v for v in os.environ if v.startswith("MLFLOW_") or v.startswith("PG")]:
        del os.environ[var]
    os.environ.update({"MLFLOW_TRACKING_URI": server_url, "MLFLOW_PGMODELS_CACHE_DIR": os.path.join(workdir, "cache"),
                       "MLFLOW_PGMODELS_PROGRESS": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    mlflow.pyfunc.load_model("models:/warmup/latest")  # a process that already talks to the server
    Path("ready").touch()
    while not os.path.exists(go_file):
        time.sleep(0.005)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    finished = time.time()
    Path("result.json").write_text(json.dumps({"finished": finished, "model": type(model.get_raw_model()).__name__}))
