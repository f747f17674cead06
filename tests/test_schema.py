"""The schema: SQL files for psql, creation on first use, ``mlflow-pgmodels db``, legacy databases,
and the SQL files shipped inside the wheel."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import joblib
import mlflow
import psycopg
import pytest
from mlflow import MlflowClient

from mlflow_pgmodels._pg.schema import SCHEMA_VERSION
from tests import sample
from tests.conftest import ROOT

# The seed's models table, column by column (sql/create_models_table.sql must give exactly this).
SEED_COLUMNS = [
    ("id", "integer", "NO"), ("name", "character varying", "NO"), ("version", "integer", "NO"),
    ("model_type", "character varying", "NO"), ("event", "character varying", "NO"),
    ("model_binary", "bytea", "NO"), ("created_at", "timestamp without time zone", "NO"),
    ("is_active", "boolean", "YES"),
]
CLI = [os.path.join(os.path.dirname(sys.executable), "mlflow-pgmodels")]


def columns(db, table: str) -> list[tuple]:
    return db.sql("SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                  " WHERE table_name = %s ORDER BY ordinal_position", (table,))


def tables(db) -> set[str]:
    return {r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def psql_file(db, filename: str) -> None:
    db.server.psql("", db.name, str(ROOT / "sql" / filename))


def test_create_models_table_sql_is_the_seed_table_and_runs_twice(empty_db):
    psql_file(empty_db, "create_models_table.sql")
    psql_file(empty_db, "create_models_table.sql")
    assert columns(empty_db, "models") == SEED_COLUMNS
    assert tables(empty_db) == {"models"}


def test_create_tables_sql_builds_the_full_schema_and_runs_twice(empty_db):
    psql_file(empty_db, "create-tables.sql")
    first = tables(empty_db)
    psql_file(empty_db, "create-tables.sql")

    assert tables(empty_db) == first
    assert {"models", "pgm_registered_models", "pgm_model_version_tags", "pgm_aliases",
            "pgm_registered_model_tags", "pgm_schema_info"} <= first
    assert columns(empty_db, "models")[:len(SEED_COLUMNS)] == SEED_COLUMNS  # only added columns
    assert empty_db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION,)]
    # and the store takes that database as it is
    MlflowClient(registry_uri=empty_db.uri).create_registered_model("churn")
    assert empty_db.sql("SELECT name FROM pgm_registered_models") == [("churn",)]


def test_the_store_creates_its_schema_on_first_use_of_an_empty_database(empty_db, tmp_path):
    # (with tracking on the same database MLflow's tables come too: see test_concurrency.py)
    mlflow.set_registry_uri(empty_db.uri)
    client = MlflowClient()
    client.create_registered_model("price")
    client.create_model_version("price", sample.saved(tmp_path / "model", sample.regressor(2.0)))

    assert {"models", "pgm_registered_models", "pgm_schema_info"} <= tables(empty_db)
    assert columns(empty_db, "models")[:len(SEED_COLUMNS)] == SEED_COLUMNS
    assert mlflow.pyfunc.load_model("models:/price/latest").predict(sample.X[:1])[0] == \
        pytest.approx(2 * sample.X[0, 0])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_db_init_by_three_processes_at_once_on_an_empty_database_then_init_and_upgrade_again(empty_db):
    started = [subprocess.Popen([*CLI, "db", "init", "--uri", empty_db.uri], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in started]

    assert [code for code, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    assert sum(f"pgmodels schema at version {SCHEMA_VERSION} (was absent)" in out for _, out, _ in results) == 1
    assert {"models", "pgm_registered_models", "runs", "experiments"} <= tables(empty_db)
    assert empty_db.sql("SELECT count(*) FROM alembic_version") == [(1,)]
    assert empty_db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION,)]

    for action in ("init", "upgrade"):
        again = run_cli("db", action, "--uri", empty_db.uri)
        assert again.returncode == 0, again.stderr
        assert f"pgmodels schema at version {SCHEMA_VERSION} (was {SCHEMA_VERSION})" in again.stdout


def test_db_init_without_a_database_says_how_to_give_one(tmp_path):
    result = subprocess.run([*CLI, "db", "init"], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert result.returncode == 2
    assert "--uri pgmodels://" in result.stderr


# ---------------------------------------------------------------------------------------------
# `db upgrade` on a live database: a long read of `models` is open in another session

@contextlib.contextmanager
def long_read_of_models(db):
    """Another session in the middle of a transaction that has read ``models`` (ACCESS SHARE)."""
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), application_name="long-report") as conn:
        conn.execute("SELECT count(*) FROM models")
        yield conn
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # never disturbed


def run_cli_unless_it_queues_on_models(db, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mlflow-pgmodels *args``; fails the test as soon as the command waits for a lock on ``models``."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    give_up = time.monotonic() + 300  # only so that a hang fails the test instead of stalling the run
    while proc.poll() is None:
        if time.monotonic() > give_up:
            proc.kill()
            pytest.fail(f"`mlflow-pgmodels {' '.join(args)}` hung")
        if db.sql("SELECT 1 FROM pg_locks WHERE relation = 'models'::regclass AND NOT granted"
                  " AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = 'mlflow-pgmodels')"):
            if not (env or {}).get("MLFLOW_PGMODELS_LOCK_TIMEOUT"):
                proc.kill()
                pytest.fail(f"`mlflow-pgmodels {' '.join(args)}` queued for a lock on models")
        time.sleep(0.05)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_db_upgrade_of_a_current_schema_takes_no_lock_on_models_and_changes_nothing(db):
    row_version = db.sql("SELECT xmin::text FROM pgm_schema_info")
    with long_read_of_models(db):
        result = run_cli_unless_it_queues_on_models(db, "db", "upgrade", "--uri", db.uri)
    assert result.returncode == 0, result.stderr
    assert f"pgmodels schema at version {SCHEMA_VERSION} (was {SCHEMA_VERSION})" in result.stdout
    assert db.sql("SELECT xmin::text FROM pgm_schema_info") == row_version


def test_db_upgrade_that_cannot_lock_models_fails_fast_saying_what_holds_it_and_what_to_do(db):
    db.sql("UPDATE pgm_schema_info SET schema_version = %s", (SCHEMA_VERSION - 1,))
    with long_read_of_models(db) as reader:
        failed = run_cli_unless_it_queues_on_models(db, "db", "upgrade", "--registry-only", "--uri", db.uri,
                                                    env={"MLFLOW_PGMODELS_LOCK_TIMEOUT": "0.5"})
        reader_pid = reader.info.backend_pid
    assert failed.returncode == 2
    # what it was about to do, and nothing that claims it was done
    assert f"pgmodels schema: from version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}" in failed.stdout
    assert "pgmodels schema at version" not in failed.stdout
    message = failed.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: Cannot upgrade the pgmodels schema")
    assert f"pid {reader_pid}" in message and "long-report" in message and "models" in message
    assert "pg_stat_activity" in message and "retry" in message and "MLFLOW_PGMODELS_LOCK_TIMEOUT" in message
    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION - 1,)]

    # once the long transaction is over, the same command goes through
    upgraded = run_cli("db", "upgrade", "--registry-only", "--uri", db.uri)
    assert upgraded.returncode == 0, upgraded.stderr
    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION,)]


# ---------------------------------------------------------------------------------------------
# a database from before the plugin: the seed's table with rows in it

def _legacy_rows(empty_db) -> None:
    """The seed's table with rows its helper code wrote: raw joblib bytes, no MLflow metadata."""
    psql_file(empty_db, "create_models_table.sql")
    for name, version, model_type, active, slope in (("price", 1, "regression", False, 1.0),
                                                    ("price", 2, "regression", True, 2.0),
                                                    ("churn", 1, "classifier_binary", True, None)):
        blob = io.BytesIO()
        joblib.dump(sample.regressor(slope) if slope else sample.classifier(), blob)
        empty_db.sql("INSERT INTO models (name, version, model_type, event, model_binary, is_active)"
                     " VALUES (%s, %s, %s, 'black_friday', %s, %s)",
                     (name, version, model_type, blob.getvalue(), active))


