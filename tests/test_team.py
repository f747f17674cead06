"""The team case end to end: one person logs, another loads, a server shows it, nothing on disk.

Process 1 (its own working directory and HOME, ``MLFLOW_TRACKING_URI=pgmodels://…``) logs a run
with text, a dict, an image and a registered sklearn model; its directories are then deleted.
Process 2 (other directories, same URI) loads the model three ways and downloads the run's files.
A real ``mlflow server`` on the same database, with MLflow's artifact defaults (no
``--artifacts-destination``, no ``--default-artifact-root``), in a third directory, serves the same
files over its REST API and takes new artifacts from a client that knows only its address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests import sample
from tests.mlflow_server import ROOT, mlflow_server, run_client

LOG = """
import json
import mlflow
import numpy as np
from tests import sample

mlflow.set_experiment("team")
with mlflow.start_run() as run:
    mlflow.log_text("hello team", "notes/hello.txt")
    mlflow.log_dict({"alpha": 0.5}, "config.json")
    mlflow.log_image(np.full((8, 8, 3), 200, dtype=np.uint8), "plots/square.png")
    info = mlflow.sklearn.log_model(sample.regressor(3.0), name="model", registered_model_name="team-model",
                                    pip_requirements=["scikit-learn"])
print(json.dumps({"run_id": run.info.run_id, "model_id": info.model_id,
                  "artifact_uri": run.info.artifact_uri}))
"""

LOAD = """
import json, os, sys
import mlflow
from tests import sample

run_id, model_id = sys.argv[1:3]
predictions = {uri: list(mlflow.pyfunc.load_model(uri).predict(sample.X[:3]))
               for uri in (f"runs:/{run_id}/model", f"models:/{model_id}", "models:/team-model/1")}
client = mlflow.MlflowClient()
listed = sorted(f.path for f in client.list_artifacts(run_id))
local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path="downloaded")
files = sorted(os.path.relpath(os.path.join(top, n), local) for top, _, names in os.walk(local) for n in names)
print(json.dumps({"predictions": predictions, "listed": listed, "files": files,
                  "text": mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt"),
                  "dict": mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")}))
"""

# a client that knows only the server's address
THROUGH_SERVER = """
import json
import mlflow

mlflow.set_experiment("remote")
with mlflow.start_run() as run:
    mlflow.log_text("sent through the server", "remote/note.txt")
print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
                  "listed": [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "remote")],
                  "text": mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/remote/note.txt")}))
"""


def _person(workdir: Path, uri: str, script: str, *args: str) -> dict:
    """Run ``script`` as a separate user: own working directory and HOME, only the database URI."""
    home = workdir / "home"
    home.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": uri, "MLFLOW_PGMODELS_CACHE_DIR": str(home / ".cache" / "pgmodels"),
           "MLFLOW_PGMODELS_PROGRESS": "0"}
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads(result.stdout.splitlines()[-1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return response.read()


def _artifact_dirs(*dirs: Path) -> list[Path]:
    """Every mlruns/ or mlartifacts/ directory below ``dirs``."""
    return [p for d in dirs for name in ("mlruns", "mlartifacts") for p in d.rglob(name)]


@pytest.mark.slow  # three processes and a server: about a minute
def test_one_logs_another_loads_after_the_first_is_gone_and_the_server_serves_it(db, tmp_path):
    logger_dir, loader_dir, server_dir = tmp_path / "alice", tmp_path / "bob", tmp_path / "server"
    logged = _person(logger_dir, db.uri, LOG)
    run_id, model_id = logged["run_id"], logged["model_id"]
    assert logged["artifact_uri"].startswith("pgmodels-artifacts:/")
    assert _artifact_dirs(logger_dir) == []
    shutil.rmtree(logger_dir)

    loaded = _person(loader_dir, db.uri, LOAD, run_id, model_id)
    expected = pytest.approx(list(sample.regressor(3.0).predict(sample.X[:3])))
    assert {uri: p == expected for uri, p in loaded["predictions"].items()} == {
        f"runs:/{run_id}/model": True, f"models:/{model_id}": True, "models:/team-model/1": True}
    assert loaded["listed"] == ["config.json", "notes", "plots"]
    assert loaded["files"] == ["config.json", "notes/hello.txt", "plots/square.png"]
    assert (loaded["text"], loaded["dict"]) == ("hello team", {"alpha": 0.5})

    with mlflow_server(server_dir, db.uri) as server:
        api = server.url + "/ajax-api/2.0/mlflow"
        listing = json.loads(_get(f"{api}/artifacts/list?run_id={run_id}"))
        assert sorted((f["path"], f["is_dir"]) for f in listing["files"]) == [
            ("config.json", False), ("notes", True), ("plots", True)]
        listing = json.loads(_get(f"{api}/artifacts/list?run_id={run_id}&path=notes"))
        assert [(f["path"], int(f["file_size"])) for f in listing["files"]] == [("notes/hello.txt", 10)]
        query = urllib.parse.urlencode({"path": "notes/hello.txt", "run_uuid": run_id})
        assert _get(f"{server.url}/get-artifact?{query}") == b"hello team"
        png = _get(f"{server.url}/get-artifact?" + urllib.parse.urlencode({"path": "plots/square.png",
                                                                             "run_uuid": run_id}))
        assert png.startswith(b"\x89PNG")

        model_files = json.loads(_get(f"{api}/logged-models/{model_id}/artifacts/directories"))
        assert "MLmodel" in {f["path"] for f in model_files["files"]}
        mlmodel = _get(f"{api}/logged-models/{model_id}/artifacts/files?artifact_file_path=MLmodel")
        assert f"model_id: {model_id}".encode() in mlmodel

        remote = json.loads(run_client(server.url, loader_dir, THROUGH_SERVER).splitlines()[-1])
        assert remote["listed"] == ["remote/note.txt"]
        assert remote["text"] == "sent through the server"
        assert server.failures() == [], server.log()[-5000:]

    # the run's root is in the database, so a client of the database reads it without the server
    assert remote["artifact_uri"].startswith("pgmodels-artifacts:/")
    stored = db.sql("SELECT size_bytes FROM pgm_artifacts WHERE path = %s",
                    (remote["artifact_uri"].removeprefix("pgmodels-artifacts:/") + "/remote/note.txt",))
    assert stored == [(len("sent through the server"),)]
    mlflow.set_tracking_uri(db.uri)
    assert mlflow.artifacts.load_text(f"runs:/{remote['run_id']}/remote/note.txt") == "sent through the server"
    assert _artifact_dirs(tmp_path) == []


@pytest.mark.slow  # a server and a client process
def test_a_server_with_an_artifacts_destination_keeps_using_it(db, tmp_path):
    destination = tmp_path / "team-artifacts"
    with mlflow_server(tmp_path / "server", db.uri, env={"MLFLOW_ARTIFACTS_DESTINATION": str(destination)}) as server:
        remote = json.loads(run_client(server.url, tmp_path, THROUGH_SERVER).splitlines()[-1])
        assert server.failures() == [], server.log()[-5000:]

    assert remote["artifact_uri"].startswith("mlflow-artifacts:/")
    assert remote["text"] == "sent through the server"
    assert [p.name for p in destination.rglob("note.txt")] == ["note.txt"]
    assert db.sql("SELECT count(*) FROM pgm_artifacts") == [(0,)]
