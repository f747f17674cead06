"""Adopting the store from a registry that stock MLflow made: `mlflow-pgmodels import-registry`."""

import os
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_pgmodels.cli import main
from tests import sample


@pytest.fixture(scope="module")
def stock_registry(tmp_path_factory):
    """A sqlite tracking + registry with local artifacts, made by plain MLflow.

    churn: v1 archived, v2 deleted, v3 in Production with the alias 'champion', a version tag and
    descriptions; price: v1 tagged event/model_type. Built once; each test copies the database.
    """
    base = tmp_path_factory.mktemp("stock")
    uri = f"sqlite:///{base}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(base)  # MLflow's default artifact root is ./mlruns
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        for seed in (1, 2, 3):
            sample.log(sample.classifier(seed), "churn")
        sample.log(sample.regressor(4.0), "price", tags={"event": "cpi", "model_type": "regression"})
        client.update_registered_model("churn", description="Who leaves next month")
        client.set_registered_model_tag("churn", "team", "growth")
        client.transition_model_version_stage("churn", "1", "Archived")
        client.delete_model_version("churn", "2")
        client.transition_model_version_stage("churn", "3", "Production")
        client.update_model_version("churn", "3", description="retrained on March data")
        client.set_model_version_tag("churn", "3", "reviewed", "yes")
        client.set_registered_model_alias("churn", "champion", "3")
        versions = {(mv.name, int(mv.version)): mv for mv in client.search_model_versions()}
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(cwd)
    return base / "mlflow.db", versions


@pytest.fixture
def source(stock_registry, tmp_path):
    """A private copy of the stock registry (artifacts stay shared; they are only read)."""
    db_file, versions = stock_registry
    shutil.copy(db_file, tmp_path / "source.db")
    return f"sqlite:///{tmp_path}/source.db", versions


def _import(capsys, source_uri, uri):
    code = main(["import-registry", "--from", source_uri, "--uri", uri])
    return code, capsys.readouterr().out


def test_import_keeps_numbers_stages_aliases_tags_and_runs(client, db, source, capsys):
    source_uri, stock = source
    code, out = _import(capsys, source_uri, db.uri)

    assert code == 0, out
    assert "3 versions imported, 2 registered models created, 1 aliases" in out
    assert db.sql("SELECT name, version, is_active, stage, event, model_type FROM models ORDER BY name, version") == [
        ("churn", 1, False, "None", "default", "unspecified"),
        ("churn", 3, True, "Production", "default", "unspecified"),
        ("price", 1, True, "None", "cpi", "regression"),
    ]
    churn = client.get_registered_model("churn")
    assert churn.description == "Who leaves next month"
    assert churn.tags == {"team": "growth"}
    assert {alias: int(v) for alias, v in churn.aliases.items()} == {"champion": 3}
    v3 = client.get_model_version("churn", "3")
    assert (v3.description, v3.tags["reviewed"], v3.run_id) == ("retrained on March data", "yes",
                                                                 stock["churn", 3].run_id)
    assert v3.creation_timestamp == stock["churn", 3].creation_timestamp
    assert client.get_model_version("churn", "1").current_stage == "Archived"
    assert client.get_model_version("price", "1").run_id == stock["price", 1].run_id


def test_imported_versions_load_and_numbering_continues_after_the_gap(client, db, source, capsys):
    _import(capsys, source[0], db.uri)

    champion = mlflow.pyfunc.load_model("models:/churn@champion")
    assert list(champion.predict(sample.X[:6])) == list(sample.classifier(3).predict(sample.X[:6]))
    assert int(client.get_model_version_by_alias("churn", "latest").version) == 3
    assert sample.log(sample.classifier(9), "churn").registered_model_version == 4
    assert mlflow.sklearn.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(
        4.0 * sample.X[0, 0])


def test_rerun_copies_only_what_is_new(db, source, capsys):
    source_uri, _ = source
    _import(capsys, source_uri, db.uri)
    mlflow.set_tracking_uri(source_uri)
    sample.log(sample.regressor(5.0), "price", tags={"event": "nfp", "model_type": "regression"})
    MlflowClient().set_registered_model_alias("price", "candidate", "2")
    mlflow.set_tracking_uri(None)

    code, out = _import(capsys, source_uri, db.uri)

    assert code == 0, out
    assert "1 versions imported, 0 registered models created, 1 aliases and 0 model tags set, " \
           "3 versions already there, 0 failed" in out
    assert db.sql("SELECT name, version, event FROM models ORDER BY name, version") == [
        ("churn", 1, "default"), ("churn", 3, "default"), ("price", 1, "cpi"), ("price", 2, "nfp")]
    assert db.sql("SELECT name, alias, version FROM pgm_aliases ORDER BY alias") == [
        ("price", "candidate", 2), ("churn", "champion", 3)]


def test_a_number_taken_by_another_version_is_a_reported_conflict(db, source, capsys):
    mlflow.set_tracking_uri(db.uri)
    sample.log(sample.regressor(1.0), "price")  # price v1 exists in the store already, from another run
    mlflow.set_tracking_uri(None)

    code, out = _import(capsys, source[0], db.uri)

    assert code == 1
    assert "CONFLICT price v1" in out
    assert db.sql("SELECT name, version, event FROM models ORDER BY name, version") == [
        ("churn", 1, "default"), ("churn", 3, "default"), ("price", 1, "default")]
