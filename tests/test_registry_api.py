"""MLflow's registry API on the pgmodels store, as a user calls it through ``MlflowClient``."""

from __future__ import annotations

import logging
import os

import mlflow
import pytest
from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.protos.model_registry_pb2 import ModelVersionTag as ProtoModelVersionTag
from mlflow.protos.model_registry_pb2 import RegisteredModelTag as ProtoRegisteredModelTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import sample


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return sample.saved(tmp_path_factory.mktemp("src") / "model", sample.regressor(3.0))


def register(client, name: str, source: str, **kwargs):
    """A new version of ``name`` (the registered model is created on first use)."""
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        assert e.error_code == "RESOURCE_ALREADY_EXISTS"
    return client.create_model_version(name, source, **kwargs)


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(MlflowException) as e:
        call(*args, **kwargs)
    return e.value.error_code


# ---------------------------------------------------------------------------------------------
# registered models

def test_create_read_update_and_delete_a_registered_model(client, db):
    created = client.create_registered_model("churn", tags={"team": "risk"}, description="who leaves")
    assert (created.name, created.description, created.tags) == ("churn", "who leaves", {"team": "risk"})

    client.update_registered_model("churn", description="customers who leave")
    got = client.get_registered_model("churn")
    assert (got.description, got.tags, got.latest_versions) == ("customers who leave", {"team": "risk"}, [])
    assert got.last_updated_timestamp >= got.creation_timestamp > 0

    client.delete_registered_model("churn")
    assert code_of(client.get_registered_model, "churn") == "RESOURCE_DOES_NOT_EXIST"
    assert db.sql("SELECT count(*) FROM pgm_registered_models") == [(0,)]


def test_a_name_can_be_registered_once(client):
    client.create_registered_model("churn")
    assert code_of(client.create_registered_model, "churn") == "RESOURCE_ALREADY_EXISTS"


def test_deleting_a_registered_model_deletes_its_rows(client, db, model_dir):
    register(client, "churn", model_dir)
    register(client, "churn", model_dir)
    client.delete_registered_model("churn")
    assert db.sql("SELECT count(*) FROM models") == [(0,)]
    assert code_of(client.get_model_version, "churn", "1") == "RESOURCE_DOES_NOT_EXIST"


def test_rename_carries_versions_tags_and_aliases(client, db, model_dir):
    register(client, "churn", model_dir, tags={"k": "v"})
    register(client, "churn", model_dir)
    client.set_registered_model_tag("churn", "team", "risk")
    client.set_registered_model_alias("churn", "champion", "1")

    client.rename_registered_model("churn", "attrition")

    renamed = client.get_registered_model("attrition")
    assert renamed.name == "attrition" and renamed.aliases == {"champion": 1}  # an int, as MLflow's own store gives
    assert renamed.tags == {"team": "risk"}
    assert client.get_model_version("attrition", "1").tags["k"] == "v"
    assert db.sql("SELECT DISTINCT name FROM models") == [("attrition",)]
    assert code_of(client.get_registered_model, "churn") == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow.pyfunc.load_model("models:/attrition@champion").predict(sample.X[:1])[0] == \
        pytest.approx(3.0 * sample.X[0, 0])
    # the numbers carry on after the rename
    assert register(client, "attrition", model_dir).version == 3


def test_rename_refuses_a_taken_name_and_an_unknown_model(client):
    client.create_registered_model("churn")
    client.create_registered_model("price")
    assert code_of(client.rename_registered_model, "churn", "price") == "RESOURCE_ALREADY_EXISTS"
    assert code_of(client.rename_registered_model, "nope", "other") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.rename_registered_model, "churn", "a/b") == "INVALID_PARAMETER_VALUE"


