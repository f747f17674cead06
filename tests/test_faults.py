"""Faults: a killed registration, a database restart, a dropped download, damaged bytes.

What a user relies on: a version that was reported is there, whole, under its number; a version
that was not reported leaves no trace; failures are clear MlflowExceptions, never a wrong model.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import mlflow
import numpy as np
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._cache import cache
from tests import procs, sample

pytestmark = pytest.mark.slow

BIG_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory) -> str:
    """A loadable model directory of ~200 MB (a regressor with slope 7 plus random weights)."""
    path = str(tmp_path_factory.mktemp("big") / "model")
    mlflow.sklearn.save_model(sample.regressor(7.0), path, pip_requirements=["scikit-learn"])
    with open(os.path.join(path, "weights.bin"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(BIG_BYTES))
    return path


def _small_model_dir(path: str, slope: float) -> str:
    mlflow.sklearn.save_model(sample.regressor(slope), path, pip_requirements=["scikit-learn"],
                              serialization_format="cloudpickle")
    return path


def _predicts_slope(model_uri: str, slope: float) -> bool:
    return mlflow.pyfunc.load_model(model_uri).predict(sample.X[:1])[0] == pytest.approx(slope * sample.X[0, 0])


# ---------------------------------------------------------------------- killed registration


def test_registration_killed_during_copy_leaves_no_trace(client, db, tmp_path, big_model_dir):
    client.create_registered_model("big")
    client.create_model_version("big", _small_model_dir(str(tmp_path / "v1"), 1.0))

    child = procs.context().Process(target=procs.register_dir,
                                    args=(db.uri, str(tmp_path / "child"), "big", big_model_dir))
    child.start()
    # kill it once the COPY of the model bytes is well under way
    procs.wait_for("the COPY to be running", lambda: db.sql(
        "SELECT 1 FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid)"
        " WHERE p.datname = current_database() AND a.query LIKE 'COPY%%' AND p.bytes_processed > 20000000"))
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    procs.wait_for("the killed backend to go away", lambda: not db.sql(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY%%'"))

    assert child.exitcode == -signal.SIGKILL
    assert db.sql("SELECT version FROM models") == [(1,)]
    assert db.sql("SELECT next_version FROM pgm_registered_models WHERE name = 'big'") == [(2,)]
    assert [int(mv.version) for mv in client.search_model_versions("name = 'big'")] == [1]

    mv = client.create_model_version("big", _small_model_dir(str(tmp_path / "v2"), 2.0))
    assert int(mv.version) == 2
    assert _predicts_slope("models:/big/latest", 2.0)


# ---------------------------------------------------------------------- server restart
def _keep_working(uri: str, workdir: str, name: str, stop_file: str, log_file: str) -> None:
    """In a child: register a new model and load latest, over and over, logging each outcome."""
    procs.enter(workdir, tracking_uri=uri)
    os.dup2(os.open(os.path.join(workdir, "stderr.txt"), os.O_WRONLY | os.O_CREAT), 2)
    client = MlflowClient()
    slope = 0
    with open(log_file, "a") as log:
        while not os.path.exists(stop_file):
            slope += 1
            path = _small_model_dir(os.path.join(workdir, f"m{slope}"), slope)
            calls = (("register", lambda: int(client.create_model_version(name, source=path).version)),
                     ("load", lambda: float(mlflow.pyfunc.load_model(f"models:/{name}/latest").predict(sample.X[:1])[0])))
            for call, fn in calls:
                entry = {"call": call, "slope": slope, "time": time.time()}
                try:
                    entry["result"] = fn()
                except MlflowException as e:
                    entry.update(error=e.error_code, message=e.message)
                except Exception as e:  # anything else is a bug: recorded and asserted on
                    entry.update(error=type(e).__name__, message=str(e))
                log.write(json.dumps(entry) + "\n")
                log.flush()
            time.sleep(0.05)


def test_loop_survives_a_database_restart(pg, client, db, tmp_path):
    client.create_registered_model("m")
    client.create_model_version("m", _small_model_dir(str(tmp_path / "v1"), 0.5))
    log_file, stop_file = str(tmp_path / "log.jsonl"), str(tmp_path / "stop")

    def entries() -> list[dict]:
        with open(log_file) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def ok_after(t: float) -> int:
        return sum(1 for e in entries() if e["time"] > t and "error" not in e)

    open(log_file, "w").close()
    child = procs.context().Process(target=_keep_working,
                                    args=(db.uri, str(tmp_path / "child"), "m", stop_file, log_file))
    child.start()
    try:
        procs.wait_for("the loop to work", lambda: ok_after(0) >= 6)
        pg.stop()
        try:
            down = time.time()
            procs.wait_for("a call to fail while the server is down", lambda: any(
                "error" in e for e in entries() if e["time"] > down), timeout=60)
        finally:
            pg.start()
        up = time.time()
        procs.wait_for("the loop to recover", lambda: ok_after(up) >= 6)
    finally:
        open(stop_file, "w").close()
        child.join(60)
    log = entries()

    assert child.exitcode == 0
    failed = [e for e in log if "error" in e]
    assert failed and {e["error"] for e in failed} == {"TEMPORARILY_UNAVAILABLE"}, failed
    assert all("not reachable or the connection was lost" in e["message"] for e in failed)
    assert "Traceback" not in (tmp_path / "child" / "stderr.txt").read_text()
    # every version the loop was told about is there, gap-free, and holds that model
    registered = {e["result"]: e["slope"] for e in log if e["call"] == "register" and "error" not in e}
    in_db = [v for (v,) in db.sql("SELECT version FROM models WHERE name = 'm' ORDER BY version")]
    assert in_db == list(range(1, len(in_db) + 1))
    assert set(registered) <= set(in_db)
    for version, slope in registered.items():
        assert _predicts_slope(f"models:/m/{version}", slope), version


# ---------------------------------------------------------------------- dropped download
def test_connection_lost_mid_download_leaves_no_cache_entry(client, db, big_model_dir):
    client.create_registered_model("big")
    client.create_model_version("big", big_model_dir)
    killed = []

    def kill_the_reader():
        with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), autocommit=True) as conn:
            def reader():
                return conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE '%%substring(model_binary%%' AND pid <> pg_backend_pid()").fetchone()
            pid = procs.wait_for("the download to start", reader, timeout=60)[0]
            killed.append(conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0])

    killer = threading.Thread(target=kill_the_reader)
    killer.start()
    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/big/1")
    killer.join()

    assert killed == [True]
    assert e.value.error_code == "TEMPORARILY_UNAVAILABLE"
    assert "Model 'big' version 1" in e.value.message and "retried" in e.value.message
    assert cache.entries() == []
    assert [d for _, dirs, _ in os.walk(cache.root()) for d in dirs if d.startswith(".fill-")] == []
    assert _predicts_slope("models:/big/1", 7.0)  # the next try simply works


# ---------------------------------------------------------------------- damaged bytes
@pytest.mark.parametrize("damage", [
    "set_byte(model_binary, 300, get_byte(model_binary, 300) # 255)",  # one byte flipped
    "substring(model_binary FROM 1 FOR octet_length(model_binary) - 100)",  # truncated
], ids=["flipped", "truncated"])
def test_damaged_model_binary_is_refused_naming_model_and_version(client, db, tmp_path, damage):
    client.create_registered_model("churn")
    for slope in (1.0, 2.0):
        client.create_model_version("churn", _small_model_dir(str(tmp_path / f"m{slope}"), slope))
    db.sql(f"UPDATE models SET model_binary = {damage} WHERE name = 'churn' AND version = 2")

    for load in (mlflow.pyfunc.load_model, mlflow.sklearn.load_model):
        with pytest.raises(MlflowException) as e:
            load("models:/churn/latest")
        assert e.value.error_code == "DATA_LOSS"
        assert "Model 'churn' version 2" in e.value.message and "corrupt" in e.value.message
    assert [entry.version for entry in cache.entries()] == []
    assert _predicts_slope("models:/churn/1", 1.0)


def test_damaged_row_without_a_checksum_is_refused(client, db, tmp_path):
    """Rows written by other code have no SHA-256: a broken zip is still an error, not a model."""
    client.create_registered_model("churn")
    client.create_model_version("churn", _small_model_dir(str(tmp_path / "m"), 1.0))
    db.sql("UPDATE models SET sha256 = NULL, size_bytes = NULL,"
           " model_binary = substring(model_binary FROM 1 FOR octet_length(model_binary) / 2)")

    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/churn/1")
    assert e.value.error_code == "DATA_LOSS"
    assert "Model 'churn' version 1" in e.value.message
    assert cache.entries() == []
