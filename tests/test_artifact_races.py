"""Artifacts under concurrency (issue 22): nothing lost, nothing misreported, with real processes.

Each scenario runs the racing operations in separate processes (tests/procs.py), repeated
often enough that the race showed before the fix (see each test's docstring).
"""

from __future__ import annotations

import io
import os
import zipfile

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._storage import artifacts
from mlflow_pgmodels._storage import stored_zip
from tests import procs, sample

MODEL_FILES = {"MLmodel": b"flavors:\n  python_function:\n    loader_module: nothing\n",
               "conda.yaml": b"name: x\n", "python_env.yaml": b"python: 3\n", "requirements.txt": b"mlflow\n",
               **{f"weights/part{i:02d}.bin": bytes([i]) * 2048 for i in range(30)},
               "model.pkl": b"pickle" * 1000}


def _write_dir(path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)
    return str(path)


def _run_with(files: dict[str, bytes], tmp_path, artifact_path: str = "model") -> str:
    with mlflow.start_run() as run:
        mlflow.log_artifacts(_write_dir(tmp_path / "src", files), artifact_path)
    return run.info.run_id


def _orphans(db) -> int:
    return db.sql("SELECT count(*) FROM pgm_blobs b WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE"
                  " a.blob_id = b.id) AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id)")[0][0]


# --- 1. a registration racing a re-log ------------------------------------------------------------
def _relog(uri: str, workdir: str, run_id: str, src: str, rounds: int) -> None:
    procs.enter(workdir, tracking_uri=uri)
    for _ in range(rounds):
        MlflowClient().log_artifacts(run_id, src, "model")


def _register_many(uri: str, workdir: str, name: str, run_id: str, rounds: int) -> None:
    procs.enter(workdir, tracking_uri=uri)
    for _ in range(rounds):
        MlflowClient().create_model_version(name, f"runs:/{run_id}/model")


@pytest.mark.slow
def test_a_registration_racing_a_relog_gets_every_file(client, db, tmp_path):
    """The model's weights are logged again (same bytes) while it is registered, 40 times.

    Before the fix: 29 of 40 versions lacked model.pkl and the weights."""
    run_id = _run_with(MODEL_FILES, tmp_path)
    relogged = _write_dir(tmp_path / "relog", {k: v for k, v in MODEL_FILES.items() if k.startswith(("model.", "weights/"))})
    client.create_registered_model("race")
    ctx = procs.context()
    children = [ctx.Process(target=_relog, args=(db.uri, str(tmp_path / "w1"), run_id, relogged, 40)),
                ctx.Process(target=_register_many, args=(db.uri, str(tmp_path / "w2"), "race", run_id, 40))]
    for c in children:
        c.start()
    for c in children:
        c.join(300)
        assert c.exitcode == 0

    rows = db.sql("SELECT version, model_binary FROM models WHERE name = 'race' ORDER BY version")
    assert len(rows) == 40
    incomplete = {v: sorted(set(MODEL_FILES) - set(zipfile.ZipFile(io.BytesIO(z)).namelist())) for v, z in rows}
    assert {v: missing for v, missing in incomplete.items() if missing} == {}
    for _, z in rows:
        with zipfile.ZipFile(io.BytesIO(z)) as zf:
            assert zf.testzip() is None
            assert {n: zf.read(n) for n in MODEL_FILES} == MODEL_FILES


# --- 2. a read racing an overwrite -----------------------------------------------------------------
_CONTENTS = [bytes([65 + i]) * (3 << 20) for i in range(2)]  # 3 MiB: written by COPY, read in chunks


def _overwrite(uri: str, workdir: str, run_id: str, which: int, rounds: int) -> None:
    procs.enter(workdir, tracking_uri=uri)
    path = os.path.join(workdir, "weights.bin")
    with open(path, "wb") as f:
        f.write(_CONTENTS[which])
    for _ in range(rounds):
        MlflowClient().log_artifact(run_id, path, "same")


def _read_while(uri: str, workdir: str, artifact_uri: str, done, results) -> None:
    procs.enter(workdir, tracking_uri=uri)
    outcomes = []
    while not done.is_set() or len(outcomes) < 20:
        try:
            path = mlflow.artifacts.download_artifacts(f"{artifact_uri}/same/weights.bin", dst_path=workdir)
            with open(path, "rb") as f:
                outcomes.append("ok" if f.read() in _CONTENTS else "mixed bytes")
        except MlflowException as e:
            outcomes.append(f"{e.error_code}: {e.message[:200]}")
    results.put(outcomes)


