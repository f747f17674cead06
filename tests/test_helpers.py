"""The seed's helper API (save/load/latest/deactivate/activate) on the pgmodels store, both ways with MLflow."""

import io
import logging

import joblib
import mlflow
import pytest
from mlflow.exceptions import MlflowException
from sklearn.feature_extraction.text import TfidfVectorizer

from mlflow_pgmodels import activate_model, deactivate_model, get_latest_model_version, load_model_from_db, save_model_to_db
from tests import sample


class Doubler:
    """A custom model class: skops cannot hold it, joblib-era code saved such objects all the time."""

    def predict(self, X):
        return [2 * row[0] for row in X]


def _prediction(model):
    return float(model.predict(sample.X[:1])[0])


def test_save_then_load_latest_and_a_given_version(db):
    first, second = sample.regressor(2.0), sample.regressor(3.0)

    assert save_model_to_db(first, "my_model", "event_name", "regression", uri=db.uri) == (True, 1)
    assert save_model_to_db(second, "my_model", "event_name", "regression", uri=db.uri) == (True, 2)

    model, version = load_model_from_db("my_model", "event_name", "regression", uri=db.uri)
    assert version == 2 and _prediction(model) == pytest.approx(_prediction(second))
    model, version = load_model_from_db("my_model", "event_name", "regression", version=1, uri=db.uri)
    assert version == 1 and _prediction(model) == pytest.approx(_prediction(first))
    assert get_latest_model_version("my_model", "event_name", "regression", uri=db.uri) == 2


def test_saved_versions_are_ordinary_mlflow_versions(client, db):
    model = sample.regressor(4.0)
    with mlflow.start_run() as run:
        save_model_to_db(model, "my_model", "event_name", "regression", uri=db.uri)

    mv = client.get_model_version("my_model", "1")
    assert (mv.tags["event"], mv.tags["model_type"]) == ("event_name", "regression")
    assert mv.run_id == run.info.run_id
    loaded = mlflow.pyfunc.load_model("models:/my_model/latest")
    assert loaded.predict(sample.X[:1])[0] == pytest.approx(_prediction(model))
    assert db.sql("SELECT name, version, event, model_type, is_active FROM models") == [
        ("my_model", 1, "event_name", "regression", True)]


def test_versions_logged_through_mlflow_load_here(client, db):
    model = sample.classifier(3)
    sample.log(model, "churn", tags={"event": "signup", "model_type": "classifier_binary"})

    loaded, version = load_model_from_db("churn", "signup", "classifier_binary", uri=db.uri)
    assert version == 1
    assert list(loaded.predict(sample.X[:5])) == list(model.predict(sample.X[:5]))
    # and the next version saved by the helpers continues MLflow's numbering
    assert save_model_to_db(sample.classifier(4), "churn", "signup", "classifier_binary", uri=db.uri) == (True, 2)


def test_deactivate_then_activate_moves_latest(client, db):
    for slope in (1.0, 2.0):
        save_model_to_db(sample.regressor(slope), "price", "cpi", "regression", uri=db.uri)

    assert deactivate_model("price", "cpi", "regression", version=2, uri=db.uri) is True
    assert get_latest_model_version("price", "cpi", "regression", uri=db.uri) == 1
    assert load_model_from_db("price", "cpi", "regression", uri=db.uri)[1] == 1
    assert client.get_model_version("price", "2").current_stage == "Archived"
    assert int(client.get_model_version_by_alias("price", "latest").version) == 1
    assert db.sql("SELECT version, is_active FROM models ORDER BY version") == [(1, True), (2, False)]
    # an inactive version still loads when asked for by number
    assert load_model_from_db("price", "cpi", "regression", version=2, uri=db.uri)[1] == 2

    assert activate_model("price", "cpi", "regression", version=2, uri=db.uri) is True
    assert get_latest_model_version("price", "cpi", "regression", uri=db.uri) == 2
    assert client.get_model_version("price", "2").current_stage == "None"


def test_deactivate_reports_false_for_what_does_not_exist(db, caplog):
    save_model_to_db(sample.regressor(), "price", "cpi", "regression", uri=db.uri)

    with caplog.at_level(logging.ERROR, logger="mlflow_pgmodels"):
        assert deactivate_model("price", "cpi", "regression", version=7, uri=db.uri) is False
        assert deactivate_model("price", "nfp", "regression", version=1, uri=db.uri) is False
        assert activate_model("nope", "cpi", "regression", version=1, uri=db.uri) is False
    assert "version 7" in caplog.text and "'nfp'" in caplog.text
    assert db.sql("SELECT is_active FROM models") == [(True,)]


