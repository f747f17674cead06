"""Models past PostgreSQL's 1 GB value limit: stored as files in pieces, end to end.

One 1.1 GiB model serves every case (writing it costs seconds): logged and registered, loaded
directly, by the seed's helper API, through ``mlflow server``, and registered again from a local
directory; the client's memory stays far below the model's size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import joblib
import mlflow
import pytest
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_pgmodels import load_model_from_db
from tests.conftest import make_database
from tests.mlflow_server import mlflow_server, run_client

pytestmark = pytest.mark.slow

SIZE = 1100 * 2**20  # 1.1 GiB: its zip cannot be one bytea value


class WeightsModel(mlflow.pyfunc.PythonModel):
    """Predicts the SHA-256 of its weights file, read in slices (so loading it needs little memory)."""

    def load_context(self, context):
        self.path = context.artifacts["weights"]

    def predict(self, context, model_input, params=None):
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        return [digest.hexdigest()] * len(model_input)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[str, str]:
    """A 1.1 GiB file whose every MiB differs, and its SHA-256."""
    path = tmp_path_factory.mktemp("weights") / "weights.bin"
    block = os.urandom(2**20)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(SIZE // 2**20):
            chunk = i.to_bytes(8, "little") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    yield str(path), digest.hexdigest()
    path.unlink()


@pytest.fixture(autouse=True)
def _no_gigabytes_left_behind(tmp_path):
    """pytest keeps the last runs' directories: without this each run would leave ~10 GB there."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_model_past_1gb_is_logged_registered_and_loaded_everywhere(client, db, tmp_path, weights):
    path, digest = weights
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=WeightsModel(), artifacts={"weights": path},
                                       pip_requirements=["mlflow"], registered_model_name="huge")

    # the version references the LoggedModel's pieces: the 1.1 GiB went to the database once
    fmt, size, marker = db.sql("SELECT format, size_bytes, model_binary FROM models WHERE name = 'huge'")[0]
    assert fmt == "files" and size > SIZE
    assert db.sql("SELECT count(*), sum(size_bytes) FROM pgm_blobs WHERE size_bytes >= %s", (SIZE,)) == [(1, SIZE)]
    assert db.sql("SELECT f.blob_id = a.blob_id FROM pgm_version_files f JOIN pgm_artifacts a"
                  " ON a.path LIKE '%%/' || f.path WHERE f.path LIKE '%%weights.bin'") == [(True,)]
    # what the seed's plain SELECT model_binary sees: a line of text, never a model
    marker = bytes(marker)
    assert marker.startswith(b"pgmodels: this model version is stored as files") and len(marker) < 400
    with pytest.raises(Exception):
        joblib.load(io.BytesIO(marker))

    loaded = mlflow.pyfunc.load_model("models:/huge/1")
    assert loaded.predict([0]) == [digest]
    # (MLflow downloads a LoggedModel of a remote store into the directory given, else a new
    # temporary one it never removes)
    (tmp_path / "logged").mkdir()
    logged = mlflow.pyfunc.load_model(f"models:/{info.model_id}", dst_path=str(tmp_path / "logged"))
    assert logged.predict([0]) == [digest]
    shutil.rmtree(tmp_path / "logged")  # disk: each copy of the model is 1.1 GiB

    # through an MLflow server, by a client that has only its address
    with mlflow_server(tmp_path / "server", db.uri) as server:
        out = run_client(server.url, tmp_path, REMOTE_LOAD, timeout=600)
        # the UI's download of one file of the version
        import requests

        with requests.get(f"{server.url}/model-versions/get-artifact", stream=True, timeout=600,
                          params={"name": "huge", "version": "1", "path": "artifacts/weights.bin"}) as response:
            assert response.status_code == 200
            served = hashlib.sha256()
            for chunk in response.iter_content(8 << 20):
                served.update(chunk)
        assert server.failures() == []
    shutil.rmtree(tmp_path / "server")
    shutil.rmtree(tmp_path / "client-cache")
    assert json.loads(out.splitlines()[-1]) == {"prediction": digest}
    assert served.hexdigest() == digest

    # a copy references the same pieces; the version outlives its LoggedModel's files
    client.copy_model_version("models:/huge/1", "huge-copy")
    assert db.sql("SELECT format FROM models WHERE name = 'huge-copy'") == [("files",)]
    location = client.get_logged_model(info.model_id).artifact_location
    get_artifact_repository(location).delete_artifacts()
    assert db.sql("SELECT count(*) FROM pgm_artifacts") == [(0,)]
    assert db.sql("SELECT count(*) FROM pgm_blobs WHERE size_bytes >= %s", (SIZE,)) == [(1,)]
    from mlflow_pgmodels._cache import cache

    cache.clear()
    assert mlflow.pyfunc.load_model("models:/huge-copy/1").predict([0]) == [digest]
    client.delete_registered_model("huge")
    client.delete_registered_model("huge-copy")
    assert db.sql("SELECT count(*) FROM pgm_blobs") == [(0,)]  # the last reference took the pieces
    assert db.sql("SELECT count(*) FROM pgm_blob_pieces") == [(0,)]


def test_a_model_directory_past_1gb_is_uploaded_in_pieces_and_loads_in_bounded_memory(client, db, pg, tmp_path,
                                                                                         weights):
    path, digest = weights
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=WeightsModel(), artifacts={"weights": path},
                             pip_requirements=["mlflow"])
    client.create_registered_model("huge")
    version = client.create_model_version("huge", str(model_dir), tags={"event": "cpi", "model_type": "weights"})
    assert int(version.version) == 1
    assert db.sql("SELECT format FROM models WHERE name = 'huge'") == [("files",)]

    # the seed's helper API
    model, number = load_model_from_db("huge", "cpi", "weights", uri=db.uri)
    assert number == 1 and model.predict([0]) == [digest]

    # import-registry from a stock MLflow registry into another database keeps it whole
    stock = f"sqlite:///{tmp_path}/stock.db"
    stock_client = mlflow.MlflowClient(tracking_uri=stock, registry_uri=stock)
    stock_client.create_registered_model("huge")
    stock_client.create_model_version("huge", str(model_dir))
    other = make_database(pg)
    try:
        done = subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", "import-registry", "--from", stock,
                               "--uri", other.uri], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert other.sql("SELECT name, version, format FROM models") == [("huge", 1, "files")]
        assert other.sql("SELECT sha256 FROM models") == db.sql("SELECT sha256 FROM models")
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {other.name} WITH (FORCE)")

    # a fresh process with an empty cache: its peak memory stays a small fraction of the model
    child = subprocess.run(
        [sys.executable, "-c", MEASURED_LOAD, db.uri], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + str(_root()),
             "MLFLOW_PGMODELS_CACHE_DIR": str(tmp_path / "fresh-cache")})
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.splitlines()[-1])
    assert result["prediction"] == digest
    assert result["peak_rss_mib"] < 600, result  # the model is 1,100 MiB


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


REMOTE_LOAD = """
import json, mlflow
loaded = mlflow.pyfunc.load_model("models:/huge/1")
print(json.dumps({"prediction": loaded.predict([0])[0]}))
"""

MEASURED_LOAD = """
import json, sys, mlflow


def peak_rss_mib():  # this process's high-water mark (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


mlflow.set_tracking_uri(sys.argv[1])
loaded = mlflow.pyfunc.load_model("models:/huge/1")
prediction = loaded.predict([0])[0]
print(json.dumps({"prediction": prediction, "peak_rss_mib": peak_rss_mib()}))
"""
