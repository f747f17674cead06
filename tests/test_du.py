"""``mlflow-pgmodels du``: what the store costs on disk, in PostgreSQL's own figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest

from mlflow_pgmodels._storage import model_binary
from mlflow_pgmodels._lifecycle import space
from tests import sample

MiB = 2**20


def du(db, *args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", "du", *args, "--uri", db.uri],
                          capture_output=True, text=True, timeout=120)


def register_with_weights(client, tmp_path, name: str, versions: int, size: int) -> None:
    """``versions`` versions of ``name``, each a model directory with ``size`` random bytes of weights
    (random: the zip cannot shrink them)."""
    client.create_registered_model(name)
    for i in range(versions):
        path = sample.saved(tmp_path / f"{name}{i}")
        with open(os.path.join(path, "weights.bin"), "wb") as f:
            f.write(os.urandom(size))
        client.create_model_version(name, source=path)


def test_du_of_a_model_agrees_with_pg_total_relation_size(client, db, tmp_path):
    register_with_weights(client, tmp_path, "churn", versions=3, size=4 * MiB)

    run = du(db, "churn", "--json")
    assert run.returncode == 0, run.stderr
    usage = json.loads(run.stdout)

    [churn] = usage["models"]
    assert [v["version"] for v in churn["versions"]] == [1, 2, 3]
    assert all(4 * MiB < v["bytes"] < 4.2 * MiB and v["shared_bytes"] == 0 for v in churn["versions"])
    assert churn["bytes"] == sum(v["bytes"] for v in churn["versions"])
    on_disk = db.sql("SELECT pg_total_relation_size('models')")[0][0]
    assert usage["tables"]["models"] == on_disk
    assert 0.95 * on_disk <= churn["bytes"] <= on_disk  # the rest: row headers, indexes, TOAST chunk headers
    assert usage["database_bytes"] == db.sql("SELECT pg_database_size(current_database())")[0][0]
    assert usage["tables"]["pgm_history"] > 0 and "pgm_webhook_deliveries" in usage["tables"]

    text = du(db, "churn")
    assert text.returncode == 0, text.stderr
    assert "churn" in text.stdout and "v3" in text.stdout and "database" in text.stdout


def test_a_file_shared_by_a_version_and_its_logged_model_is_shown_as_shared_and_counted_once(
        client, db, monkeypatch):
    # a version whose zip would pass the limit is stored as files: the LoggedModel's own pieces (no copy)
    monkeypatch.setattr(model_binary, "MAX_BLOB_BYTES", 100)
    experiment_id = mlflow.create_experiment("shared")
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_text("x" * 50_000, "notes.txt")  # a run artifact of its own
        mlflow.sklearn.log_model(sample.regressor(), name="model", registered_model_name="big",
                                 pip_requirements=["scikit-learn"])
    assert db.sql("SELECT format FROM models WHERE name = 'big'") == [("files",)]

    usage = space.usage(db.uri)

    [big] = usage.models
    [version] = big.versions
    [experiment] = usage.experiments
    assert (experiment.experiment_id, experiment.name) == (experiment_id, "shared")
    shared_pieces = db.sql("SELECT sum(pg_column_size(p.data)) FROM pgm_blob_pieces p WHERE p.blob_id IN"
                           " (SELECT blob_id FROM pgm_version_files)")[0][0]
    assert version.shared_bytes == experiment.shared_bytes == usage.shared_bytes == shared_pieces
    assert experiment.logged_models_bytes == 0  # every file of the LoggedModel is the version's too
    assert experiment.runs_bytes >= 50_000
    assert version.bytes < 1000  # only the text in model_binary saying where the files are
    # each byte once: models' own + experiments' own + shared once + unreferenced = what is stored
    counted = (sum(m.bytes for m in usage.models) + usage.shared_bytes + usage.unreferenced_bytes
               + sum(e.runs_bytes + e.logged_models_bytes for e in usage.experiments))
    assert counted == usage.model_content_bytes + usage.piece_content_bytes


def test_du_of_an_empty_store_and_a_name_that_matches_nothing(db):
    usage = space.usage(db.uri)
    assert usage.models == [] and usage.experiments == [] and usage.shared_bytes == 0
    assert usage.other_bytes() > 0

    run = du(db, "nope*")
    assert run.returncode == 0, run.stderr
    assert "registered model" not in run.stdout


@pytest.mark.parametrize("group", ["pgmodels_reader"])
def test_a_reader_may_ask_du(client, db, tmp_path, group):
    register_with_weights(client, tmp_path, "churn", versions=1, size=1000)
    user, password = db.login_role(group)

    usage = space.usage(db.tcp_uri(user, password))

    assert [m.name for m in usage.models] == ["churn"]
