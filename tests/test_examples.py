"""The examples end to end, run as a user runs them (python examples/<script>.py), on small data."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres, free_port
from tests.conftest import ROOT

SMALL = ["--rows", "40"]


def run(script: str, *args: str, uri: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    if uri:
        environ["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=environ,
                          capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


def test_train_then_predict_from_the_database_reporting_a_missing_model(db):
    ok(run("train_regression.py", "--events", "cpi", "fomc_rate", *SMALL, uri=db.uri))
    ok(run("train_classifier.py", "--events", "cpi", *SMALL, uri=db.uri))

    result = run("predict.py", "--events", "cpi", "fomc_rate", *SMALL, uri=db.uri)

    assert db.sql("SELECT name, version, event, model_type FROM models ORDER BY name") == [
        ("cpi_classifier", 1, "cpi", "classifier_binary"), ("cpi_regression", 1, "cpi", "regression"),
        ("fomc_rate_regression", 1, "fomc_rate", "regression")]
    regression = db.sql("SELECT event, model_version, n_train + n_test, directional_accuracy,"
                        " up_precision IS NOT NULL FROM regression_results ORDER BY event")
    assert [r[:3] for r in regression] == [("cpi", 1, 36), ("fomc_rate", 1, 36)]
    assert all(0 <= r[3] <= 1 and r[4] for r in regression)
    assert db.sql("SELECT event, model_version, accuracy BETWEEN 0 AND 1 FROM classifier_results") == [
        ("cpi", 1, True)]
    # the runs are ordinary MLflow runs with the params and metrics
    assert db.sql("SELECT count(*) FROM metrics WHERE key = 'directional_accuracy'") == [(2,)]

    # fomc_rate has no classifier: reported, and everything else was predicted
    assert result.returncode == 1
    assert "fomc_rate: no classifier_binary model to predict with" in result.stdout
    assert "fomc_rate_classifier" in result.stdout
    assert "cpi: 4 predictions with cpi_regression version 1" in result.stdout
    assert db.sql("SELECT model_name, model_version, count(*) FROM predictions GROUP BY 1, 2 ORDER BY 1") == [
        ("cpi_classifier", 1, 4), ("cpi_regression", 1, 4), ("fomc_rate_regression", 1, 4)]


def test_training_from_a_csv_file(db, tmp_path):
    csv = tmp_path / "releases.csv"
    out = ok(run("train_regression.py", "--source", "csv", "--csv", str(csv), "--events", "nonfarm_payrolls",
                 *SMALL, uri=db.uri))

    assert f"Wrote sample data for nonfarm_payrolls to {csv}" in out
    assert len(csv.read_text().splitlines()) == 41
    assert db.sql("SELECT name, version FROM models") == [("nonfarm_payrolls_regression", 1)]
    assert db.sql("SELECT count(*) FROM event_observations") == [(0,)]
    assert db.sql("SELECT model_version FROM regression_results") == [(1,)]


def test_quickstart_on_the_configured_store(db):
    result = run("quickstart.py", *SMALL, uri=db.uri)
    out = ok(result)

    # examples are read as documentation: their data triggers no MLflow warning
    assert "integer column" not in result.stdout + result.stderr

    assert db.sql("SELECT version, is_active FROM models WHERE name = 'cpi_regression' ORDER BY version") == [
        (1, True), (2, False)]
    assert "models:/cpi_regression/latest is now version 1" in out
    assert db.sql("SELECT DISTINCT model_version FROM predictions WHERE model_name = 'cpi_regression'") == [(1,)]
    assert db.sql("SELECT count(DISTINCT model_name) FROM predictions") == [(6,)]
    assert 'mlflow server --backend-store-uri "$MLFLOW_TRACKING_URI"' in out


def test_quickstart_without_configuration_uses_an_embedded_postgresql():
    data_home = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # short: unix socket paths have a limit
    port = free_port()
    env = {"XDG_DATA_HOME": str(data_home), "MLFLOW_PGMODELS_EMBEDDED_PORT": str(port)}
    server = EmbeddedPostgres(data_home / "mlflow-pgmodels" / "pgdata", port=port)
    try:
        out = ok(run("quickstart.py", *SMALL, env=env))

        assert f"using the embedded PostgreSQL in {server.data_dir}" in out
        assert f"mlflow server --backend-store-uri '{server.socket_uri('mlflow')}'" in out
        # the server outlives the script: the next process sees the same store
        assert server.running()
        rows = server.psql("SELECT name || ' v' || version FROM models WHERE NOT is_active", "mlflow")
        assert "cpi_regression v2" in rows
        # everything is in the database: no artifact directory here or next to it
        logged = server.psql("SELECT 'models=' || count(*) FROM pgm_artifacts WHERE path LIKE '%/MLmodel'", "mlflow")
        assert int(re.search(r"models=(\d+)", logged).group(1)) >= 6
        assert sorted(os.listdir(data_home / "mlflow-pgmodels")) == ["pgdata", "pgdata.sock"]
        assert not [p for p in os.listdir(".") if p in ("mlruns", "mlartifacts", "artifacts")]
    finally:
        server.stop()
        shutil.rmtree(data_home, ignore_errors=True)
