"""Writing run artifacts into the database: bad paths and changing files are refused with nothing
written; the first artifact of a new database needs no setup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

LONG = "d/" * 520 + "f.txt"  # 1045 bytes: past MAX_KEY_BYTES
BAD_DIRS = {"parent": "..", "parent inside": "a/../..", "absolute": "/etc", "drive letter": "C:/x",
            "backslash": "a\\b", "NUL byte": "a/\x00b", "over-long": LONG}
BAD_FILES = {"parent": "../escape.txt", "parent inside": "a/../../escape.txt", "absolute": "/tmp/escape.txt",
             "backslash": "a\\b.txt", "NUL byte in a directory": "a\x00b/x.txt", "over-long": LONG}


def _written(db) -> list:
    """Every artifact row, blob and piece."""
    return [db.sql("SELECT path, blob_id, size_bytes FROM pgm_artifacts ORDER BY path"),
            db.sql("SELECT id, sha256 FROM pgm_blobs ORDER BY id"),
            db.sql("SELECT blob_id, seq, length(data) FROM pgm_blob_pieces ORDER BY 1, 2")]


def _refused(call) -> MlflowException:
    with pytest.raises(MlflowException) as e:
        call()
    assert e.value.error_code == "INVALID_PARAMETER_VALUE", e.value.message
    assert "Invalid artifact path" in e.value.message
    return e.value


@pytest.fixture
def run(client, db):
    """An active run that already has one good artifact."""
    with mlflow.start_run() as active:
        mlflow.log_text("fine", "ok.txt")
        yield active


@pytest.mark.parametrize("artifact_path", BAD_DIRS.values(), ids=BAD_DIRS.keys())
def test_log_artifact_into_a_bad_directory_writes_nothing(db, run, tmp_path, artifact_path):
    local = tmp_path / "model.bin"
    local.write_bytes(os.urandom(2 << 20))  # past the one-statement size: a COPY would have run
    before = _written(db)
    _refused(lambda: mlflow.log_artifact(str(local), artifact_path=artifact_path))
    assert _written(db) == before


@pytest.mark.parametrize("artifact_file", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_log_text_under_a_bad_name_writes_nothing(db, run, artifact_file):
    before = _written(db)
    _refused(lambda: mlflow.log_text("secret", artifact_file))
    assert _written(db) == before
    assert not Path("/tmp/escape.txt").exists()


def test_one_bad_file_in_a_directory_of_good_ones_writes_none_of_them(db, run, tmp_path):
    folder = tmp_path / "outputs"
    (folder / "deep").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "big.bin").write_bytes(os.urandom(3 << 20))
    (folder / "deep" / "b.txt").write_text("b")
    (folder / "deep" / "win\\style.txt").write_text("a backslash is legal in a Linux file name")
    before = _written(db)
    error = _refused(lambda: mlflow.MlflowClient().log_artifacts(run.info.run_id, str(folder), "outputs"))
    assert "win\\\\style.txt" in error.message  # names the file to rename
    assert _written(db) == before

    (folder / "deep" / "win\\style.txt").unlink()
    latin1 = os.path.join(os.fsencode(folder / "deep"), "caf\xe9.txt".encode("latin-1"))
    Path(os.fsdecode(latin1)).write_text("a name in Latin-1, not UTF-8")
    error = _refused(lambda: mlflow.MlflowClient().log_artifacts(run.info.run_id, str(folder), "outputs"))
    assert "not valid UTF-8" in error.message
    assert _written(db) == before

    os.remove(latin1)
    nested = folder.joinpath(*["level"] * 200)  # each part fine, the whole key too long
    nested.mkdir(parents=True)
    (nested / "x.txt").write_text("x")
    _refused(lambda: mlflow.MlflowClient().log_artifacts(run.info.run_id, str(folder), "outputs"))
    assert _written(db) == before


@pytest.mark.parametrize("path", ["..", "../../other-run/artifacts", "/etc/passwd", "a\\..\\b", "a\x00b", LONG])
def test_list_and_download_with_a_bad_path_are_refused(db, run, path, tmp_path):
    client = mlflow.MlflowClient()
    _refused(lambda: client.list_artifacts(run.info.run_id, path))
    _refused(lambda: get_artifact_repository(run.info.artifact_uri).download_artifacts(path, str(tmp_path)))
    # by run id MLflow goes through runs:/, whose repository reports any failure as not found
    with pytest.raises(MlflowException):
        client.download_artifacts(run.info.run_id, path, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_uri_that_climbs_out_of_its_root_is_refused(db, run):
    _refused(lambda: mlflow.artifacts.download_artifacts(artifact_uri=run.info.artifact_uri + "/../../x"))
    _refused(lambda: mlflow.artifacts.list_artifacts(artifact_uri="pgmodels-artifacts:/0/../.."))


def test_unusual_but_safe_names_are_kept(db, run):
    for name in ("..hidden/notes.txt", "a b/ü…ñ.txt", "x/./y.txt", "dots..in..name.txt"):
        mlflow.log_text(name, name)
    client = mlflow.MlflowClient()
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == [
        "..hidden", "a b", "dots..in..name.txt", "ok.txt", "x"]
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/x/y.txt") == "x/./y.txt"
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/a b/ü…ñ.txt") == "a b/ü…ñ.txt"


# Kernel files report a size that is not their length: as a log file appended to, or truncated,
# between the moment logging reads its size and the moment it reaches the end.
@pytest.mark.parametrize("changing", ["/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"],
                         ids=["grew", "shrank"])
def test_a_file_that_changes_size_while_logged_leaves_no_artifact(db, run, changing):
    if not os.path.exists(changing):
        pytest.skip(f"{changing} is not on this machine")
    assert os.stat(changing).st_size != len(Path(changing).read_bytes())
    before = _written(db)
    with pytest.raises(MlflowException) as e:
        mlflow.log_artifact(changing, "system")
    assert e.value.error_code == "DATA_LOSS" and "nothing was stored" in e.value.message
    assert _written(db) == before
    assert [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)] == ["ok.txt"]


def test_the_first_artifact_of_a_new_database_needs_no_setup(empty_db):
    mlflow.set_tracking_uri(empty_db.uri)
    with mlflow.start_run() as active:
        mlflow.log_text("hello", "notes/hello.txt")
    assert mlflow.artifacts.load_text(f"runs:/{active.info.run_id}/notes/hello.txt") == "hello"
    assert empty_db.sql("SELECT path FROM pgm_artifacts") == [
        (f"{active.info.experiment_id}/{active.info.run_id}/artifacts/notes/hello.txt",)]


REMOTE_BAD_PATHS = r'''
import json, os, sys
import mlflow
from mlflow.exceptions import MlflowException

client = mlflow.MlflowClient()
run = client.create_run(client.create_experiment("remote"))
open("good.txt", "w").write("good")
os.makedirs("outputs", exist_ok=True)
open("outputs/a.txt", "w").write("a")
open("outputs/win\\style.txt", "w").write("b")
attempts = {
    "log_artifact into '..'": lambda: client.log_artifact(run.info.run_id, "good.txt", ".."),
    "log_artifact into a\\b": lambda: client.log_artifact(run.info.run_id, "good.txt", "a\\b"),
    "log_text over-long": lambda: client.log_text(run.info.run_id, "x", "d/" * 520 + "f.txt"),
    "log_artifacts with a backslash file": lambda: client.log_artifacts(run.info.run_id, "outputs"),
    "list '..'": lambda: client.list_artifacts(run.info.run_id, ".."),
}
codes = {}
for what, attempt in attempts.items():
    try:
        attempt()
        codes[what] = "accepted"
    except MlflowException as e:
        codes[what] = e.error_code
print(json.dumps(codes))
'''


@pytest.mark.slow  # a server and a client process
def test_a_client_of_an_mlflow_server_gets_the_same_refusals(db, tmp_path):
    from tests.mlflow_server import mlflow_server, run_client

    (tmp_path / "client").mkdir()
    with mlflow_server(tmp_path / "server", db.uri) as server:
        codes = json.loads(run_client(server.url, tmp_path / "client", REMOTE_BAD_PATHS).splitlines()[-1])
    assert codes == {what: "INVALID_PARAMETER_VALUE" for what in codes}, codes
    assert _written(db) == [[], [], []]


@pytest.mark.slow  # a server
def test_a_client_that_switched_to_a_server_writes_through_it(db, pg, tmp_path):
    from tests.conftest import make_database
    from tests.mlflow_server import mlflow_server

    used_before = make_database(pg)
    try:
        mlflow.set_tracking_uri(used_before.uri)
        mlflow.MlflowClient().search_experiments()  # this process has a store for that database
        with mlflow_server(tmp_path / "server", db.uri) as server:
            mlflow.set_tracking_uri(server.url)
            with mlflow.start_run() as run:
                mlflow.log_text("through the server", "notes.txt")
            assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes.txt") == "through the server"
        assert used_before.sql("SELECT path FROM pgm_artifacts") == []
        assert db.sql("SELECT path FROM pgm_artifacts") == [
            (f"{run.info.experiment_id}/{run.info.run_id}/artifacts/notes.txt",)]
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {used_before.name} WITH (FORCE)")
