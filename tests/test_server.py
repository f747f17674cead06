"""`mlflow server` on the pgmodels store, and clients that know only the server's address.

Every client here runs in its own process with MLFLOW_TRACKING_URI=http://127.0.0.1:<port> as its
whole configuration: no pgmodels:// URI, no database host, user or password (once, the test
process itself, pointed at the same URL, is one more such client).
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._cache import cache
from tests import sample
from tests.mlflow_server import client_env, mlflow_server, run_client, run_command

REGISTER_AND_LOAD = """
import json, sys
import mlflow
from tests import sample

slopes = [float(s) for s in sys.argv[1:]]
versions = [int(sample.log(sample.regressor(slope), "churn").registered_model_version) for slope in slopes]
latest = mlflow.pyfunc.load_model("models:/churn/latest")
print(json.dumps({"versions": versions, "latest": list(latest.predict(sample.X[:3]))}))
"""


def _expected(slope: float) -> list[float]:
    return list(sample.regressor(slope).predict(sample.X[:3]))


def _cached(monkeypatch, cache_dir) -> set[tuple[int, str]]:
    """(version, sha256) of each entry in a client's model cache."""
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_DIR", str(cache_dir))
    return {(entry.version, entry.digest) for entry in cache.entries()}


def _write_input_csv(path) -> None:
    import pandas as pd

    pd.DataFrame(sample.X[:3]).to_csv(path, index=False)


def test_remote_client_registers_and_loads_through_the_server(db, tmp_path, monkeypatch):
    # the server logs in as a writer role (sql/roles.sql), its password in PGPASSWORD, not in the URI
    user, password = db.login_role("pgmodels_writer")
    backend = f"pgmodels://{user}@127.0.0.1:{db.server.port}/{db.name}"
    with mlflow_server(tmp_path / "server", backend, env={"PGPASSWORD": password}) as server:
        client_out = run_client(server.url, tmp_path, REGISTER_AND_LOAD, "2", "7")
        out = json.loads(client_out.splitlines()[-1])

        assert out["versions"] == [1, 2]
        assert out["latest"] == pytest.approx(_expected(7.0))
        rows = db.sql("SELECT name, version, is_active, octet_length(model_binary) > 0 FROM models ORDER BY version")
        assert rows == [("churn", 1, True, True), ("churn", 2, True, True)]
        # the bytes came through the server's get-artifact endpoint, into the client's own cache
        assert "path=.pgmodels%2Fmodel.zip" in server.log()
        stored = set(db.sql("SELECT version, sha256 FROM models WHERE version = 2"))
        assert _cached(monkeypatch, tmp_path / "client-cache") == stored

        _write_input_csv(tmp_path / "in.csv")
        predicted = run_command(server.url, tmp_path, [
            sys.executable, "-m", "mlflow", "models", "predict", "-m", "models:/churn/latest",
            "-i", "in.csv", "-t", "csv", "--env-manager", "local"])
        assert json.loads(predicted.splitlines()[-1])["predictions"] == pytest.approx(_expected(7.0))

    assert server.failures() == []
    assert password not in server.log() + client_out + predicted


def test_sql_tracking_store_with_pgmodels_registry(db, tmp_path):
    tracking = db.server.socket_uri(db.name, scheme="postgresql")
    with mlflow_server(tmp_path / "server", tracking, registry_uri=db.uri) as server:
        script = REGISTER_AND_LOAD + """
client = mlflow.MlflowClient()
client.set_registered_model_alias("churn", "champion", 1)
champion = mlflow.pyfunc.load_model("models:/churn@champion")
print(json.dumps(list(champion.predict(sample.X[:3]))))
try:
    mlflow.pyfunc.load_model("models:/churn/9")
except mlflow.MlflowException as e:
    print(json.dumps([e.error_code, e.message]))
"""
        lines = run_client(server.url, tmp_path, script, "4", "6").splitlines()

        latest, champion, missing = json.loads(lines[-3]), json.loads(lines[-2]), json.loads(lines[-1])
        assert latest["versions"] == [1, 2]
        assert champion == pytest.approx(_expected(4.0))
        assert missing[0] == "RESOURCE_DOES_NOT_EXIST" and "version=9" in missing[1]
        assert db.sql("SELECT alias, version FROM pgm_aliases") == [("champion", 1)]
        # runs went to MLflow's own tables, versions to models
        assert db.sql("SELECT count(*) FROM runs") == [(2,)]
        assert db.sql("SELECT count(*) FROM models") == [(2,)]
        assert server.failures() == []

        # a row damaged in the database (before the server cached it): the remote load stops at once
        # with DATA_LOSS
        db.sql("INSERT INTO models (name, version, model_type, event, model_binary, format, sha256, size_bytes)"
               " SELECT name, 3, model_type, event, overlay(model_binary PLACING '\\x00'::bytea FROM 200), format,"
               " sha256, size_bytes FROM models WHERE version = 1")
        mlflow.set_tracking_uri(server.url)  # this test process, as one more remote client
        with pytest.raises(MlflowException) as e:
            mlflow.pyfunc.load_model("models:/churn/3")
        assert e.value.error_code == "DATA_LOSS" and "corrupt" in e.value.message
        assert not list(cache.entries())
        assert "Traceback" not in server.log()


CONCURRENT_CLIENT = """
import json, sys
import mlflow
from tests import sample

results = []
for slope in (float(s) for s in sys.argv[1:]):
    version = int(sample.log(sample.regressor(slope), "churn").registered_model_version)
    results.append([slope, version])
loads = []
for slope, version in results:
    model = mlflow.pyfunc.load_model(f"models:/churn/{version}")
    loads.append([slope, list(model.predict(sample.X[:3]))])
first = mlflow.pyfunc.load_model("models:/churn/1")
loads.append([1.0, list(first.predict(sample.X[:3]))])
print(json.dumps({"registered": results, "loads": loads}))
"""


@pytest.mark.slow
def test_concurrent_clients_on_a_multi_worker_server(db, tmp_path, monkeypatch):
    clients = 4
    with mlflow_server(tmp_path / "server", db.uri, workers=2) as server:
        run_client(server.url, tmp_path, REGISTER_AND_LOAD, "1")  # version 1, loaded by everyone below
        procs = []
        for i in range(clients):
            workdir = tmp_path / f"client{i}"
            workdir.mkdir()
            slopes = [str(10 * (i + 1) + k) for k in range(2)]
            procs.append(subprocess.Popen(
                [sys.executable, "-c", CONCURRENT_CLIENT, *slopes], cwd=workdir, text=True,
                env=client_env(server.url, workdir / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outputs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-6000:]
            outputs.append(json.loads(stdout.splitlines()[-1]))

    registered = [tuple(pair) for out in outputs for pair in out["registered"]]
    versions = sorted(version for _, version in registered)
    assert versions == list(range(2, 2 + 2 * clients))  # distinct, no gaps
    for out in outputs:
        for slope, predictions in out["loads"]:
            assert predictions == pytest.approx(_expected(slope))
    # every client cached exactly the bytes the database holds (entries are keyed by SHA-256)
    stored = set(db.sql("SELECT version, sha256 FROM models"))
    for i in range(clients):
        cached = _cached(monkeypatch, tmp_path / f"client{i}" / "cache")
        assert len(cached) == 3 and cached <= stored
    assert server.failures() == []