@pytest.mark.slow
def test_a_read_racing_overwrites_sees_one_whole_file(client, db, tmp_path):
    """Before the fix: 9 reads failed with a false DATA_LOSS ('Restore the database from a backup')."""
    with mlflow.start_run() as run:
        pass
    run_id = run.info.run_id
    _overwrite(db.uri, str(tmp_path / "w0"), run_id, 0, 1)
    ctx = procs.context()
    done, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_while, args=(db.uri, str(tmp_path / "r"), run.info.artifact_uri, done, results))
    writers = [ctx.Process(target=_overwrite, args=(db.uri, str(tmp_path / f"w{i + 1}"), run_id, i, 40))
               for i in range(2)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
        assert w.exitcode == 0
    done.set()
    outcomes = results.get(timeout=300)
    reader.join(60)
    assert [o for o in outcomes if o != "ok"] == []
    assert db.sql("SELECT count(*) FROM pgm_artifacts")[0][0] == 1
    assert _orphans(db) == 0


# --- 3. a 'files' version and its run's files deleted at the same time ----------------------------------
FILES, ROUNDS = 2000, 4


def _delete_version(uri: str, workdir: str, name: str, version: str, start) -> None:
    procs.enter(workdir, tracking_uri=uri)
    client = MlflowClient()
    start.wait(60)
    client.delete_model_version(name, version)


def _delete_run_files(uri: str, workdir: str, run_id: str, start) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    procs.enter(workdir, tracking_uri=uri)
    repo = get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri)
    start.wait(60)
    repo.delete_artifacts()  # what mlflow gc does with a deleted run's files


@pytest.mark.slow
def test_deleting_a_files_version_and_its_runs_files_together_leaves_no_blob(client, db, tmp_path, monkeypatch):
    """Before the fix: the first round already left 507 blobs referenced by nothing."""
    monkeypatch.setattr(stored_zip, "MAX_ENTRIES", 1)  # store versions as 'files' without 65,536 files
    client.create_registered_model("both")
    files = {**MODEL_FILES, **{f"many/f{i:04d}": str(i).encode() for i in range(FILES)}}
    ctx = procs.context()
    for round_ in range(ROUNDS):
        run_id = _run_with(files, tmp_path / f"r{round_}", artifact_path="")
        version = client.create_model_version("both", f"runs:/{run_id}").version
        assert db.sql("SELECT format FROM models WHERE name = 'both' AND version = %s", (int(version),)) == \
            [("files",)]
        if round_ == 0:  # its files read back from one snapshot
            loaded = mlflow.artifacts.download_artifacts(f"models:/both/{version}", dst_path=str(tmp_path / "dl"))
            with open(os.path.join(loaded, "model.pkl"), "rb") as f:
                assert f.read() == MODEL_FILES["model.pkl"]
        start = ctx.Barrier(2)
        children = [ctx.Process(target=_delete_version, args=(db.uri, str(tmp_path / "a"), "both", version, start)),
                    ctx.Process(target=_delete_run_files, args=(db.uri, str(tmp_path / "b"), run_id, start))]
        for c in children:
            c.start()
        for c in children:
            c.join(120)
            assert c.exitcode == 0
        assert _orphans(db) == 0, f"round {round_}"
    assert db.sql("SELECT count(*) FROM pgm_blobs")[0][0] == 0


def test_the_sweeper_removes_orphans_left_by_an_older_version(client, db, tmp_path):
    """Blobs an older release leaked: the sweeper (run by mlflow gc) removes them, nothing else."""
    run_id = _run_with({"MLmodel": b"x", "a.txt": b"a"}, tmp_path)
    db.sql("ALTER TABLE pgm_artifacts DISABLE TRIGGER USER")
    db.sql("DELETE FROM pgm_artifacts WHERE path LIKE %s", ("%/a.txt",))
    db.sql("ALTER TABLE pgm_artifacts ENABLE TRIGGER USER")
    assert _orphans(db) == artifacts.orphan_count(db.uri) == 1
    assert artifacts.sweep_orphans(db.uri) == 1
    assert _orphans(db) == 0
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/model/MLmodel") == "x"


# --- 4. a file and a directory with the same name ---------------------------------------------------
def _stored(db, like: str) -> list[str]:
    return [r[0].split("/artifacts/", 1)[1] for r in db.sql(
        "SELECT path FROM pgm_artifacts WHERE path LIKE %s ORDER BY path", ("%/artifacts/" + like,))]


@pytest.mark.parametrize("first, second", [("fd/a", "fd/a/b"), ("fd/a/b", "fd/a")])
def test_a_file_and_a_directory_of_one_name_is_refused(client, db, first, second):
    with mlflow.start_run():
        mlflow.log_text("first", first)
        with pytest.raises(MlflowException, match="fd/a") as e:
            mlflow.log_text("second", second)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Nothing was written" in e.value.message
    assert _stored(db, "fd/%") == [first]


def test_a_clash_inside_one_upload_writes_nothing(client, db, tmp_path):
    """One log_artifacts call whose second file clashes: its first file is not written either."""
    other = _write_dir(tmp_path / "other", {"a_first.txt": b"1", "extra/inner.txt": b"2"})
    with mlflow.start_run() as run:
        mlflow.log_text("file", "d/extra")
        with pytest.raises(MlflowException, match="extra") as e:
            mlflow.log_artifacts(other, "d")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert _stored(db, "d/%") == ["d/extra"]
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/d/extra") == "file"


