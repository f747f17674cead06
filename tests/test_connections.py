"""Connections: the cap per process, TCP keepalives, deadlocks, the tracking store's startup lock,
and MLflow's workspaces mode refused at start."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._pg.db import READ_URI_ENV, connection, databases, read_connection
from mlflow_pgmodels._pg.embedded import free_port
from mlflow_pgmodels.tracking_store import build_tracking_store
from tests import sample
from tests.mlflow_server import mlflow_server


def _our_backends(db) -> int:
    return db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                  " AND application_name = 'mlflow-pgmodels'")[0][0]


# ---------------------------------------------------------------------- the cap
def test_an_exhausted_pool_says_so_and_which_setting_to_raise(db, monkeypatch):
    monkeypatch.setenv("MLFLOW_PGMODELS_POOL_MAX_SIZE", "2")
    monkeypatch.setenv("MLFLOW_PGMODELS_POOL_TIMEOUT", "0.5")
    client = MlflowClient(registry_uri=db.uri)
    client.create_registered_model("churn")

    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(connection(db.uri))
        with pytest.raises(MlflowException) as e:
            client.get_registered_model("churn")
        assert _our_backends(db) == 2

    assert e.value.error_code == "TEMPORARILY_UNAVAILABLE"
    assert "exhausted" in e.value.message and "MLFLOW_PGMODELS_POOL_MAX_SIZE" in e.value.message
    assert client.get_registered_model("churn").name == "churn"  # a connection came free


def test_a_call_waits_for_a_connection_to_come_free(db, monkeypatch):
    monkeypatch.setenv("MLFLOW_PGMODELS_POOL_MAX_SIZE", "1")
    client = MlflowClient(registry_uri=db.uri)
    client.create_registered_model("churn")
    got = []

    with connection(db.uri) as conn:
        waiter = threading.Thread(target=lambda: got.append(client.get_registered_model("churn").name))
        waiter.start()
        assert got == []  # it cannot have finished: the only connection is here
    waiter.join()

    assert got == ["churn"]
    assert _our_backends(db) == 1


def test_a_pooled_connection_the_server_ended_while_idle_is_replaced_unseen(db, tmp_path):
    client = MlflowClient(registry_uri=db.uri)
    client.create_registered_model("churn")
    assert _our_backends(db) == 1  # idle in the pool
    assert db.sql("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND application_name = 'mlflow-pgmodels'") == [(True,)]

    version = client.create_model_version("churn", sample.saved(tmp_path / "v1", sample.regressor(1.0)))

    assert int(version.version) == 1
    assert client.get_model_version("churn", "1").current_stage == "None"


@pytest.mark.parametrize("env, value", [("MLFLOW_PGMODELS_POOL_MAX_SIZE", "eight"),
                                        ("MLFLOW_PGMODELS_POOL_TIMEOUT", "-1")])
def test_a_bad_pool_setting_is_refused_naming_it(db, monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(MlflowException) as e:
        MlflowClient(registry_uri=db.uri).search_registered_models()
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert f"{env}={value!r} is not a positive" in e.value.message


# ---------------------------------------------------------------------- the state of a URI
def test_closing_the_databases_ends_their_connections_and_the_next_call_opens_afresh(db):
    client = MlflowClient(registry_uri=db.uri)
    client.create_registered_model("churn")
    assert _our_backends(db) == 1  # idle in the pool
    database = databases.get(db.uri)

    databases.close_all()

    for _ in range(500):
        if not _our_backends(db):
            break
        time.sleep(0.01)
    assert _our_backends(db) == 0
    assert database.closed and databases.get(db.uri) is not database
    with pytest.raises(MlflowException, match="closed") as e, database.connection("use it", False):
        pass
    assert e.value.error_code == "INTERNAL_ERROR"
    assert client.get_registered_model("churn").name == "churn"


def test_threads_reading_past_an_unreachable_standby_leave_one_consistent_state(db, monkeypatch):
    """The standby's state and the WAL position seen are changed under one lock: threads that read
    (falling back to the primary) and write at once end with the standby skipped for a while and
    the highest position any of them saw remembered."""
    read_uri = f"pgmodels://postgres@127.0.0.1:{free_port()}/{db.name}"  # nothing listens there
    monkeypatch.setenv(READ_URI_ENV, read_uri)
    written: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        try:
            start.wait(timeout=60)
            for _ in range(10):
                with read_connection(db.uri) as conn:
                    assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
                with connection(db.uri) as conn:
                    conn.execute("SELECT txid_current()")  # commits a transaction: the WAL moves on
                    written.append(_lsn(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]))
        except BaseException as e:  # noqa: BLE001  (reported below)
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    assert databases.get(read_uri).standby_state == "unreachable"
    seen = databases.get(db.uri).seen
    with connection(db.uri) as conn:
        now = _lsn(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])
    assert max(written) <= seen <= now


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


# ---------------------------------------------------------------------- keepalives
def _keepalive_options(conn: psycopg.Connection) -> tuple[int, ...]:
    with socket.socket(fileno=socket.dup(conn.fileno())) as sock:
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


def test_pooled_tcp_connections_notice_a_dead_peer_within_a_minute(db):
    user, password = db.login_role("pgmodels_writer")
    uri = db.tcp_uri(user, password)
    with connection(uri) as conn:
        assert _keepalive_options(conn) == (True, 30, 10, 3)
    with connection(uri + "?keepalives_idle=45&keepalives_count=5") as conn:
        assert _keepalive_options(conn) == (True, 45, 10, 5)  # what the URI sets wins


# ---------------------------------------------------------------------- deadlocks
def test_a_deadlock_is_reported_as_a_collision_that_can_be_retried(db):
    client = MlflowClient(registry_uri=db.uri)
    for name in ("a", "b"):
        client.create_registered_model(name)
    both_locked_one = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def update(first: str, second: str) -> None:
        try:
            with connection(db.uri, f"describe {first} and {second}") as conn, conn.transaction():
                for name in (first, second):
                    conn.execute("UPDATE pgm_registered_models SET description = %s WHERE name = %s",
                                 (f"by {first}", name))
                    if name == first:
                        both_locked_one.wait(timeout=60)
            outcomes[first] = "committed"
        except MlflowException as e:
            outcomes[first] = e

    threads = [threading.Thread(target=update, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    failed = [o for o in outcomes.values() if isinstance(o, MlflowException)]
    assert sorted(o for o in outcomes.values() if o == "committed") == ["committed"] and len(failed) == 1
    assert failed[0].error_code == "TEMPORARILY_UNAVAILABLE"
    assert "collided with a concurrent change" in failed[0].message and "deadlock" in failed[0].message
    assert "retried" in failed[0].message and "not reachable" not in failed[0].message
    winner = next(name for name, o in outcomes.items() if o == "committed")
    assert {rm.description for rm in client.search_registered_models()} == {f"by {winner}"}


# ---------------------------------------------------------------------- startup lock
def test_the_tracking_store_startup_lock_belongs_to_a_transaction(db, tmp_path):
    """Behind PgBouncer (transaction pooling) only a transaction-scoped lock is sure to be released."""
    seen = []
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql")) as blocker:
        # MLflow's store reads alembic_version while it starts: hold it there, with our lock taken
        blocker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        builder = threading.Thread(target=build_tracking_store, args=(db.uri, str(tmp_path)))
        builder.start()
        for _ in range(6000):
            seen = db.sql("SELECT a.state, a.xact_start IS NOT NULL FROM pg_locks l"
                          " JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted")
            waiting = db.sql("SELECT 1 FROM pg_locks WHERE relation = 'alembic_version'::regclass"
                             " AND NOT granted")
            if seen and waiting:
                break
            time.sleep(0.01)
        blocker.rollback()
    builder.join()

    # one holder, inside a transaction (waiting on alembic_version itself, or idle while MLflow's
    # own connection does): a session-level lock would show a holder outside any transaction
    assert len(seen) == 1 and seen[0][0] in ("idle in transaction", "active") and seen[0][1] is True
    assert db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


# ---------------------------------------------------------------------- workspaces
def test_mlflow_server_with_workspaces_refuses_to_start_saying_why(db, tmp_path):
    with pytest.raises(RuntimeError) as e:
        with mlflow_server(tmp_path / "server", db.uri, env={"MLFLOW_ENABLE_WORKSPACES": "true"}):
            pass
    assert "exited" in str(e.value)
    assert "The pgmodels:// store does not support MLflow workspaces" in str(e.value)
    assert "without --enable-workspaces" in str(e.value)


def test_a_value_past_a_database_limit_is_a_bad_value_not_a_lost_connection(db):
    # psycopg files PostgreSQL's "program limit exceeded" (class 54) under OperationalError, next
    # to lost connections; it is about the value, and retrying would not help
    with pytest.raises(MlflowException) as e, connection(db.uri, "build a huge array") as conn:
        conn.execute("SELECT array_fill(1, ARRAY[100000000, 100000000])")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "not reachable" not in e.value.message
