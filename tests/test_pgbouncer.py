"""Through PgBouncer in transaction pooling mode (Debian's package), and a server's connection budget.

Under transaction pooling each transaction may run on another server connection, shared with
other clients: prepared statements and session state do not carry over, LISTEN does not work.
The pools here are small (2 server connections) so that client connections do share them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import joblib
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import helpers
from mlflow_pgmodels.cli import main
from tests import pgbouncer, procs, sample
from tests.mlflow_server import client_env, mlflow_server, run_client

pytestmark = pytest.mark.skipif(not pgbouncer.available(), reason=f"no pgbouncer: {pgbouncer.INSTALL_HINT}")


@pytest.fixture
def bouncer(pg):
    """PgBouncer in front of the session's server: transaction pooling, 2 server connections per database."""
    running = pgbouncer.PgBouncer(pg, pool_size=2).start()
    yield running
    running.stop()


def _predicts(model_uri: str, slope: float) -> bool:
    return mlflow.pyfunc.load_model(model_uri).predict(sample.X[:1])[0] == pytest.approx(slope * sample.X[0, 0])


def test_registry_tracking_helpers_and_migrate_through_pgbouncer(db, bouncer, tmp_path, capsys):
    uri = bouncer.uri(db.name)
    mlflow.set_tracking_uri(uri)
    for slope in (1.0, 2.0):
        sample.log(sample.regressor(slope), "m")
    client = MlflowClient()
    failures = []

    def reader(i: int) -> None:
        try:  # the same statements many times over, on connections that share 2 backends
            for _ in range(8):
                assert [int(v.version) for v in client.search_model_versions("name = 'm'", order_by=["version_number"])] == [1, 2]
                assert int(client.get_latest_versions("m")[0].version) == 2
                assert len(client.search_runs([client.get_experiment_by_name("Default").experiment_id])) == 2
            assert _predicts("models:/m/latest", 2.0)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []

    ok, version = helpers.save_model_to_db(sample.regressor(3.0), "seed", "cpi", "regression", uri=uri)
    assert ok and version == 1
    model, loaded = helpers.load_model_from_db("seed", "cpi", "regression", uri=uri)
    assert loaded == 1 and model.predict(sample.X[:1])[0] == pytest.approx(3.0 * sample.X[0, 0])

    (tmp_path / "old").mkdir()
    joblib.dump(sample.regressor(4.0), tmp_path / "old" / "legacy.joblib")
    assert main(["migrate", str(tmp_path / "old"), "--pattern", "{name}.joblib", "--event", "cpi",
                 "--model-type", "regression", "--uri", uri]) == 0
    assert _predicts("models:/legacy/1", 4.0)

    assert db.sql("SELECT name, version FROM models ORDER BY name, version") == [
        ("legacy", 1), ("m", 1), ("m", 2), ("seed", 1)]
    assert bouncer.transactions(db.name) > 100  # it all went through PgBouncer


def test_live_reload_through_pgbouncer_asks_for_a_direct_connection(db, bouncer):
    from mlflow_pgmodels.live import LiveModel

    uri = bouncer.uri(db.name)
    mlflow.set_tracking_uri(uri)
    sample.log(sample.regressor(1.0), "m")

    with pytest.raises(MlflowException) as e:
        LiveModel("models:/m/latest", uri=uri)

    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "transaction-pooling connection pooler" in e.value.message and "directly" in e.value.message
    with LiveModel("models:/m/latest", uri=db.uri) as live:  # directly: it works
        assert live.version == 1


REGISTER_AND_LOAD = """
import json, sys
import mlflow
from tests import sample

versions = [int(sample.log(sample.regressor(float(s)), "churn").registered_model_version) for s in sys.argv[1:]]
models = [mlflow.pyfunc.load_model(f"models:/churn/{v}").predict(sample.X[:1])[0] for v in versions]
print(json.dumps({"versions": versions, "predictions": list(models)}))
"""


@pytest.mark.slow
def test_mlflow_server_through_pgbouncer(db, bouncer, tmp_path):
    with mlflow_server(tmp_path / "server", bouncer.uri(db.name), workers=2) as server:
        procs_ = [subprocess.Popen([sys.executable, "-c", REGISTER_AND_LOAD, str(10 * i + 1), str(10 * i + 2)],
                                   cwd=tmp_path, env=client_env(server.url, tmp_path / f"cache{i}"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
        outputs = []
        for proc in procs_:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-6000:]
            outputs.append(json.loads(stdout.splitlines()[-1]))
        failures = server.failures()

    versions = sorted(v for out in outputs for v in out["versions"])
    assert versions == [1, 2, 3, 4, 5, 6]
    for out, i in zip(outputs, range(3)):
        slopes = [10 * i + 1, 10 * i + 2]
        assert out["predictions"] == pytest.approx([s * sample.X[0, 0] for s in slopes])
    assert failures == []
    assert db.sql("SELECT count(*) FROM runs") == [(6,)]
