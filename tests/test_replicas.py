"""Multi-host URIs, reads from a hot standby, and a failover to it.

The standby is a real streaming replica (tests/replica.py: pg_basebackup of a primary of its own);
replay is paused with pg_wal_replay_pause() to make it lag for as long as a test needs.
"""

from __future__ import annotations

import json
import os
import time

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import helpers
from mlflow_pgmodels._pg.db import READ_URI_ENV, READ_WAIT_ENV
from mlflow_pgmodels._pg.embedded import free_port
from tests import procs, sample
from tests.replica import Pair
from tests.test_faults import _keep_working, _small_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(pg):
    running = Pair.start(pg)
    yield running
    running.close()


def _slope(model_uri: str) -> float:
    return float(mlflow.pyfunc.load_model(model_uri).predict(sample.X[:1])[0] / sample.X[0, 0])


# ---------------------------------------------------------------------- multi-host URIs
def test_multi_host_uris_serve_registry_and_tracking(db):
    user, password = db.login_role("pgmodels_writer")
    down = free_port()  # nothing listens there: libpq goes on to the next host
    socket_dir, port = db.server.socket_dir, db.server.port
    uris = [
        f"pgmodels://{user}:{password}@127.0.0.1:{down},127.0.0.1:{port}/{db.name}?target_session_attrs=read-write",
        f"pgmodels://{user}:{password}@127.0.0.1:{down},127.0.0.1:{port}/{db.name}?load_balance_hosts=random",
        f"pgmodels://postgres@/{db.name}?host={socket_dir},{socket_dir}x&port={port},{down}"
        "&target_session_attrs=primary",
    ]
    for i, uri in enumerate(uris):
        mlflow.set_tracking_uri(uri)
        info = sample.log(sample.regressor(float(i + 1)), "m")  # a run and a logged model, then a version

        assert int(info.registered_model_version) == i + 1
        assert _slope("models:/m/latest") == pytest.approx(i + 1)
        assert MlflowClient().get_run(info.run_id).info.status == "FINISHED"
    assert db.sql("SELECT count(*) FROM runs") == [(3,)]


# ---------------------------------------------------------------------- reads from a standby
def test_reads_go_to_the_standby_yet_never_behind_this_process(pair, monkeypatch, tmp_path):
    primary_uri = pair.uri_of(pair.primary)
    monkeypatch.setenv(READ_URI_ENV, pair.uri_of(pair.standby))
    monkeypatch.setenv(READ_WAIT_ENV, "0.2")
    mlflow.set_tracking_uri(primary_uri)
    client = MlflowClient()
    client.create_registered_model("rw")
    client.create_model_version("rw", _small_model_dir(str(tmp_path / "v1"), 1.0))
    pair.wait_replayed()
    pair.pause_replay()
    try:
        # another client registers version 2: this process has not seen it, the paused standby answers
        pair.sql(pair.primary, "INSERT INTO models (name, version, model_type, event, model_binary)"
                               " SELECT name, 2, model_type, event, model_binary FROM models WHERE name = 'rw'")
        assert int(client.get_latest_versions("rw")[0].version) == 1
        assert helpers.get_latest_model_version("rw", "default", "unspecified", uri=primary_uri) == 1

        # this process registers version 3 itself: it reads it at once (the primary answers)
        mv = client.create_model_version("rw", _small_model_dir(str(tmp_path / "v3"), 3.0))
        assert int(mv.version) == 3
        assert int(client.get_latest_versions("rw")[0].version) == 3
        assert _slope("models:/rw/latest") == pytest.approx(3.0)
        assert int(client.get_model_version_by_alias("rw", "latest").version) == 3  # and again: not back to 1
        assert helpers.get_latest_model_version("rw", "default", "unspecified", uri=primary_uri) == 3
        assert [int(v.version) for v in client.search_model_versions("name = 'rw'")] == [3, 2, 1]
    finally:
        pair.resume_replay()
    pair.wait_replayed()

    # replayed: the standby answers again, and what it has is never older than what this process saw
    pair.pause_replay()
    try:
        pair.sql(pair.primary, "UPDATE models SET is_active = false WHERE name = 'rw' AND version = 3")
        assert int(client.get_latest_versions("rw")[0].version) == 3
    finally:
        pair.resume_replay()
    pair.wait_replayed()


