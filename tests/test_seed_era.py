"""A database made by the seed's own DDL (the ``models`` table and nothing else, raw joblib bytes in
``model_binary``), met for the first time by each entry point: upgraded where the role may, read as
it is where it may not (a reader role, a hot standby). Also an older pgmodels schema met by a reader."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import joblib
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import helpers
from mlflow_pgmodels._pg.schema import SCHEMA_VERSION
from tests import sample
from tests.conftest import ROOT
from tests.mlflow_server import mlflow_server, run_client

CLI = [os.path.join(os.path.dirname(sys.executable), "mlflow-pgmodels")]
# (version, active, slope): version 3 is archived, so the latest active one is 2
SEED_ROWS = ((1, True, 1.0), (2, True, 2.0), (3, False, 3.0))


def make_seed_era(database) -> None:
    """The seed's table, by its own DDL, with the rows its joblib-era helpers wrote."""
    database.server.psql("", database.name, str(ROOT / "sql" / "create_models_table.sql"))
    for version, active, slope in SEED_ROWS:
        blob = io.BytesIO()
        joblib.dump(sample.regressor(slope), blob)
        database.sql("INSERT INTO models (name, version, model_type, event, model_binary, is_active)"
                     " VALUES ('legacy', %s, 'regression', 'ev_old', %s, %s)", (version, blob.getvalue(), active))


def slope_of(model) -> float:
    return float(model.predict(sample.X[:1])[0] / sample.X[0, 0])


def tables(database) -> set[str]:
    return {r[0] for r in database.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.fixture
def seed_db(empty_db):
    make_seed_era(empty_db)
    return empty_db


@pytest.fixture
def reader_uri(seed_db) -> str:
    """A pgmodels_reader login (sql/roles.sql): SELECT only, no DDL."""
    return seed_db.tcp_uri(*seed_db.login_role("pgmodels_reader"))


def check_reads(uri: str) -> None:
    """What a predict job does first: every read entry point, each as this process's first use of ``uri``."""
    model, version = helpers.load_model_from_db("legacy", "ev_old", "regression", uri=uri)
    assert (version, slope_of(model)) == (2, pytest.approx(2.0))
    model, version = helpers.load_model_from_db("legacy", "ev_old", "regression", version=3, uri=uri)
    assert (version, slope_of(model)) == (3, pytest.approx(3.0))
    assert helpers.get_latest_model_version("legacy", "ev_old", "regression", uri=uri) == 2
    with pytest.raises(MlflowException, match="Model 'legacy' has: event 'ev_old', model_type 'regression'"):
        helpers.load_model_from_db("legacy", "other", "regression", uri=uri)
    mlflow.set_registry_uri(uri)
    assert slope_of(mlflow.pyfunc.load_model("models:/legacy/latest")) == pytest.approx(2.0)
    assert slope_of(mlflow.pyfunc.load_model("models:/legacy/1")) == pytest.approx(1.0)
    client = MlflowClient(registry_uri=uri)
    assert [(mv.version, mv.current_stage) for mv in client.search_model_versions("name = 'legacy'")] == \
        [(3, "Archived"), (2, "None"), (1, "None")]
    assert client.get_model_version("legacy", 2).tags == {"event": "ev_old", "model_type": "regression"}
    assert [rm.name for rm in client.search_registered_models()] == ["legacy"]


# ---------------------------------------------------------------------- a role that may upgrade
def test_the_helpers_first_call_upgrades_a_seed_era_table(seed_db):
    model, version = helpers.load_model_from_db("legacy", "ev_old", "regression", uri=seed_db.uri)

    assert (version, slope_of(model)) == (2, pytest.approx(2.0))
    assert {"models", "pgm_schema_info", "pgm_registered_models"} <= tables(seed_db)


def test_every_read_entry_point_first_on_a_seed_era_table_as_its_owner(seed_db):
    check_reads(seed_db.uri)
    ok, version = helpers.save_model_to_db(sample.regressor(4.0), "legacy", "ev_old", "regression", uri=seed_db.uri)
    assert (ok, version) == (True, 4)  # new versions continue after the seed's numbers


def test_get_latest_model_version_first_on_a_seed_era_table(seed_db):
    assert helpers.get_latest_model_version("legacy", "ev_old", "regression", uri=seed_db.uri) == 2


# ---------------------------------------------------------------------- a role that may not
def test_a_reader_role_reads_a_seed_era_table_as_it_is_and_changes_nothing(seed_db, reader_uri):
    before = seed_db.sql("SELECT name, version, is_active, md5(model_binary) FROM models ORDER BY version")

    check_reads(reader_uri)

    ok, version = helpers.save_model_to_db(sample.regressor(4.0), "legacy", "ev_old", "regression", uri=reader_uri)
    assert (ok, version) == (False, None)
    with pytest.raises(MlflowException) as e:
        MlflowClient(registry_uri=reader_uri).set_registered_model_alias("legacy", "champion", 2)
    assert e.value.error_code == "PERMISSION_DENIED"
    assert "mlflow-pgmodels db upgrade" in e.value.message and "pw-" not in e.value.message
    assert helpers.deactivate_model("legacy", "ev_old", "regression", 2, uri=reader_uri) is False
    assert tables(seed_db) == {"models"}
    assert seed_db.sql("SELECT name, version, is_active, md5(model_binary) FROM models ORDER BY version") == before


def test_the_cli_on_a_seed_era_table_as_reader_then_as_owner(seed_db, reader_uri):
    history = subprocess.run([*CLI, "history", "legacy", "--uri", reader_uri], capture_output=True, text=True,
                             timeout=120)
    assert history.returncode == 2 and history.stdout == ""
    assert "mlflow-pgmodels db upgrade" in history.stderr and "Traceback" not in history.stderr
    assert "pw-" not in history.stderr

    upgrade = subprocess.run([*CLI, "db", "upgrade", "--registry-only", "--uri", seed_db.uri], capture_output=True,
                             text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "(was absent)" in upgrade.stdout

    # the reader, in a new process, now reads the upgraded table (and its history)
    read = subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow_pgmodels import helpers; "
         "print(helpers.load_model_from_db('legacy', 'ev_old', 'regression', uri=sys.argv[1])[1])", reader_uri],
        capture_output=True, text=True, timeout=120)
    assert read.returncode == 0 and read.stdout.split()[-1] == "2", read.stderr