def test_a_model_directory_with_a_file_and_a_directory_of_one_name_is_refused(client, db, tmp_path):
    src = tmp_path / "m"
    _write_dir(src, {"MLmodel": b"x", "extra/inner.txt": b"2"})
    with mlflow.start_run():
        mlflow.log_artifacts(str(src), "model")
        with pytest.raises(MlflowException, match="extra") as e:
            mlflow.log_text("file", "model/extra")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert _stored(db, "model/%") == ["model/MLmodel", "model/extra/inner.txt"]


def _log_paths(uri: str, workdir: str, run_id: str, paths: list[str], start, results) -> None:
    procs.enter(workdir, tracking_uri=uri)
    client = MlflowClient()
    refused = 0
    for path in paths:
        start.wait(60)
        try:
            client.log_text(run_id, "x", path)
        except MlflowException as e:
            assert e.error_code == "INVALID_PARAMETER_VALUE", e.message
            refused += 1
    results.put(refused)


@pytest.mark.slow
def test_concurrent_writers_cannot_make_a_file_and_a_directory_of_one_name(client, db, tmp_path):
    """Two processes write 'cN/a' and 'cN/a/b' at the same moment, 30 times: one of each pair wins."""
    with mlflow.start_run() as run:
        pass
    ctx = procs.context()
    start, results = ctx.Barrier(2), ctx.Queue()
    rounds = range(30)
    children = [ctx.Process(target=_log_paths, args=(db.uri, str(tmp_path / f"w{i}"), run.info.run_id,
                                                     [f"c{n}/a" + "/b" * i for n in rounds], start, results))
                for i in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(300)
        assert c.exitcode == 0
    assert results.get(timeout=10) + results.get(timeout=10) == len(rounds)
    stored = _stored(db, "c%")
    assert len(stored) == len(rounds)
    assert all(not other.startswith(path + "/") for path in stored for other in stored)


# --- 5. registration of a LoggedModel with a corrupt piece -------------------------------------------
def test_registering_a_logged_model_with_a_corrupt_piece_is_data_loss(client, db):
    """Before the fix: registered, with a fresh SHA-256 over the corrupt bytes."""
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(sample.regressor(2.0), name="model", pip_requirements=["scikit-learn"])
    db.sql("UPDATE pgm_blob_pieces SET data = set_byte(data, 40, get_byte(data, 40) # 1) WHERE blob_id ="
           " (SELECT blob_id FROM pgm_artifacts WHERE path ~ %s)", ("/artifacts/model\\.(pkl|skops)$",))
    client.create_registered_model("flipped")
    with pytest.raises(MlflowException, match=r"damaged.*: model\.(pkl|skops) ") as e:
        client.create_model_version("flipped", f"models:/{info.model_id}")
    assert e.value.error_code == "DATA_LOSS"
    assert db.sql("SELECT count(*) FROM models WHERE name = 'flipped'") == [(0,)]


# --- a database of schema version 4 --------------------------------------------------------------------
def test_a_schema_4_database_is_upgraded_to_the_locking_triggers(client, db, tmp_path):
    """The row triggers of schema 4 (which leaked blobs) give way to schema 5's on the next start."""
    db.sql("DROP TRIGGER pgm_artifacts_delete_drops_orphans ON pgm_artifacts;"
           " DROP TRIGGER pgm_artifacts_update_drops_orphans ON pgm_artifacts;"
           " DROP TRIGGER pgm_version_files_delete_drops_orphans ON pgm_version_files;"
           " DROP TRIGGER pgm_artifacts_path_check ON pgm_artifacts;"
           " CREATE FUNCTION pgm_drop_orphan_blob() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';"
           " CREATE TRIGGER pgm_artifacts_drop_orphan_blob AFTER DELETE OR UPDATE OF blob_id ON pgm_artifacts"
           "  FOR EACH ROW EXECUTE FUNCTION pgm_drop_orphan_blob();"
           " UPDATE pgm_schema_info SET schema_version = 4")
    from mlflow_pgmodels._pg.db import databases

    databases.get(db.uri).forget_schema()  # this process checked the schema before it was set back
    with mlflow.start_run():
        mlflow.log_text("a", "up/a")  # the first write upgrades
        with pytest.raises(MlflowException, match="up/a"):
            mlflow.log_text("b", "up/a/b")
        mlflow.log_text("c", "up/a")
    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(5,)]
    assert sorted(r[0] for r in db.sql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN"
                                       " ('pgm_artifacts'::regclass, 'pgm_version_files'::regclass)")) == [
        "pgm_artifacts_delete_drops_orphans", "pgm_artifacts_path_check", "pgm_artifacts_update_drops_orphans",
        "pgm_version_files_delete_drops_orphans"]
    assert _orphans(db) == 0