def test_registered_model_tags(client):
    client.create_registered_model("churn")
    client.set_registered_model_tag("churn", "team", "risk")
    client.set_registered_model_tag("churn", "team", "growth")
    client.set_registered_model_tag("churn", "tier", "1")
    client.delete_registered_model_tag("churn", "tier")
    assert client.get_registered_model("churn").tags == {"team": "growth"}
    assert code_of(client.set_registered_model_tag, "nope", "team", "x") == "RESOURCE_DOES_NOT_EXIST"


# ---------------------------------------------------------------------------------------------
# versions

def test_versions_get_update_and_delete(client, db, model_dir):
    first = register(client, "churn", model_dir, description="baseline", run_link="http://ci/1")
    assert (first.version, first.status, first.current_stage) == (1, "READY", "None")

    client.update_model_version("churn", "1", description="first try")
    got = client.get_model_version("churn", 1)
    assert (got.description, got.run_link, got.source) == ("first try", "http://ci/1", model_dir)

    client.delete_model_version("churn", "1")
    assert code_of(client.get_model_version, "churn", "1") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.delete_model_version, "churn", "1") == "RESOURCE_DOES_NOT_EXIST"
    assert db.sql("SELECT count(*) FROM models") == [(0,)]


def test_version_tags_and_the_event_and_model_type_columns(client, db, model_dir):
    client.create_registered_model("churn", tags={"model_type": "classifier_binary"})
    mv = client.create_model_version("churn", model_dir, tags={"event": "black_friday", "owner": "ann"})
    assert mv.tags == {"event": "black_friday", "model_type": "classifier_binary", "owner": "ann"}
    assert db.sql("SELECT event, model_type FROM models") == [("black_friday", "classifier_binary")]

    client.set_model_version_tag("churn", "1", "model_type", "regression")
    client.set_model_version_tag("churn", "1", "owner", "bob")
    client.delete_model_version_tag("churn", "1", "event")  # back to the default
    assert client.get_model_version("churn", "1").tags == \
        {"event": "default", "model_type": "regression", "owner": "bob"}
    assert db.sql("SELECT event, model_type FROM models") == [("default", "regression")]

    # without tags on the version or the model: the documented defaults
    client.create_registered_model("price")
    assert client.create_model_version("price", model_dir).tags == {"event": "default", "model_type": "unspecified"}


def test_event_tag_too_long_for_its_column_is_refused_before_anything_is_stored(client, db, model_dir):
    client.create_registered_model("churn")
    assert code_of(client.create_model_version, "churn", model_dir, tags={"model_type": "x" * 51}) == \
        "INVALID_PARAMETER_VALUE"
    assert db.sql("SELECT count(*) FROM models") == [(0,)]
    assert register(client, "churn", model_dir).version == 1


def test_register_does_not_wait_or_log_about_waiting(client, model_dir, caplog):
    client.create_registered_model("churn")
    with caplog.at_level(logging.INFO):
        client.create_model_version("churn", model_dir, await_creation_for=300)
    assert "Waiting up to" not in caplog.text


def test_copy_model_version_copies_bytes_inside_the_database(client, db, model_dir):
    register(client, "churn", model_dir, tags={"event": "q3"}, description="candidate")
    client.create_registered_model("churn-prod")
    register(client, "churn-prod", model_dir)

    copied = client.copy_model_version("models:/churn/1", "churn-prod")

    assert (copied.name, copied.version, copied.tags["event"]) == ("churn-prod", 2, "q3")
    rows = db.sql("SELECT name, version, sha256 FROM models ORDER BY name, version")
    assert rows[0][2] == rows[2][2]  # same digest: the same bytes
    loaded = mlflow.pyfunc.load_model("models:/churn-prod/2")
    assert loaded.predict(sample.X[:1])[0] == pytest.approx(3.0 * sample.X[0, 0])


