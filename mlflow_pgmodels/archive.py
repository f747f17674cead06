"""A model directory as one zip (what ``model_binary`` holds), and back to a directory."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from typing import IO

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DATA_LOSS, INVALID_PARAMETER_VALUE

ZIP_MAGIC = b"PK\x03\x04"
# Below this a file is deflated (MLmodel, yaml, json, small pickles); above it the cost of
# compressing (~50 MB/s) outweighs what the smaller transfer saves.
_DEFLATE_BELOW = 4 * 1024 * 1024
LEGACY_FILE = "model.joblib"
# Files MLflow adds on download; never part of a stored version.
_SKIP = {"registered_model_meta"}


def pack(model_dir: str) -> IO[bytes]:
    """A temporary file (positioned at 0) holding the zip of ``model_dir``, MLmodel at its root."""
    if not os.path.isfile(os.path.join(model_dir, "MLmodel")):
        raise MlflowException(
            f"{model_dir!r} is not an MLflow model directory (no MLmodel file)",
            error_code=INVALID_PARAMETER_VALUE,
        )
    out = tempfile.TemporaryFile()
    with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        for root, dirs, files in os.walk(model_dir):
            dirs.sort()
            for filename in sorted(files):
                path = os.path.join(root, filename)
                arcname = os.path.relpath(path, model_dir).replace(os.sep, "/")
                if arcname in _SKIP:
                    continue
                small = os.path.getsize(path) < _DEFLATE_BELOW
                zf.write(path, arcname, compress_type=zipfile.ZIP_DEFLATED if small else zipfile.ZIP_STORED,
                         compresslevel=6 if small else None)
    out.seek(0)
    return out


def unpack(zip_path: str, target_dir: str, what: str) -> None:
    """Extract a version's zip into ``target_dir``; refuses entries that would land outside it."""
    root = os.path.realpath(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                name = info.filename
                dest = os.path.realpath(os.path.join(root, name))
                if (os.path.isabs(name) or "\\" in name or name.startswith("/")
                        or os.path.commonpath([root, dest]) != root
                        or stat.S_ISLNK(info.external_attr >> 16)):
                    raise MlflowException(
                        f"{what} holds an unsafe path {name!r} (outside the model directory); "
                        "nothing was extracted from it",
                        error_code=DATA_LOSS,
                    )
                if info.is_dir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise MlflowException(f"{what} is not a readable zip archive ({e})", error_code=DATA_LOSS) from None


def write_legacy_model_dir(blob_path: str, target_dir: str) -> None:
    """Make a file-era row (raw joblib bytes) an MLflow model: the file plus an MLmodel for pyfunc."""
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    os.makedirs(target_dir, exist_ok=True)
    shutil.copyfile(blob_path, os.path.join(target_dir, LEGACY_FILE))
    model = Model()
    add_to_model(model, loader_module="mlflow_pgmodels.legacy", data=LEGACY_FILE)
    model.save(os.path.join(target_dir, "MLmodel"))
