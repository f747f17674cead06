"""Run artifacts and LoggedModel files live in the database: log, list, download, from anywhere."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.exceptions import MlflowException

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