def test_a_model_named_like_a_logged_model_id_is_still_a_registered_model(client, db, model_dir):
    # only m-<32 hex> is a LoggedModel id; m-churn is an ordinary registered model name
    register(client, "m-churn", model_dir)

    copied = client.copy_model_version("models:/m-churn/1", "churn-prod")
    registered = mlflow.register_model("models:/m-churn/1", "churn-staging")

    assert (copied.name, copied.version, registered.name, registered.version) == ("churn-prod", 1, "churn-staging", 1)
    digests = {row[0] for row in db.sql("SELECT sha256 FROM models")}
    assert len(digests) == 1  # copied inside the database, the same bytes
    assert mlflow.pyfunc.load_model("models:/churn-staging/1").predict(sample.X[:1])[0] == \
        pytest.approx(3.0 * sample.X[0, 0])


def test_a_placeholder_source_is_refused_for_a_model(client, db):
    # MLflow's prompt sources carry no files; on a model that is not a prompt they would make a
    # version that becomes latest and never loads
    client.create_registered_model("churn")
    for source in ("dummy-source", "prompt-template"):
        with pytest.raises(MlflowException) as e:
            client.create_model_version("churn", source)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "Invalid model version source" in e.value.message and "churn" in e.value.message
    assert db.sql("SELECT count(*) FROM models") == [(0,)]
    assert db.sql("SELECT next_version FROM pgm_registered_models") == [(1,)]


def test_download_uri_names_the_row_and_serves_its_files(client, model_dir, tmp_path):
    register(client, "churn model", model_dir)
    uri = client.get_model_version_download_uri("churn model", "1")
    assert uri == "pgmodels:/churn%20model/1"
    repo = get_artifact_repository(uri)
    assert "MLmodel" in [f.path for f in repo.list_artifacts()]
    local = repo.download_artifacts("", dst_path=str(tmp_path / "out"))
    assert sorted(os.listdir(local)) == sorted(os.listdir(model_dir))
    via_models_uri = mlflow.artifacts.download_artifacts("models:/churn model/1", dst_path=str(tmp_path / "o2"))
    assert set(os.listdir(via_models_uri)) - {"registered_model_meta"} == set(os.listdir(local))
    # the download URI itself works with MLflow's generic artifact download, with or without a
    # trailing "/" (MLflow splits an artifact URI at its last "/")
    for i, artifact_uri in enumerate([uri, uri + "/"]):
        via_uri = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp_path / f"o{i}"))
        assert set(os.listdir(via_uri)) == set(os.listdir(local))
    single = mlflow.artifacts.download_artifacts(artifact_uri=uri + "/MLmodel", dst_path=str(tmp_path / "o5"))
    assert open(single).read() == open(os.path.join(model_dir, "MLmodel")).read()
    assert code_of(client.get_model_version_download_uri, "churn model", "2") == "RESOURCE_DOES_NOT_EXIST"


# ---------------------------------------------------------------------------------------------
# aliases

def test_aliases_point_at_versions_and_load_by_models_uri(client, model_dir, tmp_path):
    register(client, "price", sample.saved(tmp_path / "m1", sample.regressor(1.0)))
    register(client, "price", sample.saved(tmp_path / "m2", sample.regressor(2.0)))

    client.set_registered_model_alias("price", "champion", "1")
    assert mlflow.pyfunc.load_model("models:/price@champion").predict(sample.X[:1])[0] == \
        pytest.approx(sample.X[0, 0])
    client.set_registered_model_alias("price", "champion", 2)  # moves it
    assert client.get_model_version_by_alias("price", "champion").version == 2
    assert client.get_model_version("price", "2").aliases == ["champion"]
    assert client.get_registered_model("price").aliases == {"champion": 2}
    assert mlflow.pyfunc.load_model("models:/price@champion").predict(sample.X[:1])[0] == \
        pytest.approx(2 * sample.X[0, 0])

    client.delete_registered_model_alias("price", "champion")
    assert code_of(client.get_model_version_by_alias, "price", "champion") == "INVALID_PARAMETER_VALUE"


