"""Each file once (issue 19): the same bytes logged again reference the blob already stored,
verified piece by piece; deleting one reference leaves the others intact."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from benchmarks.wire import Forwarder, forwarded_uri, server_socket
from mlflow_pgmodels._storage import artifacts
from mlflow_pgmodels._storage import model_binary
from tests import procs

CONTENT = os.urandom(300_000)


def _file(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _log(local: str, artifact_path: str | None = None) -> str:
    with mlflow.start_run() as run:
        mlflow.log_artifact(local, artifact_path)
    return run.info.run_id


def _blobs(db) -> int:
    return db.sql("SELECT count(*) FROM pgm_blobs")[0][0]


def _read(run_id: str, path: str, dst) -> bytes:
    # through the artifact URI: MLflow's runs:/ wrapper reports any failure as RESOURCE_DOES_NOT_EXIST
    uri = f"{MlflowClient().get_run(run_id).info.artifact_uri}/{path}"
    with open(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)), "rb") as f:
        return f.read()


def test_the_same_file_in_two_runs_is_stored_once_and_deleting_one_keeps_the_other(client, db, tmp_path):
    local = _file(tmp_path, "data/train.csv", CONTENT)
    first, second = _log(local, "data"), _log(local)
    assert _blobs(db) == 1
    assert db.sql("SELECT count(DISTINCT blob_id), count(*) FROM pgm_artifacts") == [(1, 2)]
    assert db.sql("SELECT sum(octet_length(data)) FROM pgm_blob_pieces") == [(len(CONTENT),)]

    get_artifact_repository(client.get_run(first).info.artifact_uri).delete_artifacts("data")
    assert _read(second, "train.csv", tmp_path / "a") == CONTENT
    assert _blobs(db) == 1 and artifacts.orphan_count(db.uri) == 0

    get_artifact_repository(client.get_run(second).info.artifact_uri).delete_artifacts("train.csv")
    assert _blobs(db) == 0


def test_identical_files_of_one_call_are_stored_once(client, db, tmp_path):
    for name in ("a/tokenizer.json", "b/tokenizer.json", "c/other.txt"):
        _file(tmp_path / "model", name, CONTENT if "tokenizer" in name else b"other")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "model"), "model")
    assert _blobs(db) == 2
    assert _read(run.info.run_id, "model/b/tokenizer.json", tmp_path / "d") == CONTENT


def test_a_damaged_shared_piece_fails_every_read_and_is_not_reused(client, db, tmp_path):
    local = _file(tmp_path, "emb.bin", CONTENT)
    runs = [_log(local), _log(local)]
    db.sql("UPDATE pgm_blob_pieces SET data = set_byte(data, 1000, get_byte(data, 1000) # 1)")
    for i, run_id in enumerate(runs):
        with pytest.raises(MlflowException) as e:
            _read(run_id, "emb.bin", tmp_path / f"r{i}")
        assert e.value.error_code == "DATA_LOSS" and "corrupt" in e.value.message

    # logged again: the damaged blob fails verification, so the bytes are stored afresh
    third = _log(local)
    assert _blobs(db) == 2
    assert _read(third, "emb.bin", tmp_path / "r3") == CONTENT
    # and once more: the damaged copy is passed over, the intact one reused
    fourth = _log(local)
    assert _blobs(db) == 2
    assert db.sql("SELECT count(DISTINCT blob_id) FROM pgm_artifacts") == [(2,)]
    assert _read(fourth, "emb.bin", tmp_path / "r4") == CONTENT


def test_a_lying_blob_row_is_not_reused(client, db, tmp_path):
    """A blob whose recorded SHA-256 names other bytes (a forged or mis-restored row) is not trusted."""
    run_id = _log(_file(tmp_path, "x.bin", b"other bytes"))
    sha = db.sql("SELECT encode(sha256(%s), 'hex')", (CONTENT,))[0][0]
    db.sql("UPDATE pgm_blobs SET sha256 = %s, size_bytes = %s", (sha, len(CONTENT)))
    db.sql("UPDATE pgm_blob_pieces SET data = %s", (b"\0" * len(CONTENT),))
    genuine = _log(_file(tmp_path, "real.bin", CONTENT))
    assert _blobs(db) == 2
    assert _read(genuine, "real.bin", tmp_path / "g") == CONTENT
    with pytest.raises(MlflowException, match="corrupt"):
        _read(run_id, "x.bin", tmp_path / "x")


def test_the_writer_role_reuses_stored_bytes(db, tmp_path):
    """What a training job's login role (sql/roles.sql) may do: look up, lock and verify blobs."""
    user, password = db.login_role("pgmodels_writer")
    mlflow.set_tracking_uri(db.tcp_uri(user, password))
    local = _file(tmp_path, "vocab.txt", CONTENT)
    runs = [_log(local), _log(local)]
    assert _blobs(db) == 1
    assert _read(runs[1], "vocab.txt", tmp_path / "v") == CONTENT


