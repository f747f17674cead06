"""Which database, or which server: the answers of the one router (mlflow_pgmodels/_pg/route.py),
as usage examples. Each routing rule is shown once with the router's answer, and where the
answer is a database, the repository that asked reads the real files there."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._pg.route import DatabaseRoute, Router, ServerRoute, resolve_uri
from mlflow_pgmodels.run_artifact_repo import RunArtifactRepository
from mlflow_pgmodels.version_artifact_repo import VersionArtifactRepository
from tests import sample

SERVER = "http://127.0.0.1:9"  # nothing listens there: an answer that goes to it is never a database
OTHER_SERVER = "https://mlflow.example"
IN_SERVER = {"_MLFLOW_SERVER_FILE_STORE": "pgmodels://backend/db", "_MLFLOW_SERVER_REGISTRY_STORE": "pgmodels://reg/db"}
RUN_FILES = "pgmodels-artifacts:/1/0123/artifacts"
VERSION = "pgmodels:/churn/1"


# --- a pgmodels:// store URI: always that database --------------------------------------------
def test_a_store_uri_is_that_database_whatever_else_is_configured(db):
    mlflow.set_tracking_uri(SERVER)
    assert Router(IN_SERVER).route(db.uri, tracking_uri=SERVER) == DatabaseRoute(db.uri)
    assert DatabaseRoute(db.uri).conninfo.startswith("postgresql://")


# --- commands and helpers: --uri / uri=, else the environment, never a server -----------------
def test_a_command_uses_its_uri_else_the_registry_then_the_tracking_uri_of_the_environment(db, monkeypatch):
    assert resolve_uri(db.uri) == db.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db.uri)
    assert resolve_uri(None) == db.uri
    assert resolve_uri("sqlite:///not-ours.db") == db.uri  # not a pgmodels store: the environment's
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "pgmodels://registry/db")
    assert resolve_uri(None) == "pgmodels://registry/db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", SERVER)  # a server is no database: the tracking URI's
    assert resolve_uri(None) == db.uri


def test_a_command_without_a_database_is_told_how_to_give_one(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)  # a server: commands and helpers need the database
    with pytest.raises(MlflowException) as e:
        resolve_uri(None)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and "pass --uri pgmodels://" in e.value.message


# --- pgmodels:/<name>/<version>: the registry side first ---------------------------------------
@pytest.fixture
def version(client, db, tmp_path):
    """churn version 1 registered in ``db``; MLflow's URIs reset afterwards (a fresh client)."""
    client.create_registered_model("churn")
    client.create_model_version("churn", sample.saved(tmp_path / "model"))
    mlflow.set_tracking_uri(None)
    return db


def test_a_version_is_read_from_the_registry_database(version):
    router = Router({})
    assert router.route(VERSION, registry_uri=version.uri, tracking_uri=SERVER) == DatabaseRoute(version.uri)
    files = VersionArtifactRepository(VERSION, registry_uri=version.uri, tracking_uri=SERVER).list_artifacts()
    assert "MLmodel" in [f.path for f in files]


def test_mlflow_s_registry_uri_and_then_the_given_tracking_uri_count_for_a_version(version):
    mlflow.set_tracking_uri(version.uri)  # MLflow's registry URI defaults to its tracking URI
    assert Router({}).route(VERSION) == DatabaseRoute(version.uri)
    assert "MLmodel" in [f.path for f in VersionArtifactRepository(VERSION).list_artifacts()]
    mlflow.set_tracking_uri(None)
    assert Router({}).route(VERSION, tracking_uri=version.uri) == DatabaseRoute(version.uri)


def test_a_version_with_only_a_server_known_goes_through_it():
    assert Router({}).route(VERSION, registry_uri=SERVER) == ServerRoute(SERVER)
    assert Router({}).route(VERSION, tracking_uri=SERVER) == ServerRoute(SERVER)
    mlflow.set_registry_uri(OTHER_SERVER)
    assert Router({}).route(VERSION) == ServerRoute(OTHER_SERVER)
    assert Router({}).route(VERSION, tracking_uri=SERVER) == ServerRoute(SERVER)  # the given URI first


def test_a_database_anywhere_wins_over_a_server(version):
    mlflow.set_registry_uri(version.uri)
    assert Router({}).route(VERSION, registry_uri=SERVER) == DatabaseRoute(version.uri)


