"""Zip bombs in ``model_binary``: refused with DATA_LOSS in bounded memory, and nothing cached.

Rows are written with plain SQL (as any writer could) and loaded the ways users load: MLflow's
``models:/name/1`` and the helper ``load_model_from_db``. Each archive comes in two forms: sizes
in the local headers (extracted while it streams from the database) and data descriptors, as
streaming zip tools write (extracted from a file by ``archive.unpack``).
"""

from __future__ import annotations

import functools
import io
import os
import tracemalloc
import zipfile

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import load_model_from_db
from mlflow_pgmodels._storage import archive
from mlflow_pgmodels._cache import cache
from tests import sample
from tests.test_hostile_input import _Unseekable  # zipfile then writes data descriptors

MiB = 1024 * 1024
BOMB_INFLATED = 256 * MiB
FORMS = pytest.mark.parametrize("streamable", [True, False], ids=["streamed", "file"])
LOADERS = pytest.mark.parametrize("loader", ["pyfunc", "helper"])


def _zip(model_dir: str, extra: dict[str, int], streamable: bool) -> bytes:
    """The files of ``model_dir`` plus ``extra`` (name → that many zero bytes, deflated)."""
    out = io.BytesIO() if streamable else _Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for filename in sorted(os.listdir(model_dir)):
            zf.write(os.path.join(model_dir, filename), filename)
        for name, size in extra.items():
            with zf.open(name, "w") as f:
                for start in range(0, size, MiB):
                    f.write(bytes(min(MiB, size - start)))
    return bytes(out.getvalue() if streamable else out.buffer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return sample.saved(tmp_path_factory.mktemp("m") / "model", sample.regressor(3.0))


@functools.cache
def _bomb(model_dir: str, streamable: bool) -> bytes:
    return _zip(model_dir, {"weights.bin": BOMB_INFLATED}, streamable)


def _insert(db, blob: bytes, name: str = "bomb") -> None:
    """A version written by plain SQL, as old code or any writer with INSERT rights can."""
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary)"
           " VALUES (%s, 1, 'regression', 'default', %s)", (name, blob))


def _load(db, loader: str, name: str = "bomb"):
    if loader == "pyfunc":
        mlflow.set_tracking_uri(db.uri)
        return mlflow.pyfunc.load_model(f"models:/{name}/1")
    return load_model_from_db(name, "default", "regression", uri=db.uri)[0]


def _refused(db, loader: str, setting: str, name: str = "bomb") -> MlflowException:
    with pytest.raises(MlflowException) as e:
        _load(db, loader, name)
    assert e.value.error_code == "DATA_LOSS", e.value.message
    assert f"Model '{name}' version 1" in e.value.message
    assert setting in e.value.message
    _nothing_cached(name)
    return e.value


def _nothing_cached(name: str) -> None:
    assert [e for e in cache.entries() if e.name == name] == []
    leftovers = [p for p, _, _ in os.walk(cache.root()) if os.path.basename(p).startswith(".fill-")]
    assert leftovers == []


def _predicts(model) -> None:
    predict = model.predict
    assert np.allclose(predict(sample.X[:3]), sample.X[:3, 0] * 3.0)


@FORMS
@LOADERS
def test_a_deflate_bomb_is_refused_in_bounded_memory(db, model_dir, streamable, loader):
    blob = _bomb(model_dir, streamable)
    assert len(blob) < MiB  # 256 MiB of zeros in one entry
    _insert(db, blob)
    _insert(db, _zip(model_dir, {}, streamable), name="plain")
    _predicts(_load(db, loader, "plain"))  # so that the imports of a first load are not counted

    tracemalloc.start()
    try:
        _refused(db, loader, archive.MAX_RATIO_ENV)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"peak {peak / MiB:.0f} MiB while refusing a {len(blob):,}-byte bomb"


@FORMS
@LOADERS
def test_too_many_entries_are_refused_until_the_limit_is_raised(db, model_dir, monkeypatch, streamable, loader):
    _insert(db, _zip(model_dir, {f"junk/{i}.txt": 1 for i in range(30)}, streamable))
    monkeypatch.setenv(archive.MAX_ENTRIES_ENV, "20")

    _refused(db, loader, archive.MAX_ENTRIES_ENV)

    monkeypatch.setenv(archive.MAX_ENTRIES_ENV, "100")
    _predicts(_load(db, loader))


@FORMS
@LOADERS
def test_more_than_the_unpacked_limit_is_refused_until_it_is_raised(db, model_dir, monkeypatch, streamable, loader):
    _insert(db, _zip(model_dir, {"weights.bin": 4 * MiB}, streamable))
    monkeypatch.setenv(archive.MAX_UNPACKED_BYTES_ENV, str(3 * MiB))

    _refused(db, loader, archive.MAX_UNPACKED_BYTES_ENV)

    monkeypatch.delenv(archive.MAX_UNPACKED_BYTES_ENV)
    _predicts(_load(db, loader))