def test_logging_a_file_already_stored_sends_none_of_its_bytes(client, db, tmp_path):
    big = os.urandom(4 << 20)  # past the one-statement size: the pieces path
    local = _file(tmp_path, "weights.bin", big)
    _log(local)
    with Forwarder(server_socket(db.uri)) as fwd:
        mlflow.set_tracking_uri(forwarded_uri(db.uri, fwd.port))
        fwd.reset()
        again = _log(local)
        sent, _ = fwd.reset()
    mlflow.set_tracking_uri(db.uri)
    assert sent < 64 * 1024, sent
    assert _blobs(db) == 1
    assert _read(again, "weights.bin", tmp_path / "w") == big


def test_through_an_mlflow_server_the_server_stores_the_bytes_once(db, tmp_path):
    """MLflow's upload protocol sends the file every time; the server's write into PostgreSQL is saved."""
    from tests.mlflow_server import mlflow_server

    local = _file(tmp_path, "dataset.parquet", CONTENT)
    with mlflow_server(tmp_path / "server", db.uri) as server:
        mlflow.set_tracking_uri(server.url)
        runs = [_log(local), _log(local)]
        assert _read(runs[1], "dataset.parquet", tmp_path / "s") == CONTENT
        assert server.failures() == []
    assert db.sql("SELECT count(*), count(DISTINCT blob_id) FROM pgm_artifacts") == [(2, 1)]
    assert _blobs(db) == 1


def test_a_files_version_shares_its_unchanged_weights_with_its_predecessor(client, db, tmp_path, monkeypatch):
    monkeypatch.setattr(model_binary, "MAX_BLOB_BYTES", 1000)  # store versions as 'files' without 1 GB
    weights = os.urandom(200_000)
    dirs = []
    for v, head in enumerate((b"head one", b"head two")):
        d = tmp_path / f"v{v}"
        _file(d, "MLmodel", b"flavors:\n  python_function:\n    loader_module: nothing\n")
        _file(d, "data/weights.bin", weights)
        _file(d, "data/head.bin", head * 500)
        dirs.append(str(d))
    client.create_registered_model("llm")
    for d in dirs:
        client.create_model_version("llm", d)
    rows = db.sql("SELECT version, path, blob_id FROM pgm_version_files WHERE name = 'llm' ORDER BY 2, 1")
    by_path = {}
    for version, path, blob_id in rows:
        by_path.setdefault(path, []).append(blob_id)
    assert db.sql("SELECT DISTINCT format FROM models WHERE name = 'llm'") == [("files",)]
    assert by_path["data/weights.bin"][0] == by_path["data/weights.bin"][1]
    assert by_path["data/head.bin"][0] != by_path["data/head.bin"][1]
    assert _blobs(db) == 4  # MLmodel and weights once, two heads

    client.delete_model_version("llm", "1")
    loaded = mlflow.artifacts.download_artifacts("models:/llm/2", dst_path=str(tmp_path / "dl"))
    with open(os.path.join(loaded, "data", "weights.bin"), "rb") as f:
        assert f.read() == weights
    assert _blobs(db) == 3 and artifacts.orphan_count(db.uri) == 0


# --- reusing a blob while its last other reference goes, in real processes ---------------------------
ROUNDS = 60


def _log_and_delete(uri: str, workdir: str, run_id: str, local: str, rounds: int, keep_last: bool) -> None:
    """Log ``local`` into the run and delete it again, ``rounds`` times; each log is read back."""
    procs.enter(workdir, tracking_uri=uri)
    client = MlflowClient()
    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    with open(local, "rb") as f:
        expected = f.read()
    for i in range(rounds):
        client.log_artifact(run_id, local, "shared")
        got = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/shared/{os.path.basename(local)}",
                                                  dst_path=os.path.join(workdir, f"dl{i}"))
        with open(got, "rb") as f:
            assert f.read() == expected
        if not (keep_last and i == rounds - 1):
            repo.delete_artifacts("shared")


@pytest.mark.slow
def test_reusing_a_blob_while_its_last_reference_is_deleted_leaves_no_dangling_or_leaked_blob(client, db, tmp_path):
    """Two processes log the same bytes into their own run and delete them again, 60 times each:
    each log either reuses the other's blob (kept until it commits) or writes its own.

    Without the key-share lock on the reused blob the logs failed with a foreign key violation
    (a row about to reference a blob deleted meanwhile)."""
    local = _file(tmp_path, "shared.bin", CONTENT)
    runs = [client.create_run("0").info.run_id for _ in range(2)]
    ctx = procs.context()
    children = [ctx.Process(target=_log_and_delete,
                            args=(db.uri, str(tmp_path / f"w{i}"), run_id, local, ROUNDS, i == 0))
                for i, run_id in enumerate(runs)]
    for c in children:
        c.start()
    for c in children:
        c.join(300)
        assert c.exitcode == 0
    assert artifacts.orphan_count(db.uri) == 0
    assert db.sql("SELECT count(*) FROM pgm_artifacts") == [(1,)]
    assert _blobs(db) == 1
    assert _read(runs[0], "shared/shared.bin", tmp_path / "final") == CONTENT