def test_inside_mlflow_server_a_version_comes_from_the_server_s_registry_store():
    router = Router(IN_SERVER)
    assert router.in_server() and router.server_database() == "pgmodels://backend/db"
    assert router.route(VERSION) == DatabaseRoute("pgmodels://reg/db")
    assert router.route(VERSION, registry_uri="pgmodels://given/db") == DatabaseRoute("pgmodels://given/db")


def test_nothing_known_is_no_answer_and_the_repository_says_what_to_set():
    assert Router({}).route(VERSION) is None
    with pytest.raises(MlflowException) as e:
        VersionArtifactRepository(VERSION).list_artifacts()
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and "Set MLFLOW_REGISTRY_URI" in e.value.message


# --- pgmodels-artifacts:/…: the tracking side, then the registry side, then the store built ------
@pytest.fixture
def run_files(client, db):
    """The artifact URI of a run with notes.txt, logged into ``db``; MLflow's URIs reset afterwards."""
    with mlflow.start_run() as run:
        mlflow.log_text("in the database", "notes.txt")
    mlflow.set_tracking_uri(None)
    return run.info.artifact_uri


def test_run_files_are_read_from_the_tracking_database(db, run_files):
    assert Router({}).route(run_files, tracking_uri=db.uri) == DatabaseRoute(db.uri)
    assert [f.path for f in RunArtifactRepository(run_files, tracking_uri=db.uri).list_artifacts()] == ["notes.txt"]


def test_run_files_of_a_server_client_with_a_registry_database_are_read_from_that_database(db, run_files):
    # registering a model from a run through a server: the registry store reads the run's files
    assert Router({}).route(run_files, tracking_uri=SERVER, registry_uri=db.uri) == DatabaseRoute(db.uri)
    repo = RunArtifactRepository(run_files, tracking_uri=SERVER, registry_uri=db.uri)
    assert [f.path for f in repo.list_artifacts()] == ["notes.txt"]


def test_inside_mlflow_server_run_files_come_from_its_backend_then_its_registry_store():
    assert Router(IN_SERVER).route(RUN_FILES) == DatabaseRoute("pgmodels://backend/db")
    registry_only = {**IN_SERVER, "_MLFLOW_SERVER_FILE_STORE": "sqlite:///mlflow.db"}
    assert Router(registry_only).route(RUN_FILES) == DatabaseRoute("pgmodels://reg/db")
    assert Router(IN_SERVER).route(RUN_FILES, tracking_uri="pgmodels://given/db") == DatabaseRoute("pgmodels://given/db")


def test_run_files_go_through_the_tracking_server_only():
    assert Router({}).route(RUN_FILES, tracking_uri=SERVER) == ServerRoute(SERVER)
    assert Router({}).route(RUN_FILES, registry_uri=SERVER) is None  # run files are the tracking server's


def test_the_tracking_store_this_process_built_serves_run_files_with_no_uri_given(db, run_files):
    router = Router({})
    router.remember_store(db.uri)  # what building a pgmodels:// tracking store does (mlflow gc)
    assert router.route(run_files) == DatabaseRoute(db.uri)
    # the client that logged the run built one for db: the process's router knows it
    assert [f.path for f in RunArtifactRepository(run_files).list_artifacts()] == ["notes.txt"]


def test_a_client_with_a_server_never_falls_back_to_a_store_built_before():
    router = Router({})
    router.remember_store("pgmodels://used/before")
    mlflow.set_tracking_uri(SERVER)
    assert router.route(RUN_FILES) == ServerRoute(SERVER)
    # Decided two ways before the router: "goes through a server" was judged on the first tracking
    # URI only, the server on either; a given tracking URI that is neither database nor server (a
    # file or sqlite store) then sent the files to the database this process had used before.
    assert router.route(RUN_FILES, tracking_uri="sqlite:///other.db") == ServerRoute(SERVER)
    mlflow.set_tracking_uri(None)
    assert router.route(RUN_FILES, tracking_uri="sqlite:///other.db") == DatabaseRoute("pgmodels://used/before")


def test_a_bad_path_is_refused_before_any_server_is_asked():
    repo = RunArtifactRepository(RUN_FILES, tracking_uri=SERVER)
    with pytest.raises(MlflowException) as e:
        repo.list_artifacts("../elsewhere")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and "Cannot reach" not in e.value.message
