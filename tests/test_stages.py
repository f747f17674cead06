"""Stages: ``is_active`` is the stage, and ``latest`` is the highest active version.

Each version of ``price`` here predicts ``slope * x0`` with its own slope (version N has slope
N), so a load shows which version it got.
"""

from __future__ import annotations

import warnings

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from tests import sample

X0 = sample.X[0, 0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Model directories with slopes 1, 2, 3."""
    base = tmp_path_factory.mktemp("src")
    return {n: sample.saved(base / f"slope{n}", sample.regressor(float(n))) for n in (1, 2, 3)}


@pytest.fixture
def price(client, sources):
    """``price`` versions 1, 2, 3 (slopes 1, 2, 3), all active with stage None."""
    client.create_registered_model("price")
    for n in (1, 2, 3):
        client.create_model_version("price", sources[n])
    return client


@pytest.fixture(autouse=True)
def quiet_stage_deprecation():
    # MlflowClient's stage methods warn that stages are deprecated (they still work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def slope(model_uri: str) -> float:
    """The slope of the version ``model_uri`` loads."""
    return round(float(mlflow.pyfunc.load_model(model_uri).predict(sample.X[:1])[0]) / X0, 6)


def states(db) -> list[tuple]:
    return db.sql("SELECT version, is_active, stage FROM models WHERE name = 'price' ORDER BY version")


def test_archiving_sets_is_active_false_and_unarchiving_sets_it_back(price, db):
    archived = price.transition_model_version_stage("price", "1", "Archived")
    assert archived.current_stage == "Archived"
    assert states(db)[0] == (1, False, "None")

    staged = price.transition_model_version_stage("price", "1", "Staging")
    assert staged.current_stage == "Staging"
    assert states(db)[0] == (1, True, "Staging")
    assert price.get_model_version("price", "1").current_stage == "Staging"


def test_active_versions_report_their_stage(price, db):
    price.transition_model_version_stage("price", "2", "Production")
    price.transition_model_version_stage("price", "3", "staging")
    assert [price.get_model_version("price", v).current_stage for v in (1, 2, 3)] == ["None", "Production", "Staging"]
    assert states(db) == [(1, True, "None"), (2, True, "Production"), (3, True, "Staging")]


def test_archive_existing_versions_archives_the_others_in_that_stage(price, db):
    price.transition_model_version_stage("price", "1", "Production")
    price.transition_model_version_stage("price", "2", "Staging")
    price.transition_model_version_stage("price", "3", "Production", archive_existing_versions=True)
    assert states(db) == [(1, False, "None"), (2, True, "Staging"), (3, True, "Production")]
    assert slope("models:/price/Production") == 3


def test_archive_existing_versions_needs_an_active_target_stage(price):
    with pytest.raises(MlflowException) as e:
        price.transition_model_version_stage("price", "1", "Archived", archive_existing_versions=True)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_direct_sql_update_shows_as_archived_at_once(price, db):
    assert slope("models:/price/latest") == 3
    db.sql("UPDATE models SET is_active = false WHERE name = 'price' AND version = 3")

    assert price.get_model_version("price", "3").current_stage == "Archived"
    assert slope("models:/price/latest") == 2  # same process: nothing cached the old answer
    assert [mv.version for mv in price.search_model_versions("name = 'price'")
            if mv.current_stage == "Archived"] == [3]

    db.sql("UPDATE models SET is_active = true WHERE name = 'price' AND version = 3")
    assert price.get_model_version("price", "3").current_stage == "None"
    assert slope("models:/price/latest") == 3


def test_latest_is_the_highest_active_version(price):
    price.transition_model_version_stage("price", "1", "Production")
    price.transition_model_version_stage("price", "3", "Archived")
    assert slope("models:/price/latest") == 2
    assert price.get_model_version_by_alias("price", "latest").version == 2
    assert sorted((mv.version, mv.current_stage) for mv in price.get_latest_versions("price")) == \
        [(1, "Production"), (2, "None")]
    assert [mv.version for mv in price.get_latest_versions("price", stages=["Archived"])] == [3]
    # an older version in Production does not make it "latest"
    assert slope("models:/price/Production") == 1


def test_latest_with_no_active_version_is_a_clear_error(price, db):
    db.sql("UPDATE models SET is_active = false WHERE name = 'price'")
    for uri in ("models:/price/latest", "models:/price@latest"):
        with pytest.raises(MlflowException) as e:
            mlflow.pyfunc.load_model(uri)
        assert "'price' has no active version: all 3 of its versions are archived" in e.value.message
        assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # a model without any version: [] as in MLflow
    price.create_registered_model("empty")
    assert price.get_latest_versions("empty") == []
    # the versions themselves are still there and loadable by number
    assert slope("models:/price/2") == 2


def test_every_models_uri_form_loads_the_right_version(price):
    price.transition_model_version_stage("price", "1", "Production")
    price.transition_model_version_stage("price", "2", "Staging")
    price.set_registered_model_alias("price", "champion", "2")
    assert slope("models:/price/1") == 1
    assert slope("models:/price/3") == 3
    assert slope("models:/price/Production") == 1
    assert slope("models:/price/staging") == 2
    assert slope("models:/price@champion") == 2
    assert slope("models:/price/latest") == 3
    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/price/4")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_stage_changes_on_unknown_versions_fail_with_mlflow_codes(price):
    for name, version, stage, code in (("price", "9", "Staging", "RESOURCE_DOES_NOT_EXIST"),
                                       ("nope", "1", "Staging", "RESOURCE_DOES_NOT_EXIST"),
                                       ("price", "1", "Retired", "INVALID_PARAMETER_VALUE"),
                                       ("price", "one", "Staging", "INVALID_PARAMETER_VALUE")):
        with pytest.raises(MlflowException) as e:
            price.transition_model_version_stage(name, version, stage)
        assert e.value.error_code == code, (name, version, stage)
    with pytest.raises(MlflowException) as e:
        price.get_latest_versions("nope")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
