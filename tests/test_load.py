"""Loading registered models back: pyfunc, sklearn, the ``mlflow models predict`` CLI, and the
set-ups people run it in (tracking on the same database or elsewhere, password roles over TCP)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests import procs, sample


def test_pyfunc_and_sklearn_loads_predict_like_the_logged_model(client):
    model = sample.classifier(3)
    info = sample.log(model, "churn", input_example=sample.X[:5])

    expected = model.predict_proba(sample.X[:8])
    assert mlflow.sklearn.load_model("models:/churn/latest").predict_proba(sample.X[:8]) == pytest.approx(expected)
    pyfunc = mlflow.pyfunc.load_model(f"models:/churn/{info.registered_model_version}")
    assert list(pyfunc.predict(sample.X[:8])) == list(model.predict(sample.X[:8]))
    # the signature inferred from input_example survived the round trip
    schema = pyfunc.metadata.get_input_schema()
    assert schema == info.signature.inputs and repr(schema) == "[Tensor('float64', (-1, 3))]"


def test_mlflow_models_predict_cli_reads_latest_from_the_database(client, db, tmp_path):
    sample.log(sample.regressor(1.0), "churn")
    sample.log(sample.regressor(4.0), "churn")
    pd.DataFrame(sample.X[:3], columns=["0", "1", "2"]).to_csv(tmp_path / "in.csv", index=False)

    env = {**os.environ, "MLFLOW_TRACKING_URI": db.uri}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", "models:/churn/latest",
         "-i", str(tmp_path / "in.csv"), "-t", "csv", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
        env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    predictions = pd.read_json(tmp_path / "out.json", orient="records")["predictions"].tolist()
    assert predictions == pytest.approx(list(4.0 * sample.X[:3, 0]))


def test_a_corrupted_blob_is_refused_with_the_model_and_version_named(client, db):
    sample.log(sample.regressor(2.0), "price")
    sample.log(sample.regressor(3.0), "price")
    db.sql("UPDATE models SET model_binary = overlay(model_binary PLACING '\\xdeadbeef'::bytea FROM 200 FOR 4)"
           " WHERE name = 'price' AND version = 2")

    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/price/2")
    assert "Model 'price' version 2" in e.value.message and "corrupt" in e.value.message
    assert e.value.error_code == "DATA_LOSS"
    assert _cached_versions(os.environ["MLFLOW_PGMODELS_CACHE_DIR"]) == []  # nothing half-loaded is kept
    # the other version is unaffected
    assert mlflow.pyfunc.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])


def _cached_versions(cache_dir: str) -> list[str]:
    """Versions that made it into the local cache (as ``<name>/<version>-<digest>``)."""
    if not os.path.isdir(cache_dir):
        return []
    return [f"{d}/{e}" for d in os.listdir(cache_dir) if os.path.isdir(os.path.join(cache_dir, d))
            for e in os.listdir(os.path.join(cache_dir, d)) if not e.startswith(".") and "." not in e]


def test_delete_then_register_takes_the_next_number(client):
    sample.log(sample.regressor(1.0), "price")
    sample.log(sample.regressor(2.0), "price")
    client.delete_model_version("price", "2")

    info = sample.log(sample.regressor(3.0), "price")

    assert int(info.registered_model_version) == 3
    assert [mv.version for mv in client.search_model_versions("name = 'price'")] == [3, 1]
    assert mlflow.pyfunc.load_model("models:/price/latest").predict(sample.X[:1])[0] == \
        pytest.approx(3 * sample.X[0, 0])


def _register_in_a_process(uri: str, workdir: str, model_dir: str) -> int:
    """In a child process: register a saved model as ``price`` (MLflow's own register_model)."""
    procs.enter(workdir, tracking_uri=uri)
    return int(mlflow.register_model(model_dir, "price").version)


def test_processes_registering_one_name_at_once_get_distinct_gap_free_numbers(db, tmp_path):
    slopes = [1.0, 2.0, 3.0, 4.0]
    dirs = [sample.saved(tmp_path / f"model{k}", sample.regressor(s)) for k, s in enumerate(slopes)]
    with procs.context().Pool(len(slopes)) as pool:
        versions = pool.starmap(_register_in_a_process, [(db.uri, str(tmp_path / f"p{k}"), d) for k, d in enumerate(dirs)])

    assert sorted(versions) == [1, 2, 3, 4]
    mlflow.set_tracking_uri(db.uri)
    for version, slope in zip(versions, slopes):  # each number holds the model of the process that got it
        got = mlflow.pyfunc.load_model(f"models:/price/{version}").predict(sample.X[:1])[0]
        assert got == pytest.approx(slope * sample.X[0, 0])


def test_tracking_on_sqlite_with_the_registry_in_postgres(db, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(db.uri)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(sample.regressor(6.0), name="model", registered_model_name="price",
                                 pip_requirements=["scikit-learn"])

    mv = MlflowClient().get_model_version("price", "1")
    assert mv.run_id == run.info.run_id  # linked to the run kept in sqlite
    assert db.sql("SELECT name, version FROM models") == [("price", 1)]
    assert db.sql("SELECT count(*) FROM runs") == [(0,)]  # the run is not in PostgreSQL
    assert mlflow.pyfunc.load_model("models:/price/latest").predict(sample.X[:1])[0] == \
        pytest.approx(6 * sample.X[0, 0])


def test_mlflow_tracking_tables_and_the_models_table_share_one_database(client, db):
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", 0.5)
        mlflow.sklearn.log_model(sample.regressor(2.0), name="model", registered_model_name="price",
                                 pip_requirements=["scikit-learn"])

    assert db.sql("SELECT run_uuid FROM runs") == [(run.info.run_id,)]
    assert db.sql("SELECT key, value FROM params") == [("alpha", "0.5")]
    assert db.sql("SELECT name, version, run_id FROM models") == [("price", 1, run.info.run_id)]
    # MLflow's own registry tables stay empty: the registry is the models table
    assert db.sql("SELECT count(*) FROM model_versions") == [(0,)]
    assert db.sql("SELECT count(*) FROM registered_models") == [(0,)]
    # the logged model knows its registered version (the tag MLflow's UI links by)
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])[0]
    assert "price" in logged.tags.get("mlflow.modelVersions", "")


