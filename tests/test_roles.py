"""Database roles from sql/roles.sql: training jobs write, predict jobs only read.

Real login roles with passwords, connecting over TCP, as a deployment would.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import sample


@dataclass
class Login:
    uri: str
    password: str


def _login(db, group: str) -> Login:
    user, password = db.login_role(group)
    return Login(db.tcp_uri(user, password), password)


@pytest.fixture
def reader(db) -> Login:
    return _login(db, "pgmodels_reader")


@pytest.fixture
def writer(db) -> Login:
    return _login(db, "pgmodels_writer")


def test_training_job_registers_and_predict_job_loads(db, writer, reader):
    mlflow.set_tracking_uri(writer.uri)
    sample.log(sample.regressor(3.0), "churn")
    mlflow.MlflowClient().set_registered_model_alias("churn", "champion", 1)

    mlflow.set_tracking_uri(reader.uri)
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    assert model.predict(sample.X[:1])[0] == pytest.approx(3.0 * sample.X[0, 0])
    assert [m.name for m in mlflow.MlflowClient().search_registered_models()] == ["churn"]
    assert db.sql("SELECT name, version FROM models") == [("churn", 1)]


def _state(db) -> list:
    """Everything a write could change (without the blobs themselves)."""
    return [db.sql(q) for q in (
        "SELECT name, version, is_active, stage, description, event, model_type, sha256, last_updated_at"
        " FROM models ORDER BY name, version",
        "SELECT * FROM pgm_registered_models ORDER BY name",
        "SELECT * FROM pgm_registered_model_tags ORDER BY name, key",
        "SELECT * FROM pgm_model_version_tags ORDER BY name, version, key",
        "SELECT * FROM pgm_aliases ORDER BY name, alias",
        "SELECT run_uuid, status, lifecycle_stage FROM runs ORDER BY run_uuid",
        "SELECT count(*) FROM logged_models",
    )]


def _all_refused(writes: dict, login: Login) -> None:
    """Each write fails with PERMISSION_DENIED, naming sql/roles.sql and not the password."""
    for what, write in writes.items():
        with pytest.raises(MlflowException) as e:
            write()
        assert e.value.error_code == "PERMISSION_DENIED", f"{what}: {e.value.message}"
        assert "sql/roles.sql" in e.value.message and login.password not in e.value.message, what


def test_predict_job_cannot_change_anything(db, reader, tmp_path):
    mlflow.set_tracking_uri(db.uri)
    sample.log(sample.classifier(1), "churn")
    mlflow.MlflowClient().set_registered_model_alias("churn", "champion", 1)
    before = _state(db)

    mlflow.set_tracking_uri(reader.uri)
    client = mlflow.MlflowClient()
    model_dir = sample.saved(tmp_path / "model")
    writes = {
        "log a model": lambda: sample.log(sample.classifier(2), "churn"),
        "register a version": lambda: client.create_model_version("churn", model_dir),
        "create a registered model": lambda: client.create_registered_model("fraud"),
        "rename a model": lambda: client.rename_registered_model("churn", "attrition"),
        "describe a model": lambda: client.update_registered_model("churn", "new text"),
        "tag a model": lambda: client.set_registered_model_tag("churn", "team", "x"),
        "describe a version": lambda: client.update_model_version("churn", "1", "new text"),
        "archive a version": lambda: client.transition_model_version_stage("churn", "1", "Archived"),
        "set the event column": lambda: client.set_model_version_tag("churn", "1", "event", "promo"),
        "tag a version": lambda: client.set_model_version_tag("churn", "1", "reviewed", "yes"),
        "move an alias": lambda: client.set_registered_model_alias("churn", "canary", "1"),
        "delete an alias": lambda: client.delete_registered_model_alias("churn", "champion"),
        "delete a version": lambda: client.delete_model_version("churn", "1"),
        "delete a model": lambda: client.delete_registered_model("churn"),
    }
    _all_refused(writes, reader)

    assert _state(db) == before
    # and reading still works with the same role
    predictions = mlflow.pyfunc.load_model("models:/churn/latest").predict(sample.X)
    assert list(predictions) == list(sample.classifier(1).predict(sample.X))


def test_reader_on_a_database_without_the_schema_gets_a_clear_error(empty_db):
    login = _login(empty_db, "pgmodels_reader")

    with pytest.raises(MlflowException) as e:
        PgModelsRegistryStore(login.uri)  # what MLflow builds for registry_uri=login.uri
    assert e.value.error_code == "PERMISSION_DENIED"
    assert "create the pgmodels schema" in e.value.message and login.password not in e.value.message
    assert empty_db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def _artifact_rows(db) -> list:
    return [db.sql("SELECT path, blob_id FROM pgm_artifacts ORDER BY path"),
            db.sql("SELECT id FROM pgm_blobs ORDER BY id"),
            db.sql("SELECT blob_id, seq FROM pgm_blob_pieces ORDER BY 1, 2")]


def test_predict_job_reads_run_artifacts_and_logged_models_but_cannot_write_them(db, writer, reader, tmp_path):
    mlflow.set_tracking_uri(writer.uri)  # a training job logs into the database artifact root
    with mlflow.start_run() as run:
        mlflow.log_text("a = 1", "config/params.txt")
        info = mlflow.sklearn.log_model(sample.regressor(4.0), name="model", pip_requirements=["scikit-learn"])
    assert db.sql("SELECT count(*) > 2 FROM pgm_artifacts") == [(True,)]
    before = _artifact_rows(db)

    # a predict job is its own process: MLflow keeps one artifact repository per run id in a
    # process, built with the tracking URI of the first client that asked (here the writer's)
    from mlflow.tracking._tracking_service.utils import _artifact_repos_cache

    _artifact_repos_cache.clear()
    mlflow.set_tracking_uri(reader.uri)
    client = mlflow.MlflowClient()
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/params.txt") == "a = 1"
    local = client.download_artifacts(run.info.run_id, "config", str(tmp_path))
    assert (tmp_path / "config" / "params.txt").read_text() == "a = 1" and local == str(tmp_path / "config")
    model = mlflow.pyfunc.load_model(f"models:/{info.model_id}")
    assert model.predict(sample.X[:1])[0] == pytest.approx(4.0 * sample.X[0, 0])

    extra = tmp_path / "extra.txt"
    extra.write_text("not allowed")
    writes = {
        "log an artifact": lambda: client.log_artifact(run.info.run_id, str(extra), "config"),
        "overwrite an artifact": lambda: client.log_text(run.info.run_id, "b = 2", "config/params.txt"),
        "log a LoggedModel's file": lambda: client.log_model_artifact(info.model_id, str(extra)),
        "delete artifacts": lambda: get_artifact_repository(run.info.artifact_uri).delete_artifacts("config"),
    }
    _all_refused(writes, reader)
    assert _artifact_rows(db) == before
