"""Live reload: a serving handle on a model URI follows every change of what the URI means.

What a predict service relies on: after an alias move, a new registration, an archive by plain
SQL or a stage change, the handle serves the new version on its own, shortly after the commit;
a version that cannot be loaded never replaces a working one; a database restart loses nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres
from mlflow_pgmodels.live import LiveModel
from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import sample

ROOT = Path(__file__).resolve().parent.parent


def _wait(what: str, check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _slope(live: LiveModel) -> float:
    return float(live.predict(sample.X[:1])[0] / sample.X[0, 0])


def _register(client: MlflowClient | PgModelsRegistryStore, tmp_path, name: str, slope: float) -> int:
    return int(sample.register(client, tmp_path, name, sample.regressor(slope)).version)


def test_an_alias_move_is_served(client, db, tmp_path):
    for slope in (1.0, 2.0):
        _register(client, tmp_path, "churn", slope)
    client.set_registered_model_alias("churn", "champion", 1)
    changes = []
    with LiveModel("models:/churn@champion", uri=db.uri, on_change=lambda old, new: changes.append((old, new))) as live:
        assert (live.version, _slope(live)) == (1, pytest.approx(1.0))

        client.set_registered_model_alias("churn", "champion", 2)
        _wait("version 2", lambda: live.version == 2)
        assert _slope(live) == pytest.approx(2.0)
        assert changes == [(1, 2)] and live.last_error is None


def test_a_new_registration_is_served_as_latest_and_a_plain_sql_archive_goes_back(client, db, tmp_path):
    _register(client, tmp_path, "churn", 1.0)
    with LiveModel("models:/churn/latest", uri=db.uri) as live:
        assert live.version == 1
        _register(client, tmp_path, "churn", 2.0)
        _wait("version 2", lambda: live.version == 2)
        assert _slope(live) == pytest.approx(2.0)

        db.sql("UPDATE models SET is_active = false WHERE name = 'churn' AND version = 2")
        _wait("version 1 again", lambda: live.version == 1)
        assert _slope(live) == pytest.approx(1.0)


def test_a_stage_uri_follows_transitions(client, db, tmp_path):
    for slope in (1.0, 2.0):
        _register(client, tmp_path, "churn", slope)
    client.transition_model_version_stage("churn", 1, "Production")
    with LiveModel("models:/churn/production", uri=db.uri) as live:  # stages are case-insensitive
        assert live.version == 1
        client.transition_model_version_stage("churn", 2, "Production", archive_existing_versions=True)
        _wait("version 2", lambda: live.version == 2)
        assert _slope(live) == pytest.approx(2.0)


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(client, db, tmp_path, caplog):
    _register(client, tmp_path, "churn", 1.0)
    with LiveModel("models:/churn/latest", uri=db.uri) as live:
        db.sql("INSERT INTO models (name, version, model_type, event, model_binary)"
               " VALUES ('churn', 2, 'regression', 'cpi', 'not a model at all')")
        _wait("the failed load to be reported", lambda: live.last_error is not None)
        assert live.version == 1 and _slope(live) == pytest.approx(1.0)
        assert "version 2 failed to load, kept version 1" in live.last_error
        assert any("version 2 failed to load" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

        assert _register(client, tmp_path, "churn", 3.0) == 3
        _wait("version 3", lambda: live.version == 3)
        assert live.last_error is None and _slope(live) == pytest.approx(3.0)


def test_close_stops_listening(client, db, tmp_path):
    _register(client, tmp_path, "churn", 1.0)
    listeners = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mlflow-pgmodels live' AND datname = %s"
    live = LiveModel("models:/churn/latest", uri=db.uri)
    assert db.sql(listeners, (db.name,)) == [(1,)]
    live.close()
    _wait("the listener to disconnect", lambda: db.sql(listeners, (db.name,)) == [(0,)])
    assert not live.connected and live.version == 1  # the last model stays usable


@pytest.mark.parametrize("model_uri, code", [
    ("models:/churn", "INVALID_PARAMETER_VALUE"),            # a LoggedModel id: never changes
    ("runs:/abc/model", "INVALID_PARAMETER_VALUE"),
    ("models:/nobody/latest", "RESOURCE_DOES_NOT_EXIST"),
    ("models:/churn@nobody", "INVALID_PARAMETER_VALUE"),
    ("models:/churn/Nonsense", "INVALID_PARAMETER_VALUE"),    # no such stage
])
def test_bad_uris_are_refused_up_front(client, db, tmp_path, model_uri, code):
    client.create_registered_model("churn")
    with pytest.raises(MlflowException) as e:
        LiveModel(model_uri, uri=db.uri)
    assert e.value.error_code == code


@pytest.mark.slow
def test_a_database_restart_loses_no_change(tmp_path):
    """A change made while the handle cannot reach the database is served once it can again."""
    base = tempfile.mkdtemp(prefix="pgmodels-restart-")
    os.chmod(base, 0o755)  # the server's own user must reach its socket (as in conftest.py)
    server = EmbeddedPostgres(Path(base) / "data", tcp=True, durable=False).start()
    try:
        server.psql("CREATE DATABASE live")
        owner_uri = server.socket_uri("live")
        owner = PgModelsRegistryStore(owner_uri)  # no tracking store needed here
        _register(owner, tmp_path, "churn", 1.0)  # creates the schema too
        server.psql("", "live", str(ROOT / "sql" / "roles.sql"))
        server.psql("CREATE ROLE predict_job LOGIN PASSWORD 'pw-predict' IN ROLE pgmodels_reader")

        with LiveModel("models:/churn/latest", uri=server.tcp_uri("live", "predict_job", "pw-predict")) as live:
            assert live.version == 1 and live.connected
            # keep the handle out after the restart until the change below is committed
            server.psql("REVOKE CONNECT ON DATABASE live FROM PUBLIC, pgmodels_reader")
            server.stop("fast")
            _wait("the handle to notice", lambda: not live.connected)
            server.start()
            assert _register(owner, tmp_path, "churn", 2.0) == 2
            assert not live.connected and live.version == 1

            server.psql("GRANT CONNECT ON DATABASE live TO pgmodels_reader")
            _wait("version 2 after reconnecting", lambda: live.version == 2, timeout=30)
            assert live.connected and _slope(live) == pytest.approx(2.0)
            assert live.last_error is None
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow  # a child process that imports MLflow and fills the sample data: ~20 s
def test_the_serving_example_follows_a_new_registration(client, db, tmp_path):
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    features = ["consensus", "previous", "actual", "surprise", "pre_volatility"]
    X = pd.DataFrame(sample.X[:, [0, 1, 2, 0, 1]], columns=features)

    def register(constant: float) -> None:
        model = DummyRegressor(strategy="constant", constant=constant).fit(X, sample.X[:, 0])
        sample.register(client, tmp_path, "cpi_regression", model)

    register(1.0)
    env = {**os.environ, "MLFLOW_TRACKING_URI": db.uri}
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "serve_live.py"), "--every", "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def read_until(text: str) -> list[str]:
            seen, deadline = [], time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                assert line, "the example exited:\n" + "".join(seen)
                seen.append(line)
                if text in line:
                    return seen
            raise AssertionError(f"no {text!r} in:\n" + "".join(seen))

        assert "+1.000 from version 1" in read_until("request 1:")[-1]
        register(2.0)
        lines = read_until("+2.000 from version 2")
        assert any("now serving version 2 (was 1)" in line for line in lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
