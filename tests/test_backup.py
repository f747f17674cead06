"""Backup is real: ``pg_dump`` of a store, ``pg_restore`` into a fresh server, and everything
(run artifacts, LoggedModels, registered versions) loads from there, byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import psycopg
import pytest

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres, binary
from tests import sample


def _connection_args(server: EmbeddedPostgres, dbname: str) -> list[str]:
    return ["-h", str(server.socket_dir), "-p", str(server.port), "-U", "postgres", "-d", dbname]


def _tree(path: str) -> dict[str, str]:
    """Every file below ``path``: relative path → SHA-256."""
    found = {}
    for top, _, names in os.walk(path):
        for name in names:
            full = os.path.join(top, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = hashlib.file_digest(f, "sha256").hexdigest()
    return found


def _snapshot(runs: dict, models: dict, tmp_path, label: str) -> dict:
    """What a user checks: the bytes of every run's artifacts and LoggedModel's files, and every
    model's predictions."""
    files = {}
    for run_id, info in runs.items():
        files[run_id] = _tree(mlflow.artifacts.download_artifacts(
            run_id=run_id, dst_path=str(tmp_path / label / run_id)))
        files[info.model_id] = _tree(mlflow.artifacts.download_artifacts(
            f"models:/{info.model_id}", dst_path=str(tmp_path / label / info.model_id)))
    predictions = {uri: mlflow.pyfunc.load_model(uri).predict(sample.X[:5]).tolist() for uri in models}
    return {"files": files, "predictions": predictions}


def test_pg_dump_and_pg_restore_into_a_fresh_server_keep_everything(client, db, pg, tmp_path, monkeypatch):
    experiment_id = mlflow.create_experiment("churn")
    runs, models = {}, {}
    for slope in (2.0, 3.0):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_text(f"slope {slope}", "notes/slope.txt")
            mlflow.log_dict({"slope": slope}, "config.json")
            blob = tmp_path / f"weights-{slope}.bin"
            blob.write_bytes(os.urandom(3 << 20))  # past the one-statement size: written by COPY
            mlflow.log_artifact(str(blob), "weights")
            info = mlflow.sklearn.log_model(sample.regressor(slope), name="model", pip_requirements=["scikit-learn"],
                                            registered_model_name="churn")
        runs[run.info.run_id] = info
        models.update({f"runs:/{run.info.run_id}/model": slope, f"models:/{info.model_id}": slope})
    with mlflow.start_run(experiment_id=experiment_id) as unregistered:
        mlflow.log_text("not registered", "notes/why.txt")
        info = mlflow.sklearn.log_model(sample.regressor(7.0), name="model", pip_requirements=["scikit-learn"])
    runs[unregistered.info.run_id] = info
    models.update({f"models:/{info.model_id}": 7.0, "models:/churn/1": 2.0, "models:/churn/2": 3.0})
    before = _snapshot(runs, models, tmp_path, "before")
    assert len(before["files"]) == 6 and all(before["files"].values())
    assert "MLmodel" in before["files"][info.model_id]
    counts = "SELECT (SELECT count(*) FROM pgm_artifacts), (SELECT count(*) FROM pgm_blobs), (SELECT count(*) FROM models)"
    stored = db.sql(counts)

    dump = tmp_path / "store.dump"
    subprocess.run([binary("pg_dump"), "-Fc", "-f", str(dump), *_connection_args(pg, db.name)],
                   check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="pgmodels-restored-"))
    base.chmod(0o755)  # the server runs as its own user
    fresh = EmbeddedPostgres(base / "data", durable=False).start()
    try:
        fresh.psql("CREATE DATABASE restored")
        subprocess.run([binary("pg_restore"), "--exit-on-error", *_connection_args(fresh, "restored"), str(dump)],
                       check=True, capture_output=True)
        # the original is gone: whatever loads now comes from the restored copy
        pg.psql(f"DROP DATABASE {db.name} WITH (FORCE)")
        # a new machine: new cache, and none of MLflow's per-run artifact repositories of this process
        from mlflow.tracking._tracking_service.utils import _artifact_repos_cache

        _artifact_repos_cache.clear()
        monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_DIR", str(tmp_path / "new-cache"))
        restored = fresh.socket_uri("restored")
        mlflow.set_tracking_uri(restored)

        assert _snapshot(runs, models, tmp_path, "after") == before
        with psycopg.connect(fresh.socket_uri("restored", scheme="postgresql"), autocommit=True) as conn:
            assert conn.execute(counts).fetchone() == stored[0]
        # and the restored store takes new writes (identities and version counters came along)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_text("after restore", "notes/new.txt")
            mlflow.sklearn.log_model(sample.regressor(9.0), name="model", pip_requirements=["scikit-learn"],
                                     registered_model_name="churn")
        mlflow.MlflowClient().log_text(run.info.run_id, "after restore", "notes/new.txt")
        assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/new.txt") == "after restore"
        with psycopg.connect(fresh.socket_uri("restored", scheme="postgresql"), autocommit=True) as conn:
            # the overwritten file's old blob went (the restored trigger)
            assert conn.execute("SELECT count(*) FROM pgm_blobs b WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a"
                                " WHERE a.blob_id = b.id) AND NOT EXISTS (SELECT 1 FROM pgm_version_files f"
                                " WHERE f.blob_id = b.id)").fetchone() == (0,)
        assert mlflow.pyfunc.load_model("models:/churn/3").predict(sample.X[:1])[0] == \
            pytest.approx(9.0 * sample.X[0, 0])
    finally:
        mlflow.set_tracking_uri(None)
        fresh.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
