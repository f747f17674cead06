"""Promote a version from one pgmodels database to another: bytes verified, lineage, idempotency,
roles, governance, and bad input (the target is the source, a version deleted mid-copy, corrupt bytes).

The source and the target are two databases of the session's server (two real databases).
"""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._storage import model_binary
from mlflow_pgmodels._lifecycle import governance
from mlflow_pgmodels._lifecycle.promote import LINEAGE, PROMOTED_TO, lock_key, promote
from mlflow_pgmodels._events.webhook_delivery import Dispatcher
from tests import procs, sample
from tests.conftest import make_database
from tests.test_webhooks import MV_CREATED, receiver, webhook_env  # noqa: F401  (fixtures)


@pytest.fixture
def target(pg):
    """A second database of the session's server: the 'prod' registry."""
    database = make_database(pg)
    yield database
    pg.psql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


def _register(db, tmp_path, name: str = "churn", slope: float = 3.0, **kwargs):
    """A version of a regression of ``slope`` in ``db`` (the registered model described "churn model")."""
    return sample.register(MlflowClient(tracking_uri=db.uri, registry_uri=db.uri), tmp_path, name,
                           sample.regressor(slope), registered_description="churn model", **kwargs)


def _predict(uri: str, model_uri: str) -> np.ndarray:
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri).predict(sample.X[:3])
    finally:
        mlflow.set_registry_uri(None)


def _target_state(db) -> list:
    """Everything a promotion writes on the target."""
    return [db.sql(q) for q in ("SELECT name, version, format, sha256 FROM models ORDER BY 1, 2",
                                "SELECT * FROM pgm_model_version_tags ORDER BY 1, 2, 3",
                                "SELECT name FROM pgm_registered_models ORDER BY 1",
                                "SELECT count(*) FROM pgm_blobs")]


def _session(db) -> psycopg.Connection:
    return psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), autocommit=True)


def _error(call) -> MlflowException:
    with pytest.raises(MlflowException) as e:
        call()
    return e.value


def test_a_version_is_promoted_with_its_bytes_metadata_and_lineage(db, target, tmp_path):
    mv = _register(db, tmp_path, description="trained on november", tags={"team": "growth", "event": "retrain"})
    (sha,), = db.sql("SELECT sha256 FROM models WHERE name = 'churn' AND version = 1")

    done = promote("models:/churn/1", target.uri, source_uri=db.uri, alias="champion")

    got = done.version
    assert (got.name, int(got.version), done.created) == ("churn", 1, True)
    assert got.description == "trained on november" and got.run_id is None
    assert got.source == "pgmodels:/churn/1"  # its own download URI: the run stays at the source
    assert got.tags["team"] == "growth" and got.tags["event"] == "retrain"
    assert {k: v for k, v in got.tags.items() if k.startswith(LINEAGE)} == {
        f"{LINEAGE}database": db.name, f"{LINEAGE}name": "churn", f"{LINEAGE}version": "1",
        f"{LINEAGE}sha256": sha}
    assert got.aliases == ["champion"]
    assert target.sql("SELECT sha256, format FROM models") == [(sha, "mlflow-zip")]
    assert target.sql("SELECT description FROM pgm_registered_models") == [("churn model",)]
    np.testing.assert_allclose(_predict(target.uri, "models:/churn@champion"), sample.X[:3, 0] * 3.0)
    # both histories: the creation and the lineage on the target, where it went on the source
    actions = target.sql("SELECT action, new ->> 'key' FROM pgm_history WHERE version = 1 ORDER BY id")
    assert ("model_version_created", None) in actions and ("model_version_tag_set", f"{LINEAGE}sha256") in actions
    assert done.recorded_at_source
    at_source = MlflowClient(registry_uri=db.uri).get_model_version("churn", mv.version).tags
    assert at_source == {**mv.tags, f"{PROMOTED_TO}{target.name}": "churn v1"}


