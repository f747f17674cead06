"""MLflow's artifact contract, on ``pgmodels-artifacts:`` and on a stock local artifact root.

Each scenario runs twice, the same steps on two artifact repositories: MLflow's own
``LocalArtifactRepository`` (``file://``) and ours on the test database. It returns what a user
would look at (listings, the files a download produced, or the error's class and code), and the
two must be equal. The behaviours are the ones MLflow's tests check for its repositories
(tests/store/artifact/test_local_artifact_repo.py) and for ``mlflow.artifacts``
(tests/artifacts/test_artifacts.py); differences we keep on purpose are in docs/design.md
("Run artifacts: MLflow's contract").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException, MlflowTraceDataCorrupted, MlflowTraceDataNotFound
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository


def _files(local: str | Path) -> dict[str, str]:
    """Every file below ``local`` (or the file itself) with its text: what a download produced."""
    local = Path(local)
    if local.is_file():
        return {local.name: local.read_text()}
    return {p.relative_to(local).as_posix(): p.read_text() for p in sorted(local.rglob("*")) if p.is_file()}


def _listing(repo, path: str | None = None) -> list[tuple[str, bool, int | None]]:
    return [(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts(path)]


def _failure(action) -> tuple[str, str] | object:
    """What ``action()`` returns, or the class and error code of what it raises."""
    try:
        return action()
    except MlflowException as e:
        return type(e).__name__, e.error_code
    except OSError as e:
        return "OSError", type(e).__name__


def _refusal(action) -> str | object:
    """What ``action()`` returns, or the start of the message it is refused with (MLflow's local
    repository refuses with INTERNAL_ERROR, we with INVALID_PARAMETER_VALUE: see the test below)."""
    try:
        return action()
    except MlflowException as e:
        return " ".join(e.message.split()[:3]).rstrip(":")


def _source_tree(base: Path) -> Path:
    """A local directory to log: files at two depths and a hidden file."""
    tree = base / "src"
    (tree / "nested" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "b.txt").write_text("B")
    (tree / ".hidden").write_text("42")
    (tree / "nested" / "c.txt").write_text("C")
    (tree / "nested" / "deeper" / "d.json").write_text('{"d": 4}')
    return tree


# --- scenarios: each takes a repository and a scratch directory -----------------------------------
def empty_root(repo, tmp):
    return _listing(repo), _listing(repo, "missing"), _files(repo.download_artifacts("", str(_dir(tmp / "out"))))


def one_file_then_listed(repo, tmp):
    (tmp / "test.txt").write_text("hello world!")
    repo.log_artifact(str(tmp / "test.txt"))
    return _listing(repo), _listing(repo, "test.txt")  # a file lists as nothing (not as a directory)


def a_tree_logged_and_listed_level_by_level(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)))
    return _listing(repo), _listing(repo, "nested"), _listing(repo, "nested/"), _listing(repo, "nested/deeper")


def a_tree_below_an_artifact_path(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)), artifact_path="run/outputs")
    return _listing(repo), _listing(repo, "run"), _listing(repo, "run/outputs/nested")


@pytest.mark.parametrize("subdir", ["aaa", "aaa/bbb", "aaa/bbb/ccc/ddd"])
def logged_into_a_subdirectory_and_downloaded(repo, tmp, subdir="aaa/bbb"):
    (tmp / "test.txt").write_text("hello world!")
    repo.log_artifact(str(tmp / "test.txt"), artifact_path=subdir)
    return _files(repo.download_artifacts(subdir, str(_dir(tmp / "d1")))), \
        _files(repo.download_artifacts(f"{subdir}/test.txt", str(_dir(tmp / "d2"))))


def whole_tree_downloaded_into_a_directory(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)))
    dst = _dir(tmp / "dest")
    result = repo.download_artifacts("", str(dst))
    return Path(result) == dst, _files(result)


def downloaded_without_a_destination(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)))
    results = [repo.download_artifacts(path) for path in ("a.txt", "nested", "")]
    return [os.path.isabs(r) for r in results], [_files(r) for r in results]


def downloaded_to_relative_and_absolute_destinations(repo, tmp):
    (tmp / "test.txt").write_text("hello world!")
    repo.log_artifact(str(tmp / "test.txt"))
    os.chdir(tmp)
    shown = []
    for dst in ("dst1", str(tmp / "dst2")):
        os.makedirs(dst)
        result = repo.download_artifacts("test.txt", dst)
        shown.append((result == os.path.abspath(result), result.startswith(os.path.abspath(dst)), _files(result)))
    return shown


def a_hidden_file(repo, tmp):
    (tmp / ".mystery").write_text("42")
    repo.log_artifact(str(tmp / ".mystery"))
    return _listing(repo), _files(repo.download_artifacts(".mystery", str(_dir(tmp / "out"))))


def logged_again_replaces_the_file(repo, tmp):
    (tmp / "model.txt").write_text("first, and longer")
    repo.log_artifact(str(tmp / "model.txt"))
    (tmp / "model.txt").write_text("second")
    repo.log_artifact(str(tmp / "model.txt"))
    return _listing(repo), _files(repo.download_artifacts("model.txt", str(_dir(tmp / "out"))))


def unicode_and_spaces_in_names(repo, tmp):
    (tmp / "src" / "grüße dir").mkdir(parents=True)
    (tmp / "src" / "grüße dir" / "résumé 1.txt").write_text("ü")
    repo.log_artifacts(str(tmp / "src"))
    return _listing(repo), _listing(repo, "grüße dir"), _files(repo.download_artifacts("", str(_dir(tmp / "out"))))


@pytest.mark.parametrize("bad", ["/", "//", "/tmp", "/bad_path", ".", "./a", "a/", "a//b", "a/./b", "../terrible_path",
                                 "a/../b", "a/../../b"])
def an_invalid_artifact_path_to_log_to(repo, tmp, bad="/bad_path"):
    (tmp / "f.txt").write_text("x")
    return _refusal(lambda: repo.log_artifact(str(tmp / "f.txt"), bad)), _listing(repo)


def paths_with_dots_and_slashes(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)))
    return _listing(repo, "./nested"), _listing(repo, "nested//deeper"), \
        _files(repo.download_artifacts("./nested/c.txt", str(_dir(tmp / "o1")))), \
        _files(repo.download_artifacts("nested/", str(_dir(tmp / "o2"))))


def an_absolute_path_to_download(repo, tmp):
    return _failure(lambda: repo.download_artifacts("/absolute/path/to/file", str(_dir(tmp / "out"))))


def a_missing_file_to_download(repo, tmp):
    (tmp / "test.txt").write_text("hello")
    repo.log_artifact(str(tmp / "test.txt"))
    out = _dir(tmp / "out")
    return _failure(lambda: repo.download_artifacts("nope.txt", str(out))), sorted(os.listdir(out))


def deleted_below_a_path_and_everything(repo, tmp):
    repo.log_artifacts(str(_source_tree(tmp)))
    repo.delete_artifacts("nested")
    after_one = _listing(repo)
    repo.delete_artifacts("never-logged")  # deleting what is not there succeeds
    repo.delete_artifacts()
    return after_one, _listing(repo)


def trace_data_round_trip(repo, tmp):
    missing = _failure(repo.download_trace_data)
    repo.upload_trace_data("invalid data")
    corrupted = _failure(repo.download_trace_data)
    trace = {"spans": [], "request": {"test": 1}, "response": {"test": 2}}
    repo.upload_trace_data(json.dumps(trace))
    return missing, corrupted, repo.download_trace_data() == trace


SCENARIOS = [empty_root, one_file_then_listed, a_tree_logged_and_listed_level_by_level, a_tree_below_an_artifact_path,
             logged_into_a_subdirectory_and_downloaded, whole_tree_downloaded_into_a_directory,
             downloaded_without_a_destination, downloaded_to_relative_and_absolute_destinations, a_hidden_file,
             logged_again_replaces_the_file, unicode_and_spaces_in_names, an_invalid_artifact_path_to_log_to,
             paths_with_dots_and_slashes,
             an_absolute_path_to_download, a_missing_file_to_download, deleted_below_a_path_and_everything,
             trace_data_round_trip]


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _cases():
    for scenario in SCENARIOS:
        marks = getattr(scenario, "pytestmark", [])
        params = next((m.args for m in marks if m.name == "parametrize"), None)
        if params is None:
            yield pytest.param(scenario, {}, id=scenario.__name__)
        else:
            name, values = params
            for value in values:
                yield pytest.param(scenario, {name: value}, id=f"{scenario.__name__}[{value}]")


@pytest.mark.parametrize(("scenario", "kwargs"), _cases())
def test_our_repository_does_what_mlflows_local_repository_does(client, tmp_path, scenario, kwargs):
    stock = get_artifact_repository((tmp_path / "stock-root").as_uri())
    ours = get_artifact_repository("pgmodels-artifacts:/contract/root")
    (tmp_path / "stock").mkdir()
    (tmp_path / "ours").mkdir()
    expected = scenario(stock, tmp_path / "stock", **kwargs)
    os.chdir(tmp_path)
    assert scenario(ours, tmp_path / "ours", **kwargs) == expected


def test_a_refused_path_is_a_bad_request_and_nothing_is_written(client, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    ours = get_artifact_repository("pgmodels-artifacts:/contract/root")
    for bad in ("../escape", "a//b", "dir/"):
        with pytest.raises(MlflowException) as e:
            ours.log_artifact(str(tmp_path / "f.txt"), bad)
        # MLflow's local repository says INTERNAL_ERROR (HTTP 500, which clients retry); a bad path is the caller's
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
        assert bad in e.value.message and "Nothing was read or written" in e.value.message
    assert ours.list_artifacts() == []


def test_an_empty_directory_is_not_kept_as_on_object_stores(client, tmp_path):
    """A deliberate difference from MLflow's local repository (which copies the directory tree):
    like MLflow's S3, GCS and Azure repositories, the database holds files, and a directory is
    the files below it."""
    (tmp_path / "src" / "empty_dir").mkdir(parents=True)
    (tmp_path / "src" / "test.txt").write_text("x")
    ours = get_artifact_repository("pgmodels-artifacts:/contract/root")
    ours.log_artifacts(str(tmp_path / "src"))
    assert _listing(ours) == [("test.txt", False, 1)]
    assert _files(ours.download_artifacts("", str(_dir(tmp_path / "out")))) == {"test.txt": "x"}


# --- mlflow.artifacts on runs: the same steps in an experiment on disk and in one in the database ---------
def _run_with_files(tmp: Path, experiment_id: str) -> mlflow.entities.Run:
    local = tmp / "logged"
    (local / "dir" / "subdir").mkdir(parents=True)
    (local / "dir" / "file.txt").write_text("content")
    (local / "dir" / "subdir" / "text.txt").write_text("content")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(local / "dir"), "test")
        mlflow.log_text("This is a sentence", "texts/file.txt")
        mlflow.log_dict({"mlflow-version": "0.28", "n_cores": "10"}, "texts/config.json")
        mlflow.log_image(np.zeros((10, 12, 3), dtype=np.uint8), "images/black.png")
    return run


def downloaded_by_uri(run, tmp):
    uris = (f"runs:/{run.info.run_id}/test", f"{run.info.artifact_uri}/test")
    return [_files(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp / f"o{i}")))
            for i, uri in enumerate(uris)]


def downloaded_by_run_id(run, tmp):
    with_path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test/dir")
    whole = mlflow.artifacts.download_artifacts(run_id=run.info.run_id)
    return _files(with_path), sorted(os.listdir(whole)), Path(whole).is_absolute()


def downloaded_into_a_directory_that_does_not_exist_yet(run, tmp):
    dst = tmp / "doesnt_exist_yet" / "subdir"
    result = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test", dst_path=str(dst))
    return Path(result).samefile(dst / "test"), _files(result)


def listed_by_uri_and_run_id(run, tmp):
    shown = []
    for uri in (f"runs:/{run.info.run_id}/test", f"{run.info.artifact_uri}/test"):
        shown.append([[(f.path, f.is_dir, f.file_size) for f in mlflow.artifacts.list_artifacts(artifact_uri=u)]
                      for u in (uri, f"{uri}/dir", f"{uri}/dir/subdir", f"{uri}/non-exist-path")])
    shown.append([f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)])
    shown.append([f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="test")])
    return shown


def loaded_as_text_dict_and_image(run, tmp):
    base = run.info.artifact_uri
    image = mlflow.artifacts.load_image(f"{base}/images/black.png")
    return (mlflow.artifacts.load_text(f"{base}/texts/file.txt"), mlflow.artifacts.load_dict(f"{base}/texts/config.json"),
            (image.size, image.mode),
            _failure(lambda: mlflow.artifacts.load_dict(f"{base}/texts/file.txt")),
            _failure(lambda: mlflow.artifacts.load_image(f"{base}/texts/file.txt")))


def missing_artifacts(run, tmp):
    return (_failure(lambda: mlflow.artifacts.load_text(f"{run.info.artifact_uri}/texts/nope.txt")),
            _failure(lambda: mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="nope",
                                                                 dst_path=str(_dir(tmp / "out")))))


def a_pyfunc_model_downloaded(run, tmp):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str]) -> list[str]:
            return model_input

    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(tmp / "m"))
    return "MLmodel" in os.listdir(local), mlflow.pyfunc.load_model(local).predict(["a", "b"])


RUN_SCENARIOS = [downloaded_by_uri, downloaded_by_run_id, downloaded_into_a_directory_that_does_not_exist_yet,
                 listed_by_uri_and_run_id, loaded_as_text_dict_and_image, missing_artifacts, a_pyfunc_model_downloaded]


@pytest.mark.parametrize("scenario", RUN_SCENARIOS, ids=lambda s: s.__name__)
def test_mlflow_artifacts_api_gives_the_same_results_as_with_files_on_disk(client, tmp_path, scenario):
    results = []
    for where, location in (("stock", (tmp_path / "on-disk").as_uri()), ("ours", None)):
        experiment_id = mlflow.create_experiment(where, artifact_location=location)
        run = _run_with_files(_dir(tmp_path / where), experiment_id)
        results.append(scenario(run, tmp_path / where))
    stock, ours = results
    assert run.info.artifact_uri.startswith("pgmodels-artifacts:/")
    assert ours == stock