def test_two_events_under_one_name_share_the_numbers(client, db):
    cpi, nfp = sample.regressor(1.0), sample.regressor(5.0)
    assert save_model_to_db(cpi, "move", "cpi", "regression", uri=db.uri) == (True, 1)
    assert save_model_to_db(nfp, "move", "nfp", "regression", uri=db.uri) == (True, 2)

    model, version = load_model_from_db("move", "cpi", "regression", uri=db.uri)
    assert version == 1 and _prediction(model) == pytest.approx(_prediction(cpi))
    assert get_latest_model_version("move", "nfp", "regression", uri=db.uri) == 2
    # MLflow's latest is per name, whatever the event: one name per event keeps them in step
    assert int(client.get_model_version_by_alias("move", "latest").version) == 2


def test_legacy_joblib_row_inserted_by_plain_sql_loads(client, db):
    model = sample.regressor(6.0)
    raw = io.BytesIO()
    joblib.dump(model, raw)
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary) VALUES (%s, %s, %s, %s, %s)",
           ("legacy", 1, "regression", "cpi", raw.getvalue()))

    loaded, version = load_model_from_db("legacy", "cpi", "regression", uri=db.uri)
    assert version == 1
    assert type(loaded).__name__ == "LinearRegression"
    assert _prediction(loaded) == pytest.approx(_prediction(model))
    listed = client.search_model_versions("name = 'legacy'")
    assert [(int(mv.version), mv.tags["event"], mv.current_stage) for mv in listed] == [(1, "cpi", "None")]
    assert mlflow.pyfunc.load_model("models:/legacy/latest").predict(sample.X[:1])[0] == pytest.approx(
        _prediction(model))
    # the next save continues after the legacy row
    assert save_model_to_db(sample.regressor(), "legacy", "cpi", "regression", uri=db.uri) == (True, 2)


def test_missing_model_error_names_what_was_asked_and_what_exists(db):
    save_model_to_db(sample.classifier(), "churn", "signup", "classifier_binary", uri=db.uri)

    with pytest.raises(MlflowException) as e:
        load_model_from_db("churn", "renewal", "classifier_binary", uri=db.uri)
    message = e.value.message
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "'churn'" in message and "'renewal'" in message and "'classifier_binary'" in message
    assert "event 'signup', model_type 'classifier_binary': versions 1" in message

    with pytest.raises(MlflowException) as e:
        load_model_from_db("chrun", "signup", "classifier_binary", uri=db.uri)
    assert "no model named 'chrun'" in e.value.message and "churn" in e.value.message

    with pytest.raises(MlflowException, match="version 9"):
        load_model_from_db("churn", "signup", "classifier_binary", version=9, uri=db.uri)
    assert get_latest_model_version("churn", "renewal", "classifier_binary", uri=db.uri) is None


def test_uri_comes_from_the_environment_or_a_clear_error(db, monkeypatch):
    with pytest.raises(MlflowException, match="MLFLOW_TRACKING_URI"):
        get_latest_model_version("m", "e", "regression")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(MlflowException, match="pgmodels://"):
        save_model_to_db(sample.regressor(), "m", "e", "regression")

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", db.uri)
    assert save_model_to_db(sample.regressor(), "m", "e", "regression") == (True, 1)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db.uri)
    assert get_latest_model_version("m", "e", "regression") == 1


def test_vectorizers_and_custom_classes_round_trip(db):
    vectorizer = TfidfVectorizer().fit(["rates rise", "jobs beat forecast", "inflation cools"])
    assert save_model_to_db(vectorizer, "headlines", "cpi", "vectorizer", uri=db.uri) == (True, 1)
    assert save_model_to_db(Doubler(), "doubler", "cpi", "regression", uri=db.uri) == (True, 1)

    loaded, _ = load_model_from_db("headlines", "cpi", "vectorizer", uri=db.uri)
    assert loaded.transform(["rates cool"]).shape == (1, len(vectorizer.vocabulary_))
    doubler, _ = load_model_from_db("doubler", "cpi", "regression", uri=db.uri)
    assert doubler.predict([[21.0]]) == [42.0]


def test_a_model_that_cannot_be_saved_reports_false(db, caplog):
    unpicklable = (x for x in range(3))
    with caplog.at_level(logging.ERROR, logger="mlflow_pgmodels"):
        assert save_model_to_db(unpicklable, "gen", "cpi", "regression", uri=db.uri) == (False, None)
    assert "Could not save model 'gen'" in caplog.text
    assert db.sql("SELECT count(*) FROM models") == [(0,)]
