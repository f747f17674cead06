"""One database, clients of several MLflow releases: MLflow's Alembic schema and ``db upgrade``'s plan."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels.cli import main
from mlflow_pgmodels._pg.schema import SCHEMA_VERSION
from mlflow_pgmodels.tracking_store import build_tracking_store

HEAD = _mlflow.mlflow_schema_head()
NEWER = "0123456789ab"  # a revision no MLflow release has: a newer MLflow's, as far as this one knows


def tables(db) -> list[str]:
    return [r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]


def test_dry_run_on_an_empty_database_says_what_it_would_create_and_creates_nothing(empty_db, capsys):
    assert main(["db", "upgrade", "--dry-run", "--uri", empty_db.uri]) == 0
    out = capsys.readouterr().out
    assert f"MLflow's tables: none yet; create them at revision {HEAD} (MLflow {_mlflow.MLFLOW_VERSION})" in out
    assert f"pgmodels schema: none yet; create version {SCHEMA_VERSION}" in out
    assert out.rstrip().endswith("nothing changed (--dry-run)")
    assert tables(empty_db) == []


def test_upgrade_prints_the_plan_then_does_it_and_records_which_mlflow_did(empty_db, capsys):
    assert main(["db", "upgrade", "--uri", empty_db.uri]) == 0
    out = capsys.readouterr().out
    plan_at = out.index(f"create them at revision {HEAD}")
    assert plan_at < out.index(f"pgmodels schema at version {SCHEMA_VERSION} (was absent)")
    assert empty_db.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert empty_db.sql("SELECT obj_description('alembic_version'::regclass, 'pg_class')") == [
        (f"upgraded by MLflow {_mlflow.MLFLOW_VERSION} to revision {HEAD} (mlflow-pgmodels)",)]

    assert main(["db", "upgrade", "--dry-run", "--uri", empty_db.uri]) == 0
    again = capsys.readouterr().out
    assert f"MLflow's tables: at revision {HEAD}, current" in again
    assert f"pgmodels schema: at version {SCHEMA_VERSION}, current" in again
    assert again.rstrip().endswith("nothing to change")


def test_dry_run_names_each_mlflow_migration_from_revision_to_revision(db, capsys):
    previous, description = _mlflow.mlflow_migrations(None)[-2][0], _mlflow.mlflow_migrations(None)[-1][1]
    db.sql("UPDATE alembic_version SET version_num = %s", (previous,))
    db.sql("UPDATE pgm_schema_info SET schema_version = %s", (SCHEMA_VERSION - 1,))
    assert main(["db", "upgrade", "--dry-run", "--uri", db.uri]) == 0
    out = capsys.readouterr().out
    assert (f"MLflow's tables: from revision {previous} to {HEAD} (MLflow {_mlflow.MLFLOW_VERSION}): "
            f"1 migration(s): {HEAD} ({description})") in out
    assert "Clients of older MLflow releases will then be refused" in out
    assert f"pgmodels schema: from version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}" in out
    assert db.sql("SELECT version_num FROM alembic_version") == [(previous,)]  # nothing changed
    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION - 1,)]


def test_an_older_mlflow_schema_is_refused_saying_to_run_db_upgrade(db):
    previous = _mlflow.mlflow_migrations(None)[-2][0]
    db.sql("UPDATE alembic_version SET version_num = %s", (previous,))
    with pytest.raises(MlflowException, match=f"revision {previous}, older than MLflow") as raised:
        build_tracking_store(db.uri)
    assert "mlflow-pgmodels db upgrade --uri" in raised.value.message


@pytest.mark.parametrize("recorded", [True, False])
def test_a_database_a_newer_mlflow_upgraded_is_refused_saying_which_and_what_to_do(db, capsys, recorded):
    db.sql("UPDATE alembic_version SET version_num = %s", (NEWER,))
    if recorded:
        db.sql(f"COMMENT ON TABLE alembic_version IS 'upgraded by MLflow 9.9.0 to revision {NEWER} (mlflow-pgmodels)'")
    mlflow.set_tracking_uri(db.uri)
    with pytest.raises(MlflowException) as raised:
        mlflow.MlflowClient().search_experiments()
    message = raised.value.message
    assert raised.value.error_code == "INVALID_STATE"
    assert f"revision {NEWER}, which MLflow {_mlflow.MLFLOW_VERSION} does not know" in message
    if recorded:
        assert "upgraded by MLflow 9.9.0" in message and 'pip install "mlflow>=9.9.0"' in message
    else:
        assert "upgraded by a newer MLflow" in message and "pip install -U mlflow" in message
    assert "restore a backup" in message

    # db upgrade refuses it before changing anything, with the same words
    assert main(["db", "upgrade", "--uri", db.uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: This database's MLflow tables were upgraded by") and NEWER in err
    assert db.sql("SELECT version_num FROM alembic_version") == [(NEWER,)]