def test_promoting_again_reuses_the_version_and_reapplies_the_alias(db, target, tmp_path):
    _register(db, tmp_path)
    _register(db, tmp_path, slope=5.0)
    first = promote("models:/churn/1", target.uri, source_uri=db.uri, name="churn-prod")
    again = promote("models:/churn/1", target.uri, source_uri=db.uri, name="churn-prod", alias="champion")
    second = promote("models:/churn/2", target.uri, source_uri=db.uri, name="churn-prod")

    assert (first.created, again.created, second.created) == (True, False, True)
    assert [int(p.version.version) for p in (first, again, second)] == [1, 1, 2]
    assert target.sql("SELECT name, version FROM models ORDER BY version") == [("churn-prod", 1), ("churn-prod", 2)]
    assert target.sql("SELECT alias, version FROM pgm_aliases") == [("champion", 1)]


def test_a_files_version_is_promoted_file_by_file(db, target, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(model_binary, "MAX_BLOB_BYTES", 100)  # any model is 'too big for one value': stored as files
        _register(db, tmp_path, slope=7.0)
    assert db.sql("SELECT format FROM models") == [("files",)]

    promote("models:/churn/latest", target.uri, source_uri=db.uri)

    assert target.sql("SELECT format, sha256 FROM models") == db.sql("SELECT format, sha256 FROM models")
    assert target.sql("SELECT f.path, b.sha256, b.size_bytes FROM pgm_version_files f JOIN pgm_blobs b"
                      " ON b.id = f.blob_id ORDER BY 1") == \
        db.sql("SELECT f.path, b.sha256, b.size_bytes FROM pgm_version_files f JOIN pgm_blobs b"
               " ON b.id = f.blob_id ORDER BY 1")
    np.testing.assert_allclose(_predict(target.uri, "models:/churn/1"), sample.X[:3, 0] * 7.0)


def test_a_reader_on_the_source_and_a_writer_on_the_target_are_enough(db, target, tmp_path):
    _register(db, tmp_path)
    user, password = db.login_role("pgmodels_reader")
    reader = db.tcp_uri(user, password)
    writer = target.tcp_uri(*target.login_role("pgmodels_writer"))
    source_before = [db.sql("SELECT * FROM pgm_model_version_tags"), db.sql("SELECT count(*) FROM pgm_history")]

    done = promote("models:/churn/1", writer, source_uri=reader)

    assert done.created and not done.recorded_at_source
    assert done.version.tags[f"{LINEAGE}database"] == db.name
    assert not [v for v in done.version.tags.values() if password in v or user in v]  # no URI, no secret
    assert [db.sql("SELECT * FROM pgm_model_version_tags"), db.sql("SELECT count(*) FROM pgm_history")] == source_before
    np.testing.assert_allclose(_predict(target.uri, "models:/churn/1"), sample.X[:3, 0] * 3.0)


def test_the_target_cannot_be_the_source_whatever_the_uri(db, tmp_path):
    _register(db, tmp_path)
    user, password = db.login_role("pgmodels_writer")
    e = _error(lambda: promote("models:/churn/1", db.tcp_uri(user, password), source_uri=db.uri, name="other"))
    assert e.error_code == "INVALID_PARAMETER_VALUE" and "source database itself" in e.message
    assert password not in e.message
    assert db.sql("SELECT name, version FROM models") == [("churn", 1)]


def test_missing_version_alias_or_model(db, target, tmp_path):
    _register(db, tmp_path)
    for uri in ("models:/churn/9", "models:/nope/1", "models:/churn@nobody"):
        e = _error(lambda: promote(uri, target.uri, source_uri=db.uri))
        assert e.error_code == "RESOURCE_DOES_NOT_EXIST", (uri, e.message)
    e = _error(lambda: promote("runs:/abc/model", target.uri, source_uri=db.uri))
    assert e.error_code == "INVALID_PARAMETER_VALUE"
    e = _error(lambda: promote("models:/churn/1", "sqlite:///b.db", source_uri="sqlite:///a.db"))
    assert e.error_code == "INVALID_PARAMETER_VALUE" and "pgmodels://" in e.message
    assert target.sql("SELECT count(*) FROM models") == [(0,)]


def test_corrupt_bytes_at_the_source_are_data_loss_and_nothing_is_written(db, target, tmp_path, monkeypatch):
    _register(db, tmp_path)
    with monkeypatch.context() as m:
        m.setattr(model_binary, "MAX_BLOB_BYTES", 100)
        _register(db, tmp_path, slope=4.0)
    db.sql("UPDATE models SET model_binary = overlay(model_binary PLACING '\\x00ff'::bytea FROM 60) WHERE version = 1")
    db.sql("UPDATE pgm_blob_pieces SET data = overlay(data PLACING '\\x00ff'::bytea FROM 3)"
           " WHERE blob_id = (SELECT blob_id FROM pgm_version_files WHERE path = 'MLmodel')")
    before = _target_state(target)

    for version in (1, 2):
        e = _error(lambda: promote(f"models:/churn/{version}", target.uri, source_uri=db.uri))
        assert e.error_code == "DATA_LOSS" and "Nothing was written" in e.message, e.message
    assert _target_state(target) == before


def _promote_in_child(source: str, target: str, workdir: str, results) -> None:
    procs.enter(workdir)
    try:
        done = promote("models:/churn/1", target, source_uri=source)
        results.put(("ok", int(done.version.version), done.created))
    except MlflowException as e:
        results.put((e.error_code, e.message, None))


@pytest.mark.parametrize("as_files", [False, True], ids=["zip", "files"])
def test_a_version_deleted_at_the_source_during_the_copy_leaves_nothing_on_the_target(db, target, tmp_path,
                                                                                      monkeypatch, as_files):
    with monkeypatch.context() as m:
        if as_files:
            m.setattr(model_binary, "MAX_BLOB_BYTES", 100)
        _register(db, tmp_path)
    assert db.sql("SELECT format FROM models") == [("files" if as_files else "mlflow-zip",)]
    before = _target_state(target)
    ctx = procs.context()
    results = ctx.Queue()
    # hold the promotion inside its target transaction, after it has read the source's version
    with _session(target) as hold:
        hold.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key("churn"),))
        child = ctx.Process(target=_promote_in_child, args=(db.uri, target.uri, str(tmp_path / "c"), results))
        child.start()
        procs.wait_for("the promotion to wait for the lock", lambda: target.sql(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
        MlflowClient(registry_uri=db.uri).delete_model_version("churn", "1")
        hold.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key("churn"),))
        code, message, _ = results.get(timeout=120)
        child.join(60)
    assert code == "RESOURCE_DOES_NOT_EXIST" and "deleted" in message and "nothing was written" in message
    assert _target_state(target) == before


