"""The local cache is safe: nothing written through a path it hands out reaches a later load, an entry
in use is never evicted, every registered name loads, nothing is left behind, and it needs no fcntl.

Tests run as root, where file modes do not stop writes: what they show is the manifest check.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap

import mlflow
import pytest

from mlflow_pgmodels._cache import cache
from mlflow_pgmodels.version_artifact_repo import VersionArtifactRepository
from tests import sample
from tests.test_cache import model_bytes_read


def shell(command: str, cwd) -> None:
    """Run a shell command the way a user would type it (``echo x >> file``)."""
    subprocess.run(command, shell=True, cwd=cwd, check=True)


def files_of(path) -> dict[str, bytes]:
    """Every file of a model directory (except what MLflow adds on download) and its content."""
    out = {}
    for top, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            rel = os.path.relpath(os.path.join(top, f), path)
            if not rel.startswith(".pgmodels") and rel != "registered_model_meta":
                with open(os.path.join(top, f), "rb") as fh:
                    out[rel] = fh.read()
    return out


def child(db, cache_dir, code: str) -> subprocess.Popen:
    """A separate Python process using the test database and the given cache directory."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": db.uri, "MLFLOW_PGMODELS_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()[-3000:]
    return line.strip()


def everything_under(path) -> list[str]:
    return [os.path.relpath(os.path.join(top, n), path) for top, dirs, files in os.walk(path) for n in dirs + files]


# ---------------------------------------------------------------------- 1. never aliased
def test_a_download_to_dst_path_is_a_copy_that_the_cache_never_sees_changed(client, tmp_path):
    sample.log(sample.regressor(2.0), "price")
    first = tmp_path / "first"
    first.mkdir()
    mlflow.artifacts.download_artifacts("models:/price/1", dst_path=str(first))
    original = files_of(first)

    shell("echo x >> requirements.txt", cwd=first)

    assert (first / "requirements.txt").read_bytes().endswith(b"x\n")
    served = mlflow.artifacts.download_artifacts("models:/price/1")  # in place, from the cache
    assert files_of(served) == original
    second = tmp_path / "second"
    second.mkdir()
    mlflow.artifacts.download_artifacts("models:/price/1", dst_path=str(second))
    assert files_of(second) == original
    for rel in original:  # copies, not links: the caller owns them and may change them
        assert not os.path.samefile(first / rel, os.path.join(served, rel))
        assert os.stat(second / rel).st_mode & stat.S_IWUSR


@pytest.mark.parametrize("change", ["echo x >> requirements.txt", "echo x > extra.txt", "rm MLmodel",
                                    "echo x >> registered_model_meta"])
def test_a_change_made_through_a_served_path_is_never_served_again(client, db, change):
    sample.log(sample.regressor(2.0), "price")
    served = mlflow.artifacts.download_artifacts("models:/price/1")
    original = files_of(served)
    meta = open(os.path.join(served, "registered_model_meta")).read()
    if os.name == "posix":  # read-only where the OS enforces it (not for root, who runs these tests)
        assert not stat.S_IMODE(os.stat(os.path.join(served, "MLmodel")).st_mode) & 0o222
    before = model_bytes_read(db)

    shell(change, cwd=served)
    again = mlflow.artifacts.download_artifacts("models:/price/1")

    assert files_of(again) == original
    assert open(os.path.join(again, "registered_model_meta")).read() == meta
    if "registered_model_meta" in change:  # metadata MLflow itself rewrites on each load: put back
        assert model_bytes_read(db) == before
    else:
        assert model_bytes_read(db) > before  # fetched again
    assert mlflow.pyfunc.load_model("models:/price/1").predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])