def test_mlflow_server_with_a_reader_role_serves_a_seed_era_table(seed_db, reader_uri, tmp_path):
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'tracking.db'}", registry_uri=reader_uri) as server:
        out = run_client(server.url, tmp_path, (
            "import mlflow, numpy as np\n"
            "from tests import sample\n"
            "m = mlflow.pyfunc.load_model('models:/legacy/latest')\n"
            "print(float(m.predict(sample.X[:1])[0] / sample.X[0, 0]))\n"
            "print([mv.version for mv in mlflow.MlflowClient().search_model_versions(\"name = 'legacy'\")])\n"))
    slope, versions = out.strip().splitlines()[-2:]
    assert float(slope) == pytest.approx(2.0)
    assert versions == "['3', '2', '1']"  # as MLflow's REST client returns them
    assert tables(seed_db) == {"models"}


def test_a_reader_reads_an_older_pgmodels_schema_it_may_not_upgrade(client, db, tmp_path):
    """A predict job that connects before the owner ran `db upgrade` after a release bumped the schema."""
    client.create_registered_model("churn")
    client.create_model_version("churn", sample.saved(tmp_path / "m"), tags={"event": "cpi"})
    db.sql("UPDATE pgm_schema_info SET schema_version = schema_version - 1")
    reader = db.tcp_uri(*db.login_role("pgmodels_reader"))

    assert helpers.get_latest_model_version("churn", "cpi", "unspecified", uri=reader) == 1
    assert [mv.version for mv in MlflowClient(registry_uri=reader).get_latest_versions("churn")] == [1]
    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION - 1,)]
