"""Registering models through plain MLflow: versions are rows of the models table."""

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from tests import sample


def test_log_model_registers_versions_as_rows(client, db):
    first = sample.log(sample.classifier(1), "churn", input_example=sample.X[:5])
    second = sample.log(sample.classifier(2), "churn")

    assert (first.registered_model_version, second.registered_model_version) == (1, 2)
    rows = db.sql("SELECT name, version, is_active, substring(model_binary FROM 1 FOR 2) FROM models ORDER BY version")
    assert rows == [("churn", 1, True, b"PK"), ("churn", 2, True, b"PK")]


def test_version_links_the_run_that_logged_it(client):
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(sample.classifier(), name="model", registered_model_name="churn",
                                 pip_requirements=["scikit-learn"])
    mv = client.get_model_version("churn", "1")
    assert mv.run_id == run.info.run_id
    assert mv.source.startswith("models:/m-")
    assert mv.status == "READY"


def test_load_latest_gives_back_the_same_predictions(client):
    model = sample.regressor(3.0)
    sample.log(model, "price")
    loaded = mlflow.pyfunc.load_model("models:/price/latest")
    assert list(loaded.predict(sample.X[:4])) == pytest.approx(list(model.predict(sample.X[:4])))


def test_registry_only_uri_with_sqlite_tracking(db, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(db.uri)
    sample.log(sample.regressor(5.0), "price")

    assert db.sql("SELECT name, version FROM models") == [("price", 1)]
    loaded = mlflow.sklearn.load_model("models:/price/1")
    assert loaded.predict(sample.X[:1])[0] == pytest.approx(5.0 * sample.X[0, 0])


def test_register_model_from_a_run_uri(client):
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(sample.classifier(), name="model", pip_requirements=["scikit-learn"])
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", "churn")
    assert mv.version == 1
    assert client.get_model_version("churn", 1).run_id == run.info.run_id
    predictions = mlflow.pyfunc.load_model("models:/churn/1").predict(sample.X)
    assert list(predictions) == list(sample.classifier().predict(sample.X))


def test_registering_under_an_unknown_name_fails_cleanly(client, db, tmp_path):
    with pytest.raises(MlflowException) as e:
        client.create_model_version("nope", "models:/m-doesnotexist", run_id=None)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # with a source that exists, the unknown name is what is refused (docs/design.md §6)
    with pytest.raises(MlflowException) as e:
        client.create_model_version("nope", sample.saved(tmp_path / "model"))
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST" and "nope" in e.value.message
    assert db.sql("SELECT count(*) FROM models") == [(0,)]


def test_stored_blob_is_a_plain_zip_with_mlmodel_at_its_root(client, db, tmp_path):
    import hashlib
    import io
    import zipfile

    sample.log(sample.classifier(), "churn")
    blob, digest = db.sql("SELECT model_binary, sha256 FROM models WHERE name = 'churn'")[0]
    assert hashlib.sha256(blob).hexdigest() == digest
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    assert "MLmodel" in names and "registered_model_meta" not in names