def test_two_promotions_of_one_version_at_once_give_one_target_version(db, target, tmp_path):
    _register(db, tmp_path)
    ctx = procs.context()
    results = ctx.Queue()
    with _session(target) as hold:  # both start, then race for the same lock
        hold.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key("churn"),))
        children = [ctx.Process(target=_promote_in_child, args=(db.uri, target.uri, str(tmp_path / f"c{i}"), results))
                    for i in range(2)]
        for c in children:
            c.start()
        procs.wait_for("both promotions to wait", lambda: target.sql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0] == 2)
        hold.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key("churn"),))
        got = sorted(results.get(timeout=120) for _ in children)
        for c in children:
            c.join(60)
    assert got == [("ok", 1, False), ("ok", 1, True)]
    assert target.sql("SELECT name, version FROM models") == [("churn", 1)]


def test_the_targets_webhooks_get_the_new_version(db, target, tmp_path, webhook_env, receiver):  # noqa: F811
    _register(db, tmp_path)
    MlflowClient(registry_uri=target.uri).create_webhook("prod", receiver.url, events=[MV_CREATED])

    promote("models:/churn/1", target.uri, source_uri=db.uri)

    assert Dispatcher(target.uri).deliver_due() == 1
    (event,) = receiver.wait_for(1)
    assert event["entity"] == "model_version" and event["action"] == "created"
    assert event["data"]["name"] == "churn" and str(event["data"]["version"]) == "1"