def test_alias_errors(client, model_dir):
    register(client, "price", model_dir)
    assert code_of(client.set_registered_model_alias, "price", "latest", "1") == "INVALID_PARAMETER_VALUE"
    assert code_of(client.set_registered_model_alias, "price", "v2", "1") == "INVALID_PARAMETER_VALUE"
    assert code_of(client.set_registered_model_alias, "price", "bad alias!", "1") == "INVALID_PARAMETER_VALUE"
    assert code_of(client.set_registered_model_alias, "price", "champion", "7") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.set_registered_model_alias, "nope", "champion", "1") == "RESOURCE_DOES_NOT_EXIST"


def test_deleting_a_version_drops_its_aliases(client, model_dir):
    register(client, "price", model_dir)
    register(client, "price", model_dir)
    client.set_registered_model_alias("price", "champion", "1")
    client.delete_model_version("price", "1")
    assert client.get_registered_model("price").aliases == {}


# ---------------------------------------------------------------------------------------------
# searches

@pytest.fixture
def catalog(client, model_dir):
    """Three models with tags and versions from two runs."""
    runs = {}
    for name, team in (("churn", "risk"), ("churn-eu", "risk"), ("Price", "pricing")):
        client.create_registered_model(name, tags={"team": team})
    with mlflow.start_run() as a:
        runs["a"] = a.info.run_id
    with mlflow.start_run() as b:
        runs["b"] = b.info.run_id
    client.create_model_version("churn", model_dir, run_id=runs["a"], tags={"stage_hint": "candidate"})
    client.create_model_version("churn", model_dir, run_id=runs["b"])
    client.create_model_version("churn-eu", model_dir, run_id=runs["a"])
    client.create_model_version("Price", model_dir)
    return runs


def names(models) -> list[str]:
    return [m.name for m in models]


def test_search_registered_models_with_mlflow_filters(client, catalog):
    search = client.search_registered_models
    assert names(search("name = 'churn'")) == ["churn"]
    assert names(search("name LIKE 'churn%'")) == ["churn", "churn-eu"]
    assert names(search("name LIKE 'price'")) == []
    assert names(search("name ILIKE 'price'")) == ["Price"]
    assert names(search("name IN ('Price', 'churn-eu', 'nope')")) == ["Price", "churn-eu"]
    assert names(search("tags.team = 'risk'")) == ["churn", "churn-eu"]
    assert names(search("tags.`team` = 'risk' AND name != 'churn'")) == ["churn-eu"]
    # the UI's latest-version column
    assert [mv.version for mv in client.get_registered_model("churn").latest_versions] == [2]


def test_search_registered_models_order_and_pages(client, catalog):
    client.update_registered_model("churn-eu", description="touched last")
    assert names(client.search_registered_models(order_by=["timestamp DESC"]))[0] == "churn-eu"  # the UI's order
    assert names(client.search_registered_models(order_by=["name DESC"])) == ["churn-eu", "churn", "Price"]

    first = client.search_registered_models(max_results=2, order_by=["name ASC"])
    assert names(first) == ["Price", "churn"] and isinstance(first.token, str)
    rest = client.search_registered_models(max_results=2, order_by=["name ASC"], page_token=first.token)
    assert names(rest) == ["churn-eu"] and rest.token is None


def test_search_model_versions_with_mlflow_filters(client, catalog):
    def found(filter_string, **kwargs):
        return [(mv.name, mv.version) for mv in client.search_model_versions(filter_string, **kwargs)]

    by_version = {"order_by": ["name ASC", "version_number ASC"]}
    assert found("name = 'churn'", **by_version) == [("churn", 1), ("churn", 2)]
    assert found(f"run_id = '{catalog['a']}'", **by_version) == [("churn", 1), ("churn-eu", 1)]
    assert found(f"run_id IN ('{catalog['a']}', '{catalog['b']}')", **by_version) == \
        [("churn", 1), ("churn", 2), ("churn-eu", 1)]
    assert found("tags.stage_hint = 'candidate'") == [("churn", 1)]
    assert found("tags.team = 'risk'") == []  # registered-model tags are not version tags
    assert found("name LIKE 'churn%' AND version_number >= 2") == [("churn", 2)]
    assert found("tags.model_type = 'unspecified' AND name = 'Price'") == [("Price", 1)]
    # default order: most recently updated first
    client.update_model_version("churn", "1", "touched")
    assert found("")[0] == ("churn", 1)