class _UsesHelper(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        import pgm_cache_helper  # from the model's code path, i.e. from inside the cache entry

        return pgm_cache_helper.double(model_input)


def test_importing_a_models_code_from_the_cache_does_not_count_as_a_change(client, db, tmp_path, monkeypatch):
    """Python writes __pycache__ next to imported code; that must not make every load a download."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as by default (PYTHONDONTWRITEBYTECODE unset)
    helper = tmp_path / "pgm_cache_helper.py"
    helper.write_text("def double(x):\n    return x * 2\n")
    noise = tmp_path / "noise.bin"  # big enough for PostgreSQL to keep the version out of line (TOAST)
    noise.write_bytes(os.urandom(64 * 1024))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=_UsesHelper(), code_paths=[str(helper)],
                                artifacts={"noise": str(noise)}, registered_model_name="coded",
                                pip_requirements=["mlflow"])
    os.remove(helper)
    first = mlflow.pyfunc.load_model("models:/coded/1")
    assert list(first.predict([1.0, 2.0])) == [1.0, 2.0, 1.0, 2.0]  # list * 2, imported from the entry
    code = os.path.join(cache.entries()[0].path, "code")
    if os.access(code, os.W_OK):  # root: the read-only mode does not stop Python writing its bytecode
        assert os.listdir(os.path.join(code, "__pycache__"))
    before = model_bytes_read(db)

    mlflow.pyfunc.load_model("models:/coded/1")

    assert model_bytes_read(db) == before
    sys.modules.pop("pgm_cache_helper", None)


# ---------------------------------------------------------------------- 2. never evicted in use
def test_eviction_spares_what_this_process_was_handed(client, monkeypatch):
    sample.log(sample.regressor(2.0), "a")
    sample.log(sample.regressor(3.0), "b")
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "1")

    p = mlflow.artifacts.download_artifacts("models:/a/1")
    content = files_of(p)
    mlflow.artifacts.download_artifacts("models:/b/1")

    assert files_of(p) == content
    assert mlflow.pyfunc.load_model(p).predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])


def test_an_entry_borrowed_by_a_thread_is_not_evicted_until_it_is_returned():
    def fill(tmp):
        os.makedirs(os.path.join(tmp, "model"))
        with open(os.path.join(tmp, "model", "MLmodel"), "w") as f:
            f.write("flavors: {}\n")

    with cache.borrowed("m", 1, "k", fill) as path:  # e.g. a copy to a dst_path in progress
        assert cache.clear() == 0
        assert os.path.isfile(os.path.join(path, "MLmodel"))
    assert cache.clear() == 1
    assert not os.path.exists(path)


def test_an_entry_another_process_uses_is_kept_until_that_process_is_gone(client, db, monkeypatch):
    sample.log(sample.regressor(2.0), "a")
    sample.log(sample.regressor(3.0), "b")
    sample.log(sample.regressor(4.0), "c")
    user = child(db, cache.root(), """
        import sys, mlflow
        print(mlflow.artifacts.download_artifacts("models:/a/1"), flush=True)
        sys.stdin.readline()
    """)
    try:
        p = read_line(user)
        content = files_of(p)
        monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "1")

        mlflow.artifacts.download_artifacts("models:/b/1", dst_path=tempfile.mkdtemp(dir="."))

        assert files_of(p) == content
        assert [e.version for e in cache.entries() if e.name == "a"] == [1]
    finally:
        user.send_signal(signal.SIGKILL)  # not even a chance to clean up
        user.wait()

    mlflow.artifacts.download_artifacts("models:/c/1", dst_path=tempfile.mkdtemp(dir="."))

    assert not os.path.exists(p)
    assert [e.name for e in cache.entries()] == ["c"]
    assert everything_under(os.path.join(cache.root(), ".pins")) == []  # the dead process's pin is swept


def test_cache_clear_keeps_versions_in_use_and_says_so(client, capsys):
    from mlflow_pgmodels import cli

    sample.log(sample.regressor(2.0), "price")
    p = mlflow.artifacts.download_artifacts("models:/price/1")

    assert cli.main(["cache", "ls"]) == 0
    assert "price\tv1" in (listing := capsys.readouterr().out) and "\tin use\t" in listing
    assert cli.main(["cache", "clear"]) == 0

    assert "removed 0 cached versions" in (out := capsys.readouterr().out) and "kept 1 in use" in out
    assert os.path.isfile(os.path.join(p, "MLmodel"))


# ---------------------------------------------------------------------- 3. every name loads
NAMES = ["é" * 100, "é" * 255, "名前" * 100, "x" * 255, "CON", "Churn", "churn", 'a\\b*"<>|. ', " trail. "]


def test_every_name_the_registry_accepts_loads(client):
    for slope, name in enumerate(NAMES, start=1):
        sample.log(sample.regressor(float(slope)), name)

    for slope, name in enumerate(NAMES, start=1):
        loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
        assert loaded.predict(sample.X[:1])[0] == pytest.approx(slope * sample.X[0, 0]), name

    entries = cache.entries()
    assert sorted(e.name for e in entries) == sorted(NAMES)  # the real names, for `cache ls`
    for e in entries:
        rel = os.path.relpath(e.path, cache.root())
        assert len(rel) <= 70 and rel.isascii() and os.sep not in rel  # one short ASCII component
        for inside in everything_under(e.path):
            assert len(os.path.join(rel, inside)) < 200  # far from Windows' 260 beyond the root
    assert len({os.path.basename(e.path).lower() for e in entries}) == len(NAMES)  # case-insensitive file systems


# ---------------------------------------------------------------------- 4. nothing left behind
def test_loads_leave_no_lock_files_behind(client):
    sample.log(sample.regressor(2.0), "a")
    sample.log(sample.regressor(3.0), "b")

    for uri in ("models:/a/1", "models:/b/1", "models:/a/1"):
        mlflow.pyfunc.load_model(uri)
    mlflow.artifacts.download_artifacts("models:/b/1", dst_path=tempfile.mkdtemp(dir="."))

    left = [p for p in everything_under(cache.root()) if p.endswith(".lock") or "/.fill-" in "/" + p
            or "/.deleting-" in "/" + p]
    assert left == []


def test_what_a_killed_process_left_is_swept_by_the_next_fill(client, db):
    sample.log(sample.regressor(2.0), "big")
    sample.log(sample.regressor(3.0), "small")
    loader = child(db, cache.root(), """
        import time, mlflow
        from mlflow_pgmodels._cache import fetch

        write = fetch._ModelSink.write
        def stall(self, data):
            write(self, data)
            print("filling", flush=True)
            time.sleep(600)
        fetch._ModelSink.write = stall
        mlflow.artifacts.download_artifacts("models:/big/1")
    """)
    try:
        assert read_line(loader) == "filling"
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait()
    base = cache.root()
    fills = [p for p in everything_under(base) if os.path.basename(p).startswith(".fill-")]
    assert fills  # killed in the middle of a fill
    # and as if it had also been killed while deleting an entry
    os.makedirs(os.path.join(base, os.path.basename(fills[0]).replace(".fill-", ".deleting-", 1) + "0", "x"))

    mlflow.pyfunc.load_model("models:/small/1")

    left = [p for p in everything_under(base) if p.endswith(".lock")
            or os.path.basename(p).startswith((".fill-", ".deleting-", f"{loader.pid}-"))]
    assert left == []
    assert mlflow.pyfunc.load_model("models:/big/1").predict(sample.X[:1])[0] == pytest.approx(2 * sample.X[0, 0])


def test_the_first_cache_layout_is_swept_on_upgrade():
    base = cache.root()
    old = os.path.join(base, "churn%20model")  # <quoted name>/<version>-<digest>/, its .lock and a .fill-
    os.makedirs(os.path.join(old, "1-abc"))
    open(os.path.join(old, "1-abc", ".pgmodels-size"), "w").write("12")
    open(os.path.join(old, "1-abc.lock"), "w").close()
    os.makedirs(os.path.join(old, ".fill-xyz"))
    left_empty = os.path.join(base, "price")  # the old eviction left model directories empty
    os.makedirs(left_empty)

    with cache.borrowed("m", 1, "k", lambda tmp: os.makedirs(os.path.join(tmp, "model"))) as path:
        pass

    assert [p for p in os.listdir(base) if not p.startswith(".")] == [os.path.basename(path)]


def test_an_archive_download_makes_no_temporary_directory(client, db, tmp_path, monkeypatch):
    sample.log(sample.regressor(2.0), "price")
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    repo = VersionArtifactRepository("pgmodels:/price/1", registry_uri=db.uri)

    out = repo.download_artifacts(".pgmodels/model.zip", dst_path=str(tmp_path / "dst"))
    assert out == str(tmp_path / "dst" / ".pgmodels" / "model.zip") and os.path.getsize(out) > 0
    assert os.listdir(own_tmp) == []

    # without a dst_path: a directory that goes away with the process
    downloader = child(db, cache.root(), f"""
        import os, tempfile
        tempfile.tempdir = {str(own_tmp)!r}
        from mlflow_pgmodels.version_artifact_repo import VersionArtifactRepository
        out = VersionArtifactRepository("pgmodels:/price/1", registry_uri={db.uri!r}).download_artifacts(
            ".pgmodels/model.zip")
        print(out if os.path.getsize(out) > 0 else "empty", flush=True)
    """)
    path = read_line(downloader)
    assert downloader.wait() == 0
    assert path != "empty" and not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert os.listdir(own_tmp) == []


# ---------------------------------------------------------------------- 5. no fcntl
FAKE_MSVCRT = """
    import errno, os, sys, types

    held = {}  # (dev, inode) -> fd: msvcrt.locking's semantics, enough for one process
    def locking(fd, mode, nbytes):
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if mode == msvcrt.LK_UNLCK:
            held.pop(key, None)
        elif held.get(key, fd) != fd:
            raise OSError(errno.EACCES, "locked")
        else:
            held[key] = fd
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = 0, 1, 2
    msvcrt.locking = locking
"""


def test_models_load_without_fcntl(client, db):
    sample.log(sample.regressor(2.0), "price")
    loader = child(db, cache.root(), FAKE_MSVCRT + """
    sys.modules["fcntl"] = None  # as on Windows: any import of it fails
    import subprocess, mlflow    # (subprocess looks for msvcrt itself: the fake comes after)
    sys.modules["msvcrt"] = msvcrt
    from mlflow_pgmodels._cache import cache
    from mlflow_pgmodels._cache import locks
    locks.WINDOWS = True

    model = mlflow.pyfunc.load_model("models:/price/1")
    again = mlflow.pyfunc.load_model("models:/price/1")
    os.mkdir("copy")
    mlflow.artifacts.download_artifacts("models:/price/1", dst_path="copy")
    print(round(model.predict([[1.0, 0.0, 0.0]])[0], 6), round(again.predict([[1.0, 0.0, 0.0]])[0], 6),
          os.path.isfile("copy/MLmodel"), cache.clear(), held != {}, flush=True)
    """)
    assert read_line(loader).split() == ["2.0", "2.0", "True", "0", "True"]  # kept: in use; owner lock held
    assert loader.wait() == 0
