"""The local cache of downloaded versions, as a user sees it.

A version is downloaded once; later loads check its digest with one small query and read no
model bytes from the database. Whether the bytes of ``model_binary`` were read is measured in
PostgreSQL itself: the block statistics of the ``models`` table's TOAST relation, where
PostgreSQL keeps the big values.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
import time
import zipfile

import mlflow
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier

from mlflow_pgmodels import cli
from mlflow_pgmodels._storage import archive
from mlflow_pgmodels._cache import cache
from mlflow_pgmodels._pg import db as pgdb
from tests import procs, sample


def forest(seed: int = 0) -> RandomForestClassifier:
    """A model whose zip is big enough (tens of KB) for PostgreSQL to keep it out of line (TOAST)."""
    return RandomForestClassifier(n_estimators=8, random_state=seed).fit(sample.X, sample.Y_CLASS)


def log_forest(name: str, seed: int = 0):
    return sample.log(forest(seed), name, serialization_format="cloudpickle")


def model_bytes_read(db) -> int:
    """Blocks of ``model_binary`` values PostgreSQL has read in this database so far.

    Backends report their statistics when they end, so this process's pooled connections are
    closed first and the count is taken once they are gone.
    """
    pgdb.databases.close_all()
    for _ in range(500):
        if not db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                      " AND application_name = 'mlflow-pgmodels'")[0][0]:
            break
        time.sleep(0.01)
    return db.sql("SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)"
                  " FROM pg_statio_all_tables WHERE relname = 'models'")[0][0]


# ---------------------------------------------------------------------- repeated loads
def test_repeated_load_reads_no_model_bytes_from_the_database(client, db):
    model = forest()
    log_forest("churn")
    before_first = model_bytes_read(db)
    mlflow.pyfunc.load_model("models:/churn/latest")
    after_first = model_bytes_read(db)

    for _ in range(3):
        loaded = mlflow.pyfunc.load_model("models:/churn/latest")

    assert after_first > before_first  # the first load did read the model
    assert model_bytes_read(db) == after_first  # the repeated ones only checked the digest
    assert list(loaded.predict(sample.X[:5])) == list(model.predict(sample.X[:5]))


def test_browsing_the_registry_reads_no_model_bytes(client, db):
    for seed in range(3):
        log_forest("churn", seed)
    before = model_bytes_read(db)

    client.search_model_versions("name='churn'")
    client.get_latest_versions("churn")
    client.get_model_version("churn", "2")
    client.get_registered_model("churn")
    client.search_registered_models()
    client.get_model_version_download_uri("churn", "3")
    mlflow.store.artifact.models_artifact_repo.ModelsArtifactRepository("models:/churn/latest")

    assert model_bytes_read(db) == before


def test_loads_leave_no_temporary_directories_behind(client, monkeypatch, tmp_path):
    sample.log(sample.regressor(2.0), "price")
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))

    mlflow.pyfunc.load_model("models:/price/latest")  # first load: downloads
    mlflow.pyfunc.load_model("models:/price/latest")  # repeated: from the cache
    mlflow.sklearn.load_model("models:/price/1")

    assert os.listdir(own_tmp) == []


def test_a_loaded_version_holds_exactly_the_registered_files(client, tmp_path):
    """Big files are stored, small ones deflated; all come back byte for byte."""
    files = {"data/big.bin": random.Random(0).randbytes(5 * 2**20), "data/empty.txt": b"",
             "data/nested/small.txt": b"hello " * 1000}
    src = tmp_path / "artifacts"
    for rel, content in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(content)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), artifacts={"data": str(src / "data")},
                                registered_model_name="files", pip_requirements=["mlflow"])

    local = mlflow.artifacts.download_artifacts("models:/files/1")

    for rel, content in files.items():
        assert (tmp_path / local / "artifacts" / rel).read_bytes() == content


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=30))
def test_streamed_extraction_matches_the_zip_for_any_chunking(cuts):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("MLmodel", "flavors: {}\n" * 50, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("empty", b"")
        zf.writestr("dir/", b"")
        zf.writestr("dir/data.bin", bytes(range(256)) * 40, compress_type=zipfile.ZIP_STORED)
    data = buf.getvalue()
    with tempfile.TemporaryDirectory() as out:
        unzip = archive.StreamingUnzip(out, "test zip")
        pos = 0
        for cut in cuts + [len(data)]:
            unzip.write(data[pos:pos + cut])
            pos += cut
        unzip.close()
        assert open(os.path.join(out, "MLmodel")).read() == "flavors: {}\n" * 50
        assert os.path.getsize(os.path.join(out, "empty")) == 0
        assert open(os.path.join(out, "dir", "data.bin"), "rb").read() == bytes(range(256)) * 40


# ---------------------------------------------------------------------- size limit and eviction
def copy_out(uri: str) -> str:
    """Download a version as copies: it is cached, but this process does not keep using the entry
    (an in-place load would pin it for the life of the process; see test_cache_safety.py)."""
    return mlflow.artifacts.download_artifacts(uri, dst_path=tempfile.mkdtemp(dir="."))


def test_least_recently_used_versions_are_evicted_past_the_size_limit(client, monkeypatch):
    for seed in range(3):
        log_forest("churn", seed)
    copy_out("models:/churn/1")
    entry_size = cache.entries()[0].size
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", str(int(entry_size * 2.5)))

    copy_out("models:/churn/2")
    copy_out("models:/churn/1")  # used again: now 2 is the least recent
    copy_out("models:/churn/3")

    assert sorted(e.version for e in cache.entries()) == [1, 3]


def test_cache_dir_and_limit_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "12345")
    assert cache.root() == str(tmp_path / "elsewhere")
    assert cache.max_bytes() == 12345


def test_cache_ls_and_clear_on_the_command_line(client, db, capsys):
    sample.log(sample.regressor(2.0), "price")
    copy_out("models:/price/1")

    assert cli.main(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "price\tv1\tmodel\t" in listing and "1 cached versions" in listing

    assert cli.main(["cache", "clear"]) == 0
    assert "removed 1 cached versions" in capsys.readouterr().out
    assert cache.entries() == []
    before = model_bytes_read(db)
    assert mlflow.pyfunc.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])
    assert model_bytes_read(db) > before  # downloaded again


# ---------------------------------------------------------------------- never stale, never torn
def test_a_recreated_name_never_gets_the_old_cached_bytes(client):
    sample.log(sample.regressor(2.0), "price")
    assert mlflow.pyfunc.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])

    client.delete_registered_model("price")
    info = sample.log(sample.regressor(5.0), "price")

    assert info.registered_model_version == 1  # the same name and version number as before
    assert mlflow.pyfunc.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(5 * sample.X[0, 0])


def _load_at_once(workdir: str, uri: str, cache_dir: str, start) -> list[float]:
    procs.enter(workdir, uri, uri)
    os.environ["MLFLOW_PGMODELS_CACHE_DIR"] = cache_dir
    start.wait()
    return list(mlflow.pyfunc.load_model("models:/churn/1").predict(sample.X[:5]))


@pytest.mark.slow
def test_processes_loading_at_once_fill_the_cache_once(client, db, tmp_path):
    model = forest()
    log_forest("churn")
    shared = str(tmp_path / "shared-cache")
    ctx = procs.context()
    before = model_bytes_read(db)
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        start = manager.Barrier(4)
        results = [pool.apply_async(_load_at_once, (str(tmp_path / f"p{i}"), db.uri, shared, start))
                   for i in range(4)]
        predictions = [r.get(timeout=300) for r in results]
    read_by_four = model_bytes_read(db) - before

    assert predictions == [list(model.predict(sample.X[:5]))] * 4
    os.environ["MLFLOW_PGMODELS_CACHE_DIR"] = shared
    assert [(e.name, e.version) for e in cache.entries()] == [("churn", 1)]
    assert [p for p in os.listdir(shared) if not p.startswith(".")] == [
        os.path.basename(cache.entries()[0].path)]
    assert [p for p in os.listdir(shared) if p.startswith((".fill-", ".deleting-"))] == []  # nothing half-done
    cache.clear()
    before = model_bytes_read(db)
    mlflow.pyfunc.load_model("models:/churn/1")
    assert read_by_four == model_bytes_read(db) - before  # four processes read it as often as one
