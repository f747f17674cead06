"""``mlflow gc`` on a pgmodels database: the files of permanently deleted runs, LoggedModels and
experiments leave pgm_artifacts, their blobs leave pgm_blobs; registered versions stay loadable."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from tests import sample
from tests.mlflow_server import mlflow_server


def _gc(db, tracking_uri: str) -> str:
    """The real ``mlflow gc``, as a user runs it (MLflow insists on a tracking URI besides the store)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    result = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", db.uri],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _files(db, key: str) -> int:
    return db.sql("SELECT count(*) FROM pgm_artifacts WHERE path LIKE %s", (key + "/%",))[0][0]


def _orphan_blobs(db) -> int:
    return db.sql("SELECT count(*) FROM pgm_blobs b WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE"
                  " a.blob_id = b.id) AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id)")[0][0]


def _key(uri: str) -> str:
    return uri.removeprefix("pgmodels-artifacts:/")


def _logged_run(experiment_id: str, slope: float, register: str | None = None):
    """A run with a text artifact, a 2 MiB file (a COPY-written blob) and a LoggedModel."""
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text(f"slope {slope}", "notes.txt")
        mlflow.log_dict({"data": "x" * (2 << 20)}, "data/big.json")
        info = mlflow.sklearn.log_model(sample.regressor(slope), name="model", pip_requirements=["scikit-learn"],
                                        registered_model_name=register)
    return run, info


def test_gc_removes_a_deleted_runs_files_and_keeps_its_registered_version(client, db):
    experiment_id = mlflow.create_experiment("churn")
    doomed, doomed_model = _logged_run(experiment_id, 3.0, register="churn")
    kept, kept_model = _logged_run(experiment_id, 5.0)
    logged = client.get_logged_model(doomed_model.model_id).artifact_location
    assert _files(db, _key(doomed.info.artifact_uri)) == 2 and _files(db, _key(logged)) > 2
    kept_files = db.sql("SELECT path, blob_id FROM pgm_artifacts WHERE path NOT LIKE %s AND path NOT LIKE %s"
                        " ORDER BY path", (_key(doomed.info.artifact_uri) + "/%", _key(logged) + "/%"))

    client.delete_run(doomed.info.run_id)
    client.delete_logged_model(doomed_model.model_id)  # a LoggedModel outlives its run unless deleted too
    out = _gc(db, db.uri)

    assert f"Run with ID {doomed.info.run_id} has been permanently deleted" in out
    assert _files(db, _key(doomed.info.artifact_uri)) == 0 and _files(db, _key(logged)) == 0
    assert _orphan_blobs(db) == 0
    assert db.sql("SELECT path, blob_id FROM pgm_artifacts ORDER BY path") == kept_files
    # the run that was not deleted keeps everything
    assert mlflow.artifacts.load_text(f"runs:/{kept.info.run_id}/notes.txt") == "slope 5.0"
    assert mlflow.pyfunc.load_model(f"models:/{kept_model.model_id}").predict(sample.X[:1])[0] == \
        pytest.approx(5.0 * sample.X[0, 0])
    # versions outlive runs
    version = mlflow.pyfunc.load_model("models:/churn/1")
    assert version.predict(sample.X[:1])[0] == pytest.approx(3.0 * sample.X[0, 0])


@pytest.mark.slow  # a server
def test_gc_of_a_deleted_experiment_removes_every_file_below_its_root(client, db, tmp_path):
    doomed_id = mlflow.create_experiment("old")
    kept_id = mlflow.create_experiment("current")
    _logged_run(doomed_id, 3.0, register="churn")
    _logged_run(doomed_id, 4.0)
    kept, _ = _logged_run(kept_id, 5.0)
    inside_id = mlflow.create_experiment("inside", artifact_location=f"pgmodels-artifacts:/{doomed_id}/inside")
    with mlflow.start_run(experiment_id=inside_id) as inside:
        mlflow.log_text("mine", "notes.txt")
    assert _files(db, doomed_id) > 4

    client.delete_experiment(doomed_id)  # its runs are deleted with it; its LoggedModels are not marked
    # a team behind an MLflow server runs gc with the server as tracking URI (as MLflow asks)
    with mlflow_server(tmp_path / "server", db.uri) as server:
        out = _gc(db, server.url)
        assert server.failures() == [], server.log()[-5000:]

    assert f"Experiment with ID {doomed_id} has been permanently deleted" in out
    assert _files(db, doomed_id) == _files(db, f"{doomed_id}/inside") == 1
    assert mlflow.artifacts.load_text(f"runs:/{inside.info.run_id}/notes.txt") == "mine"
    assert _orphan_blobs(db) == 0
    assert _files(db, kept_id) > 2
    assert mlflow.artifacts.load_text(f"runs:/{kept.info.run_id}/notes.txt") == "slope 5.0"
    version = mlflow.pyfunc.load_model("models:/churn/1")
    assert version.predict(sample.X[:1])[0] == pytest.approx(3.0 * sample.X[0, 0])


@pytest.mark.parametrize("spelling", ["{}/shared/", "{}//shared", "{}/./shared"])
def test_gc_of_an_experiment_keeps_an_inner_experiment_however_its_root_is_spelled(client, db, spelling):
    """Issue 18: a root written with a trailing slash, '//' or './' lost its files before the fix."""
    doomed_id = mlflow.create_experiment("outer")
    inner_id = mlflow.create_experiment("inner", artifact_location="pgmodels-artifacts:/" + spelling.format(doomed_id))
    with mlflow.start_run(experiment_id=inner_id) as inner:
        mlflow.log_text("mine", "notes.txt")
    with mlflow.start_run(experiment_id=doomed_id):
        mlflow.log_text("doomed", "notes.txt")
    assert _files(db, f"{doomed_id}/shared") == 1

    client.delete_experiment(doomed_id)
    out = _gc(db, db.uri)

    assert f"Experiment with ID {doomed_id} has been permanently deleted" in out
    assert _files(db, doomed_id) == _files(db, f"{doomed_id}/shared") == 1
    assert mlflow.artifacts.load_text(f"runs:/{inner.info.run_id}/notes.txt") == "mine"
    assert _orphan_blobs(db) == 0