def test_search_model_versions_in_pages(client, catalog):
    seen, token = [], None
    while True:
        page = client.search_model_versions(max_results=3, order_by=["name DESC", "version_number DESC"],
                                            page_token=token)
        seen += [(mv.name, mv.version) for mv in page]
        token = page.token
        if not token:
            break
    assert seen == [("churn-eu", 1), ("churn", 2), ("churn", 1), ("Price", 1)]


def test_search_error_codes(client, catalog):
    for bad in ("name = ", "owner = 'x'", "name ~ 'x'", "tags.team IS NULL"):
        assert code_of(client.search_registered_models, bad) == "INVALID_PARAMETER_VALUE", bad
    for bad in ("version_number = 'x'", "stage = 'Production'", "name === 'x'"):
        assert code_of(client.search_model_versions, bad) == "INVALID_PARAMETER_VALUE", bad
    assert code_of(client.search_registered_models, max_results=1001) == "INVALID_PARAMETER_VALUE"
    assert code_of(client.search_registered_models, order_by=["bogus"]) == "INVALID_PARAMETER_VALUE"
    assert code_of(client.search_model_versions, order_by=["stage ASC"]) == "INVALID_PARAMETER_VALUE"
    assert code_of(client.search_model_versions, page_token="garbage") == "INVALID_PARAMETER_VALUE"


def test_search_orders_and_errors_as_mlflow_does(client, catalog):
    # after an explicit order, ties break by name ASC, then version DESC (MLflow's own store),
    # not by what was updated last
    client.update_model_version("churn", "2", "touched first")
    client.update_model_version("churn", "1", "touched last")
    by_name = [(mv.name, int(mv.version)) for mv in client.search_model_versions(
        "name LIKE 'churn%'", order_by=["name DESC"])]
    assert by_name == [("churn-eu", 1), ("churn", 2), ("churn", 1)]
    # a key twice is refused, as MLflow does
    with pytest.raises(MlflowException, match="duplicate fields"):
        client.search_model_versions("", order_by=["name ASC", "name DESC"])
    with pytest.raises(MlflowException, match="duplicate fields"):
        client.search_registered_models(order_by=["timestamp ASC", "last_updated_timestamp DESC"])
    with pytest.raises(MlflowException, match="Invalid value for request parameter max_results"):
        client.search_registered_models(max_results=1001)
    with pytest.raises(MlflowException, match=r"Invalid value for max_results\. It must be a positive integer"):
        client.search_model_versions("", max_results=1e15)


def test_deleting_a_tag_needs_a_key(client, model_dir):
    register(client, "churn", model_dir)
    client.set_registered_model_tag("churn", "team", "risk")
    store = PgModelsRegistryStore(mlflow.get_tracking_uri())
    assert code_of(store.delete_registered_model_tag, "churn", None) == "INVALID_PARAMETER_VALUE"
    assert code_of(store.delete_model_version_tag, "churn", 1, None) == "INVALID_PARAMETER_VALUE"
    assert client.get_registered_model("churn").tags == {"team": "risk"}


# ---------------------------------------------------------------------------------------------
# errors for wrong names and versions

