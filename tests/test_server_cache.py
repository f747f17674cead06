"""`mlflow server` reads each version from the database once, however many remote clients load it.

Clients are separate processes (a fork server with MLflow preloaded, tests/procs.py), each with
its own empty model cache and nothing but the server's address. What the database did is read
from its own statistics: the TOAST blocks of ``models`` (where ``model_binary`` lives) that were
read or found in shared buffers, counted once every backend of the test database has exited
(a backend flushes its statistics when it exits), and compared with one whole read of the blob.
"""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pytest
from mlflow.protos.databricks_pb2 import DATA_LOSS, ErrorCode

from mlflow_pgmodels._cache import cache
from tests import procs, sample
from tests.conftest import make_database
from tests.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow  # a 2-worker server and a dozen client processes: ~45 s for the module

WEIGHTS_BYTES = 24 * 1024 * 1024  # a version of a few tens of MB
CLIENTS = 6
SLOPE = 7.0


@pytest.fixture(scope="module")
def served(pg, tmp_path_factory):
    """A database with ``m`` version 1 (~24 MB) and a 2-worker `mlflow server` on it."""
    db = make_database(pg)
    # no autovacuum pass over the TOAST table while blocks are counted
    db.sql("ALTER TABLE models SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
    base = tmp_path_factory.mktemp("server-cache")
    model_dir = str(base / "model")
    mlflow.sklearn.save_model(sample.regressor(SLOPE), model_dir, pip_requirements=["scikit-learn"])
    with open(os.path.join(model_dir, "weights.bin"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(WEIGHTS_BYTES))
    client = mlflow.MlflowClient(tracking_uri=db.uri, registry_uri=db.uri)
    client.create_registered_model("m")
    client.create_model_version("m", model_dir)
    try:
        with mlflow_server(base / "server", db.uri, workers=2) as server:
            yield db, server, base
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")


def _toast_blocks(db) -> int:
    """TOAST blocks of ``models`` read so far (from disk or shared buffers), all backends counted.

    Every other backend of the database is ended first (the server's pool reconnects on its next
    call): a backend flushes its statistics when it exits, while an idle one may hold them back
    for seconds.
    """
    db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
           " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    procs.wait_for("the database's backends to exit", lambda: not db.sql(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    return db.sql("SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)"
                  " FROM pg_statio_all_tables WHERE relid = 'models'::regclass")[0][0]


def _one_read(db, name: str, version: int) -> int:
    """TOAST blocks that one whole read of a version's blob touches."""
    before = _toast_blocks(db)
    db.sql("SELECT length(sha256(model_binary)) FROM models WHERE name = %s AND version = %s", (name, version))
    return _toast_blocks(db) - before


def load_remotely(server_url: str, workdir: str, model_uri: str, go_file: str) -> None:
    """In a child: a remote client with an empty cache; loads ``model_uri`` once ``go_file`` exists."""
    procs.enter(workdir, tracking_uri=server_url)
    with open("ready", "w"):
        pass
    procs.wait_for("the start signal", lambda: os.path.exists(go_file))
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        result = {"prediction": float(model.predict(sample.X[:1])[0])}
    except mlflow.exceptions.MlflowException as e:
        result = {"error": e.error_code, "message": e.message}
    with open("result.json", "w") as f:
        json.dump(result, f)


def _load_together(server, base, model_uri: str, n: int, tag: str) -> list[dict]:
    """``n`` remote clients load ``model_uri`` at the same moment; their results."""
    ctx = procs.context()
    go = base / f"go-{tag}"
    dirs = [base / f"{tag}-client{i}" for i in range(n)]
    children = [ctx.Process(target=load_remotely, args=(server.url, str(d), model_uri, str(go))) for d in dirs]
    for child in children:
        child.start()
    procs.wait_for("the clients to be ready", lambda: all((d / "ready").exists() for d in dirs))
    go.touch()
    for child in children:
        child.join(timeout=300)
        assert child.exitcode == 0
    return [json.loads((d / "result.json").read_text()) for d in dirs]


def _server_entries(monkeypatch, base) -> set[tuple[str, int]]:
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_DIR", str(base / "server" / "server-cache"))
    return {(e.name, e.version) for e in cache.entries()}


def _expected() -> float:
    return pytest.approx(SLOPE * sample.X[0, 0])


def test_concurrent_remote_cold_loads_read_the_blob_once(served):
    db, server, base = served
    before = _toast_blocks(db)

    results = _load_together(server, base, "models:/m/1", CLIENTS, "digest")

    assert results == [{"prediction": _expected()}] * CLIENTS
    blocks = _toast_blocks(db) - before
    one_read = _one_read(db, "m", 1)
    assert one_read > WEIGHTS_BYTES // 8192  # the counter sees the blob
    assert round(blocks / one_read) == 1, f"the blob was read {blocks / one_read:.2f} times for {CLIENTS} clients"


def test_row_without_digest_is_hashed_once(served):
    db, server, base = served
    # written by other code: no sha256 and no size recorded
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary)"
           " SELECT 'plain', 1, model_type, event, model_binary FROM models WHERE name = 'm' AND version = 1")
    before = _toast_blocks(db)

    results = _load_together(server, base, "models:/plain/1", 4, "plain")

    assert results == [{"prediction": _expected()}] * 4
    blocks = _toast_blocks(db) - before
    one_read = _one_read(db, "plain", 1)
    assert round(blocks / one_read) == 1, f"the blob was read {blocks / one_read:.2f} times for 4 clients"


def test_damaged_version_is_data_loss_and_never_cached_on_the_server(served, monkeypatch):
    db, server, base = served
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary, format, sha256, size_bytes)"
           " SELECT 'damaged', 1, model_type, event, model_binary, format, sha256, size_bytes"
           " FROM models WHERE name = 'm' AND version = 1")
    db.sql("UPDATE models SET model_binary = overlay(model_binary PLACING '\\x00ff00ff'::bytea FROM 100000)"
           " WHERE name = 'damaged'")

    results = _load_together(server, base, "models:/damaged/1", 3, "damaged")

    assert [r["error"] for r in results] == [ErrorCode.Name(DATA_LOSS)] * 3
    assert all("corrupt in the database" in r["message"] for r in results)
    assert ("damaged", 1) not in _server_entries(monkeypatch, base)
    # restored from a backup: served, and kept on the server from then on
    db.sql("UPDATE models SET model_binary = (SELECT model_binary FROM models WHERE name = 'm' AND version = 1)"
           " WHERE name = 'damaged'")
    assert _load_together(server, base, "models:/damaged/1", 1, "restored") == [{"prediction": _expected()}]
    assert ("damaged", 1) in _server_entries(monkeypatch, base)