def test_a_protected_alias_is_refused_clearly_and_the_version_stays(db, target, tmp_path):
    _register(db, tmp_path)
    owner = target.tcp_uri(*target.login_role("pgmodels_owner"))
    writer = target.tcp_uri(*target.login_role("pgmodels_writer"))
    governance.protect(owner, "churn", "pgmodels_release_manager", alias="champion")

    e = _error(lambda: promote("models:/churn/1", writer, source_uri=db.uri, alias="champion"))
    assert e.error_code == "PERMISSION_DENIED", e.message
    assert "version 1 was promoted and stays" in e.message and "pgmodels_release_manager" in e.message
    assert target.sql("SELECT version FROM models") == [(1,)] and target.sql("SELECT * FROM pgm_aliases") == []

    manager = target.tcp_uri(*target.login_role("pgmodels_release_manager"))
    again = promote("models:/churn/1", manager, source_uri=db.uri, alias="champion")
    assert not again.created and target.sql("SELECT alias, version FROM pgm_aliases") == [("champion", 1)]


def test_the_command_promotes_and_shows_no_password(db, target, tmp_path):
    _register(db, tmp_path)
    user, password = target.login_role("pgmodels_writer")
    to = target.tcp_uri(user, password)
    run = [sys.executable, "-m", "mlflow_pgmodels.cli", "promote", "models:/churn/1", "--to", to, "--alias", "champion"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": db.uri}

    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    same = subprocess.run([*run[:5], "--to", db.uri], capture_output=True, text=True, env=env, timeout=300)

    assert first.returncode == 0, first.stderr
    assert "promoted as churn v1" in first.stdout and "@champion -> v1" in first.stdout
    assert second.returncode == 0 and "already promoted earlier as churn v1" in second.stdout
    assert same.returncode == 2 and "source database itself" in same.stderr
    for out in (first, second, same):
        assert password not in out.stdout + out.stderr


def test_a_version_of_a_stock_mlflow_registry_is_promoted_once(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    stock = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(stock)
    sample.log(sample.regressor(6.0), "churn")
    MlflowClient().set_model_version_tag("churn", "1", "reviewed", "yes")
    run_id = MlflowClient().get_model_version("churn", "1").run_id
    mlflow.set_tracking_uri(None)

    first = promote("models:/churn/1", target.uri, source_uri=stock, alias="champion")
    again = promote("models:/churn/1", target.uri, source_uri=stock)

    assert (first.created, again.created, int(again.version.version)) == (True, False, 1)
    tags = first.version.tags
    assert tags["reviewed"] == "yes" and tags[f"{LINEAGE}run_id"] == run_id
    assert tags[f"{LINEAGE}database"] == "sqlite:mlflow.db" and tags[f"{LINEAGE}version"] == "1"
    assert first.version.run_id is None and target.sql("SELECT count(*) FROM models") == [(1,)]
    np.testing.assert_allclose(_predict(target.uri, "models:/churn@champion"), sample.X[:3, 0] * 6.0)


def test_a_version_is_promoted_into_a_stock_mlflow_registry_once(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _register(db, tmp_path, slope=8.0, tags={"team": "growth"})
    (sha,), = db.sql("SELECT sha256 FROM models")
    stock = f"sqlite:///{tmp_path}/prod.db"

    first = promote("models:/churn/1", stock, source_uri=db.uri, alias="champion")
    again = promote("models:/churn/1", stock, source_uri=db.uri)

    assert (first.created, again.created, int(again.version.version)) == (True, False, 1)
    assert first.version.tags["team"] == "growth" and first.version.tags[f"{LINEAGE}sha256"] == sha
    assert len(MlflowClient(tracking_uri=stock, registry_uri=stock).search_model_versions()) == 1
    mlflow.set_tracking_uri(stock)
    np.testing.assert_allclose(_predict(stock, "models:/churn@champion"), sample.X[:3, 0] * 8.0)