def test_a_write_that_reaches_a_standby_is_temporarily_unavailable(pair):
    mlflow.set_tracking_uri(pair.uri_of(pair.standby))  # e.g. a DNS name still pointing at a demoted server
    with pytest.raises(MlflowException) as e:
        MlflowClient().create_registered_model("on-standby")

    assert e.value.error_code == "TEMPORARILY_UNAVAILABLE"
    assert "read-only" in e.value.message and "target_session_attrs=read-write" in e.value.message


# ---------------------------------------------------------------------- failover
def _loop_with_reads_from(read_uri: str, *args) -> None:
    """In a child: tests.test_faults' register/load loop, reading from ``read_uri`` when it can."""
    os.environ[READ_URI_ENV] = read_uri
    os.environ[READ_WAIT_ENV] = "0.5"
    _keep_working(*args)


def test_failover_to_the_promoted_standby(pg, tmp_path):
    pair = Pair.start(pg)
    try:
        _failover(pair, tmp_path)
    finally:
        pair.close()


def _failover(pair: Pair, tmp_path) -> None:
    uri = pair.uri_of(pair.primary, pair.standby, target_session_attrs="read-write")
    read_uri = pair.uri_of(pair.standby, pair.primary, target_session_attrs="prefer-standby")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", _small_model_dir(str(tmp_path / "v1"), 0.5))
    log_file, stop_file = str(tmp_path / "log.jsonl"), str(tmp_path / "stop")
    open(log_file, "w").close()

    def entries() -> list[dict]:
        with open(log_file) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def ok(call: str, after: float, before: float = float("inf")) -> int:
        return sum(1 for e in entries() if e["call"] == call and after < e["time"] < before and "error" not in e)

    child = procs.context().Process(target=_loop_with_reads_from,
                                    args=(read_uri, uri, str(tmp_path / "child"), "m", stop_file, log_file))
    child.start()
    try:
        procs.wait_for("the loop to work", lambda: ok("register", 0) >= 2, timeout=60)
        pair.primary.stop()
        down = time.time()
        procs.wait_for("a registration to fail and loads to go on without the primary",
                       lambda: ok("load", down) >= 2 and any("error" in e for e in entries() if e["time"] > down),
                       timeout=60)
        pair.promote()
        up = time.time()
        procs.wait_for("registrations to resume", lambda: ok("register", up) >= 2, timeout=60)
    finally:
        open(stop_file, "w").close()
        child.join(60)
    log = entries()

    assert child.exitcode == 0
    assert ok("load", down, up) >= 2  # loads went on while there was no primary
    failed = [e for e in log if "error" in e]
    resumed = min(e["time"] for e in log if e["call"] == "register" and e["time"] > up and "error" not in e)
    print(f"failover: {ok('load', down, up)} loads and {len(failed)} failed calls without a primary; "
          f"first registration {resumed - up:.2f} s after promotion")
    assert failed and {e["error"] for e in failed} == {"TEMPORARILY_UNAVAILABLE"}, failed
    assert "Traceback" not in (tmp_path / "child" / "stderr.txt").read_text()
    registered = {e["result"]: e["slope"] for e in log if e["call"] == "register" and "error" not in e}
    in_db = [v for (v,) in pair.sql(pair.standby, "SELECT version FROM models WHERE name = 'm' ORDER BY version")]
    assert in_db == list(range(1, len(in_db) + 1))  # none lost, none given twice
    assert set(registered) <= set(in_db)
    for version, slope in registered.items():
        assert _slope(f"models:/m/{version}") == pytest.approx(slope), version


# ---------------------------------------------------------------------- live reload with a standby
def _served(live, version: int, slope: float) -> bool:
    model, served = live.current()
    return served == version and float(model.predict(sample.X[:1])[0] / sample.X[0, 0]) == pytest.approx(slope)


