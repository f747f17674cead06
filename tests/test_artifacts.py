"""Run artifacts and LoggedModel files live in the database: log, list, download, from anywhere."""

from __future__ import annotations

import os

import mlflow
import pytest

from tests import sample


def test_a_new_experiment_keeps_its_artifacts_in_the_database(client, db):
    experiment_id = mlflow.create_experiment("churn")
    assert client.get_experiment(experiment_id).artifact_location == f"pgmodels-artifacts:/{experiment_id}"
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text("hello", "notes/hello.txt")
        mlflow.log_dict({"a": 1}, "config.json")
    assert run.info.artifact_uri == f"pgmodels-artifacts:/{experiment_id}/{run.info.run_id}/artifacts"
    assert not os.path.exists("mlruns")
    paths = sorted(f.path for f in client.list_artifacts(run.info.run_id))
    assert paths == ["config.json", "notes"]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes/hello.txt")
    assert open(local).read() == "hello"
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json") == {"a": 1}
    assert db.sql("SELECT count(*) FROM pgm_artifacts") == [(2,)]


def test_log_model_sends_the_model_once_and_the_version_is_a_zip_built_in_the_database(client, db):
    info = sample.log(sample.regressor(3.0), "churn")
    (version,) = client.search_model_versions("name = 'churn'")
    assert version.source == f"models:/{info.model_id}"
    fmt, blob = db.sql("SELECT format, model_binary FROM models WHERE name = 'churn'")[0]
    assert fmt == "mlflow-zip" and bytes(blob[:4]) == b"PK\x03\x04"
    import io
    import zipfile
    entries = zipfile.ZipFile(io.BytesIO(bytes(blob))).infolist()
    assert "MLmodel" in [e.filename for e in entries]
    # put together by PostgreSQL from the LoggedModel's files: stored as they were logged
    assert {e.compress_type for e in entries} == {zipfile.ZIP_STORED}
    logged = db.sql("SELECT sum(size_bytes) FROM pgm_artifacts WHERE path LIKE %s", (f"%/models/{info.model_id}/artifacts/%",))
    assert logged[0][0] == sum(e.file_size for e in entries)
    loaded = mlflow.pyfunc.load_model("models:/churn/1")
    assert loaded.predict(sample.X[:2]).tolist() == pytest.approx((sample.X[:2, 0] * 3.0).tolist())
    assert mlflow.pyfunc.load_model(f"models:/{info.model_id}").predict(sample.X[:1])[0] == pytest.approx(sample.X[0, 0] * 3)


def test_every_kind_of_artifact_mlflow_logs_lands_in_the_database(client, db):
    import numpy as np
    import pandas as pd

    with mlflow.start_run() as run:
        mlflow.log_image(np.zeros((4, 4, 3), dtype=np.uint8), "plots/black.png")
        mlflow.log_table(pd.DataFrame({"a": [1, 2]}), "tables/t.json")
        mlflow.log_text("x", "deep/er/path/x.txt")

        @mlflow.trace
        def double(x):
            return 2 * x

        double(21)
    keys = {k for (k,) in db.sql("SELECT path FROM pgm_artifacts")}
    prefix = run.info.artifact_uri.removeprefix("pgmodels-artifacts:/")
    assert {f"{prefix}/plots/black.png", f"{prefix}/tables/t.json", f"{prefix}/deep/er/path/x.txt"} <= keys
    mlflow.flush_trace_async_logging()  # MLflow 3.17 keeps a trace's spans in its own tables
    trace = mlflow.get_trace(mlflow.get_last_active_trace_id())
    assert trace.data.spans[0].outputs == 42
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == ["deep", "plots", "tables"]
    assert not os.path.exists("mlruns")


@pytest.mark.parametrize("damage", [
    "UPDATE pgm_blob_pieces SET data = overlay(data PLACING '\\x00'::bytea FROM 3)",
    "DELETE FROM pgm_blob_pieces",
])
def test_a_damaged_artifact_is_data_loss_and_nothing_is_downloaded(client, db, tmp_path, damage):
    with mlflow.start_run() as run:
        mlflow.log_text("the original words", "notes.txt")
    db.sql(damage)

    with pytest.raises(mlflow.MlflowException) as e:
        # (through runs:/ MLflow's own wrapper reports any failure as RESOURCE_DOES_NOT_EXIST)
        mlflow.artifacts.download_artifacts(artifact_uri=f"{run.info.artifact_uri}/notes.txt",
                                            dst_path=str(tmp_path / "out"))

    assert e.value.error_code == "DATA_LOSS", e.value.message
    assert "notes.txt" in e.value.message and "Nothing was loaded" in e.value.message
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_an_explicit_artifact_location_still_wins(client, db, tmp_path):
    elsewhere = tmp_path / "team-share"
    experiment_id = mlflow.create_experiment("on-disk", artifact_location=elsewhere.as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text("kept on disk", "notes.txt")

    assert (elsewhere / run.info.run_id / "artifacts" / "notes.txt").read_text() == "kept on disk"
    assert db.sql("SELECT count(*) FROM pgm_artifacts") == [(0,)]
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes.txt") == "kept on disk"
