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
from mlflow_pgmodels._pg.embedded import free_port
from mlflow_pgmodels._events.webhook_delivery import Dispatcher
from tests import pgbouncer, procs, sample
from tests.mlflow_server import client_env, mlflow_server
from tests.test_webhooks import receiver, webhook_env  # noqa: F401  (fixtures)

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
def test_mlflow_server_through_pgbouncer_on_a_multi_host_uri(db, bouncer, tmp_path):
    down = free_port()  # first in the list, nothing listens there: libpq goes on to PgBouncer
    backend = f"pgmodels://postgres@127.0.0.1:{down},127.0.0.1:{bouncer.port}/{db.name}?target_session_attrs=read-write"
    with mlflow_server(tmp_path / "server", backend, workers=2) as server:
        clients = [subprocess.Popen([sys.executable, "-c", REGISTER_AND_LOAD, str(10 * i + 1), str(10 * i + 2)],
                                    cwd=tmp_path, env=client_env(server.url, tmp_path / f"cache{i}"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outputs = []
        for proc in clients:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-6000:]
            outputs.append(json.loads(stdout.splitlines()[-1]))
        failures = server.failures()

    assert sorted(v for out in outputs for v in out["versions"]) == [1, 2, 3, 4]
    for i, out in enumerate(outputs):
        assert out["predictions"] == pytest.approx([s * sample.X[0, 0] for s in (10 * i + 1, 10 * i + 2)])
    assert failures == []
    assert db.sql("SELECT count(*) FROM runs") == [(4,)]
    assert bouncer.transactions(db.name) > 20


# ---------------------------------------------------------------------- connection budget
WORKERS, POOL_MAX, SA_POOL, SA_OVERFLOW = 4, 3, 2, 1
# per worker: our pool + MLflow's SQLAlchemy pool (size + overflow) + the webhook dispatcher's LISTEN
BUDGET = WORKERS * (POOL_MAX + SA_POOL + SA_OVERFLOW + 1)


def _busy_client(server_url: str, workdir: str, seed: int) -> None:
    """In a child: 2 threads of registry reads, searches and a cold load through the server."""
    import threading as _threading

    procs.enter(workdir, tracking_uri=server_url)
    client = MlflowClient()
    errors = []

    def work() -> None:
        try:
            for _ in range(3):
                client.search_registered_models()
                client.get_model_version_by_alias("m", "latest")
                client.search_model_versions("name = 'm'")
            mlflow.pyfunc.load_model("models:/m/1")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [_threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"client {seed}: {errors[:3]}")


@pytest.mark.slow
def test_server_under_load_stays_within_its_connection_budget(db, tmp_path):
    env = {"MLFLOW_PGMODELS_POOL_MAX_SIZE": str(POOL_MAX), "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(SA_POOL),
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(SA_OVERFLOW)}
    mlflow.set_tracking_uri(db.uri)
    sample.log(sample.regressor(2.0), "m")
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                          " AND pid <> pg_backend_pid()")[0][0])
            stop.wait(0.02)

    with mlflow_server(tmp_path / "server", db.uri, workers=WORKERS, env=env) as server:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            children = [procs.context().Process(target=_busy_client, args=(server.url, str(tmp_path / f"c{i}"), i))
                        for i in range(16)]
            for child in children:
                child.start()
            for child in children:
                child.join(240)
        finally:
            stop.set()
            watcher.join()
        failures = server.failures()

    assert [child.exitcode for child in children] == [0] * 16
    assert failures == []
    print(f"peak connections: {peak[0]} (budget {BUDGET})")
    assert WORKERS < peak[0] <= BUDGET


def test_webhooks_are_delivered_through_pgbouncer_without_listen(db, bouncer, webhook_env, receiver, tmp_path,
                                                                 caplog):
    # LISTEN cannot work through a transaction pooler: the dispatcher says so once and its
    # workers deliver on their periodic wake-ups instead
    from tests.test_webhooks import MV_CREATED, SECRET, signed

    client = MlflowClient(tracking_uri=bouncer.uri(db.name))
    client.create_webhook("ci", receiver.url, events=[MV_CREATED], secret=SECRET)
    dispatcher = Dispatcher(bouncer.uri(db.name)).start()
    try:
        sample.register(client, tmp_path)
        events = receiver.wait_for(1)
    finally:
        dispatcher.stop()

    assert [(e["entity"], e["action"]) for e in events] == [("model_version", "created")]
    assert all(signed(headers, body) for headers, body in receiver.received)
    assert caplog.text.count("LISTEN does not work") == 1