def test_live_model_with_a_standby_serves_every_change_of_another_client(pair, monkeypatch, tmp_path):
    """Alias moves and new versions committed by someone else: each one served, never settling on a stale one.

    The standby replays with a small delay (as a loaded one does): a notification arrives before the
    standby has the change it announces.
    """
    from mlflow_pgmodels.live import LiveModel

    primary_uri = pair.uri_of(pair.primary)
    monkeypatch.setenv(READ_URI_ENV, pair.uri_of(pair.standby))
    client = MlflowClient(registry_uri=primary_uri, tracking_uri=primary_uri)
    client.create_registered_model("live")
    slopes = {1: 1.0, 2: 2.0, 3: 3.0}
    for version, slope in slopes.items():
        client.create_model_version("live", _small_model_dir(str(tmp_path / f"v{version}"), slope))
    client.set_registered_model_alias("live", "champion", 1)
    pair.sql(pair.standby, "ALTER SYSTEM SET recovery_min_apply_delay = '300ms'")
    pair.sql(pair.standby, "SELECT pg_reload_conf()")
    try:
        pair.wait_replayed()
        with LiveModel("models:/live@champion", uri=primary_uri) as champion, \
                LiveModel("models:/live/latest", uri=primary_uri) as latest:
            for i in range(20):
                # another client (a plain connection to the primary): this process has not seen its commits
                target = 1 + (champion.version % 3)
                pair.sql(pair.primary, "UPDATE pgm_aliases SET version = %s WHERE name = 'live' AND alias = 'champion'",
                         (target,))
                new, copied = 4 + i, 1 + i % 3
                pair.sql(pair.primary,
                         "INSERT INTO models (name, version, model_type, event, model_binary, format, sha256, size_bytes)"
                         " SELECT name, %s, model_type, event, model_binary, format, sha256, size_bytes FROM models"
                         " WHERE name = 'live' AND version = %s", (new, copied))
                slopes[new] = slopes[copied]
                procs.wait_for(f"change {i}: champion -> {target}",
                               lambda: _served(champion, target, slopes[target]), timeout=30)
                procs.wait_for(f"change {i}: latest -> {new}", lambda: _served(latest, new, slopes[new]), timeout=30)
            time.sleep(1.5)  # nothing moves it back to an older version
            assert (champion.version, latest.version) == (target, new)
            assert champion.last_error is None and latest.last_error is None
    finally:
        pair.sql(pair.standby, "ALTER SYSTEM RESET recovery_min_apply_delay")
        pair.sql(pair.standby, "SELECT pg_reload_conf()")
        pair.wait_replayed()


# ---------------------------------------------------------------------- a seed-era table on a standby
def test_a_seed_era_table_read_through_a_standby(pair, monkeypatch):
    """A predict job given only the standby reads the seed's table as it is; one with the primary
    upgrades it there first, then reads from the standby."""
    from tests.conftest import Database
    from tests.test_seed_era import make_seed_era, slope_of

    pair.sql(pair.primary, "CREATE DATABASE seed")
    try:
        make_seed_era(Database(pair.primary, "seed"))
        pair.wait_replayed()
        on = {s: f"pgmodels://postgres@/seed?host={s.socket_dir}&port={s.port}" for s in (pair.primary, pair.standby)}

        model, version = helpers.load_model_from_db("legacy", "ev_old", "regression", uri=on[pair.standby])
        assert (version, slope_of(model)) == (2, pytest.approx(2.0))
        mlflow.set_registry_uri(on[pair.standby])
        assert slope_of(mlflow.pyfunc.load_model("models:/legacy/1")) == pytest.approx(1.0)
        with pytest.raises(MlflowException, match="db upgrade"):
            MlflowClient(registry_uri=on[pair.standby]).set_registered_model_alias("legacy", "champion", 2)

        monkeypatch.setenv(READ_URI_ENV, on[pair.standby])
        assert helpers.get_latest_model_version("legacy", "ev_old", "regression", uri=on[pair.primary]) == 2
        assert Database(pair.primary, "seed").sql("SELECT to_regclass('pgm_schema_info') IS NOT NULL") == [(True,)]
    finally:
        pair.sql(pair.primary, "DROP DATABASE seed WITH (FORCE)")