def test_wrong_names_and_versions_give_mlflow_error_codes(client, model_dir):
    register(client, "churn", model_dir)
    assert code_of(client.get_model_version, "churn", "2") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.get_model_version, "nope", "1") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.create_model_version, "nope", model_dir) == "RESOURCE_DOES_NOT_EXIST"
    for bad in ("abc", "1.5", "", "0", "-1", str(2**31)):  # versions are 1 … 2**31-1
        assert code_of(client.get_model_version, "churn", bad) == "INVALID_PARAMETER_VALUE", bad
    assert code_of(client.get_registered_model, "a/b") == "INVALID_PARAMETER_VALUE"
    for bad in ("", "a/b", "x" * 256):
        assert code_of(client.create_registered_model, bad) == "INVALID_PARAMETER_VALUE", bad
    assert code_of(client.transition_model_version_stage, "churn", "1", "Bogus") == "INVALID_PARAMETER_VALUE"
    assert code_of(client.update_model_version, "churn", "5", "x") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.set_model_version_tag, "churn", "5", "k", "v") == "RESOURCE_DOES_NOT_EXIST"
    assert code_of(client.create_model_version, "churn", "/no/such/dir") in \
        ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# ---------------------------------------------------------------------------------------------
# arguments as the REST server hands them over

def test_rest_shaped_arguments(db, model_dir):
    """Strings for versions, '' for unset fields, protobuf tags, stages=[] (what MLflow's handlers pass)."""
    store = PgModelsRegistryStore(db.uri, tracking_uri=db.uri)
    rm = store.create_registered_model("churn", tags=[ProtoRegisteredModelTag(key="team", value="risk")],
                                       description="")
    assert (rm.description, rm.tags) == (None, {"team": "risk"})
    mv = store.create_model_version("churn", model_dir, run_id="", run_link="", description="", model_id="",
                                    tags=[ProtoModelVersionTag(key="event", value="q4"),
                                          ProtoModelVersionTag(key="k", value="v")])
    assert (mv.version, mv.run_id, mv.run_link, mv.description, mv.model_id) == (1, None, None, None, None)
    assert mv.tags == {"event": "q4", "model_type": "unspecified", "k": "v"}

    store.transition_model_version_stage("churn", "1", "staging", False)
    assert [m.version for m in store.get_latest_versions("churn", stages=[])] == [1]
    assert [m.current_stage for m in store.get_latest_versions("churn", stages=["Staging"])] == ["Staging"]
    store.set_model_version_tag("churn", "1", ModelVersionTag("k", "w"))
    store.set_registered_model_alias("churn", "champion", "1")
    assert store.get_model_version_by_alias("churn", "champion").version == 1
    found = store.search_model_versions(filter_string="", max_results=10, order_by=[], page_token="")
    assert [m.tags["k"] for m in found] == ["w"]
    assert [m.name for m in store.search_registered_models(filter_string="", max_results=100, order_by=[],
                                                           page_token=None)] == ["churn"]
    store.set_registered_model_tag("churn", RegisteredModelTag("tier", ""))
    assert store.get_registered_model("churn").tags == {"team": "risk", "tier": ""}


def test_workspaces_are_refused_saying_how_to_run(db, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    with pytest.raises(MlflowException) as e:
        PgModelsRegistryStore(db.uri)
    assert e.value.error_code == "INVALID_STATE" and "without --enable-workspaces" in e.value.message


# ---------------------------------------------------------------------------------------------
# prompts live in the same registry

def test_prompts_work_and_stay_out_of_model_searches(client, model_dir):
    register(client, "churn", model_dir)
    mlflow.genai.register_prompt(name="summarize", template="Summarize: {{text}}")
    mlflow.genai.register_prompt(name="summarize", template="Summarize briefly: {{text}}")

    assert mlflow.genai.load_prompt("prompts:/summarize/1").template == "Summarize: {{text}}"
    assert mlflow.genai.load_prompt("prompts:/summarize@latest").version == 2
    assert names(client.search_registered_models()) == ["churn"]
    assert [mv.name for mv in client.search_model_versions("")] == ["churn"]
    assert [p.name for p in mlflow.genai.search_prompts()] == ["summarize"]
    assert code_of(client.create_registered_model, "summarize") == "RESOURCE_ALREADY_EXISTS"