PASSWORD = "s3cr:t/p@ss%w0rd"


def test_a_password_protected_role_over_tcp_never_reveals_its_password(db, caplog):
    db.sql(f"CREATE ROLE trainer LOGIN PASSWORD '{PASSWORD.replace('%', '%%')}'")
    db.sql("GRANT ALL ON ALL TABLES IN SCHEMA public TO trainer")
    db.sql("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO trainer")
    uri = db.tcp_uri("trainer", PASSWORD)
    assert PASSWORD not in uri  # quoted in the URI; neither form may show up anywhere
    secrets = (PASSWORD, uri.split("@")[0].split(":")[-1])

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    with caplog.at_level(logging.DEBUG):
        info = sample.log(sample.regressor(5.0), "price")
        mv = client.get_model_version("price", info.registered_model_version)
        download = client.get_model_version_download_uri("price", mv.version)
        loaded = mlflow.pyfunc.load_model("models:/price/latest")
        errors = []
        for call in (lambda: client.get_model_version("price", "9"),
                     lambda: client.create_model_version("nope", "/nowhere"),
                     lambda: MlflowClient(tracking_uri=uri.replace("s3cr", "wrong")).get_registered_model("price")):
            with pytest.raises(MlflowException) as e:
                call()
            errors.append(str(e.value))

    assert loaded.predict(sample.X[:1])[0] == pytest.approx(5 * sample.X[0, 0])
    assert download == "pgmodels:/price/1"
    assert "password authentication failed" in errors[-1] and "***" in errors[-1]
    stored = [r[0] for r in db.sql("SELECT row_to_json(m)::text FROM (SELECT name, version, source, run_id,"
                                   " run_link, description FROM models) m")]
    for secret in secrets:
        for text in (mv.source, download, *errors, caplog.text, *stored, repr(client._get_registry_client().store)):
            assert secret not in text