def test_a_database_with_legacy_rows_is_upgraded_and_its_rows_listed(empty_db):
    _legacy_rows(empty_db)
    upgraded = run_cli("db", "upgrade", "--uri", empty_db.uri)
    assert upgraded.returncode == 0, upgraded.stderr

    mlflow.set_tracking_uri(empty_db.uri)
    client = MlflowClient()
    assert sorted(rm.name for rm in client.search_registered_models()) == ["churn", "price"]
    versions = {(mv.name, mv.version): mv for mv in client.search_model_versions("")}
    assert sorted(versions) == [("churn", 1), ("price", 1), ("price", 2)]
    assert versions["price", 1].current_stage == "Archived"
    assert versions["price", 2].tags == {"event": "black_friday", "model_type": "regression"}
    assert mlflow.pyfunc.load_model("models:/price/latest").predict(sample.X[:1])[0] == \
        pytest.approx(2 * sample.X[0, 0])
    # new versions continue after the legacy numbers
    assert int(sample.log(sample.regressor(3.0), "price").registered_model_version) == 3


def test_first_use_upgrades_a_legacy_database_too(empty_db):
    _legacy_rows(empty_db)
    client = MlflowClient(registry_uri=empty_db.uri)
    assert [mv.version for mv in client.get_latest_versions("price")] == [2]
    assert columns(empty_db, "models")[:len(SEED_COLUMNS)] == SEED_COLUMNS


# ---------------------------------------------------------------------------------------------
# installed from a wheel (not editable)

def test_the_wheel_ships_the_sql_files_and_finds_them(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("mlflow_pgmodels", "sql"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("mlflow_pgmodels-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("mlflow_pgmodels/sql/")}
        zf.extractall(tmp_path / "site")
    assert {f"mlflow_pgmodels/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")} == shipped

    found = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from mlflow_pgmodels._pg import schema;"
         " print(schema.sql_dir()); print(len(schema.read_sql('create-tables.sql')))", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    sql_dir, length = found.stdout.split()
    assert Path(sql_dir) == tmp_path / "site" / "mlflow_pgmodels" / "sql" and int(length) > 1000


@pytest.mark.parametrize("first_import", ["mlflow_pgmodels._pg.uri", "mlflow_pgmodels.version_artifact_repo"])
def test_the_schemes_register_whichever_module_a_program_imports_first(first_import):
    check = (f"import warnings; warnings.simplefilter('error', UserWarning); import {first_import}; "
             "from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository; "
             "from mlflow.tracking._tracking_service.utils import _tracking_store_registry; "
             "print(type(get_artifact_repository('pgmodels:/churn/1')).__name__, "
             "_tracking_store_registry.get_store_builder('pgmodels://x/y').__name__)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["VersionArtifactRepository", "build_tracking_store"]