def test_a_setting_that_is_not_a_number_is_refused(db, model_dir, monkeypatch):
    _insert(db, _zip(model_dir, {}, True), name="plain")
    monkeypatch.setenv(archive.MAX_RATIO_ENV, "lots")

    with pytest.raises(MlflowException) as e:
        _load(db, "pyfunc", "plain")

    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert archive.MAX_RATIO_ENV in e.value.message
    _nothing_cached("plain")


# ---------------------------------------------------------------------- the two extractors directly
def _file(tmp_path, blob: bytes) -> str:
    path = tmp_path / "blob.zip"
    path.write_bytes(blob)
    return str(path)


def _written(target) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(target) for f in fs)


@pytest.mark.parametrize("limits, extra, setting", [
    (archive.Limits(), {"weights.bin": BOMB_INFLATED}, archive.MAX_RATIO_ENV),
    (archive.Limits(entries=20), {f"junk/{i}": 1 for i in range(30)}, archive.MAX_ENTRIES_ENV),
    (archive.Limits(unpacked_bytes=3 * MiB), {"weights.bin": 4 * MiB}, archive.MAX_UNPACKED_BYTES_ENV),
], ids=["ratio", "entries", "total"])
def test_unpack_refuses_from_the_declared_sizes_before_writing(tmp_path, model_dir, limits, extra, setting):
    blob = _bomb(model_dir, False) if setting == archive.MAX_RATIO_ENV else _zip(model_dir, extra, False)
    target = tmp_path / "out"

    with pytest.raises(MlflowException) as e:
        archive.unpack(_file(tmp_path, blob), str(target), "Model 'x' version 1", limits)

    assert e.value.error_code == "DATA_LOSS"
    assert "Model 'x' version 1" in e.value.message and setting in e.value.message
    assert _written(target) == 0


def _understating(blob: bytes, name: str, declared: int) -> bytes:
    """``blob`` with the local header of ``name`` declaring ``declared`` uncompressed bytes."""
    data = bytearray(blob)
    at = data.index(name.encode()) - 30  # the first occurrence is in the local header
    assert data[at:at + 4] == b"PK\x03\x04"
    data[at + 22:at + 26] = declared.to_bytes(4, "little")
    return bytes(data)


def test_streaming_unzip_trusts_no_declared_size(tmp_path, model_dir):
    """A local header that says 1,000 bytes for 256 MiB: the bytes written count, not the header."""
    blob = _understating(_bomb(model_dir, True), "weights.bin", 1000)
    target = tmp_path / "out"
    unzip = archive.StreamingUnzip(str(target), "Model 'x' version 1", archive.Limits())

    tracemalloc.start()
    try:
        with pytest.raises(MlflowException) as e:
            unzip.write(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert e.value.error_code == "DATA_LOSS" and archive.MAX_RATIO_ENV in e.value.message
    assert _written(target) <= archive.Limits().ratio * len(blob) + MiB  # far from the 256 MiB
    assert peak < 16 * MiB


def test_streaming_unzip_refuses_a_size_that_differs_from_its_header(tmp_path, model_dir):
    blob = _understating(_zip(model_dir, {"weights.bin": 2 * MiB}, True), "weights.bin", 1000)
    unzip = archive.StreamingUnzip(str(tmp_path / "out"), "Model 'x' version 1")

    with pytest.raises(MlflowException) as e:
        unzip.write(blob)

    assert e.value.error_code == "DATA_LOSS" and "weights.bin" in e.value.message


def test_unpack_refuses_compression_it_cannot_bound(tmp_path, model_dir):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_BZIP2) as zf:
        zf.write(os.path.join(model_dir, "MLmodel"), "MLmodel")
        zf.writestr("weights.bin", bytes(MiB))

    with pytest.raises(MlflowException) as e:
        archive.unpack(_file(tmp_path, out.getvalue()), str(tmp_path / "out"), "Model 'x' version 1")

    assert e.value.error_code == "DATA_LOSS" and "bzip2" in e.value.message
    assert _written(tmp_path / "out") == 0


def test_a_real_model_unpacks_within_the_default_limits(tmp_path, model_dir):
    for streamable in (True, False):
        target = tmp_path / f"out-{streamable}"
        blob = archive.pack(model_dir).read()
        if streamable:
            unzip = archive.StreamingUnzip(str(target), "Model 'x' version 1")
            unzip.write(blob)
            unzip.close()
        else:
            archive.unpack(_file(tmp_path, blob), str(target), "Model 'x' version 1")
        assert sorted(os.listdir(target)) == sorted(os.listdir(model_dir))
