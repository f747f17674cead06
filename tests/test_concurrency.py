"""Many processes using one registered model at once: every version is kept, whole, under its number."""

from __future__ import annotations

import os
import random

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._pg.schema import SCHEMA_VERSION
from tests import procs, sample

PROCESSES = 16
PER_PROCESS = 25


# ---------------------------------------------------------------------- ways to register
def _via_log_model(model, name: str, reg_id: int) -> int:
    """What a training script does: log_model in a run, registering on the way."""
    info = sample.log(model, name, serialization_format="cloudpickle")
    return int(info.registered_model_version)


def _via_create_model_version(model, name: str, reg_id: int) -> int:
    """A saved model directory registered directly with the client."""
    path = os.path.abspath(f"saved-{reg_id}")
    mlflow.sklearn.save_model(model, path, pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
    return int(MlflowClient().create_model_version(name, source=path).version)


def _via_helper_api(model, name: str, reg_id: int) -> int:
    """The seed's helper API (save_model_to_db)."""
    from mlflow_pgmodels.helpers import save_model_to_db

    ok, version = save_model_to_db(model, name, "concurrency", "regression")
    assert ok
    return int(version)


def _registration_ways() -> list:
    """One registration in eight through log_model, one through the helper API, the rest direct.

    All three take the same path to a version number; the direct one is the cheapest, which
    keeps 400 registrations CI-sized.
    """
    return [_via_log_model, _via_helper_api] + [_via_create_model_version] * 6


def _register_many(uri: str, workdir: str, name: str, first_id: int, count: int) -> list[tuple[int, int, str]]:
    """In a child process: ``count`` registrations of ``name``, each a regressor whose slope is its id."""
    procs.enter(workdir, tracking_uri=uri)
    ways = _registration_ways()
    try:
        MlflowClient().create_registered_model(name)
    except MlflowException as e:  # another process was first
        assert e.error_code == "RESOURCE_ALREADY_EXISTS", e.message
    done = []
    for reg_id in range(first_id, first_id + count):
        way = ways[reg_id % len(ways)]
        done.append((reg_id, way(sample.regressor(reg_id), name, reg_id), way.__name__))
    return done


def test_sixteen_processes_registering_one_name_get_versions_1_to_400(db, tmp_path):
    ctx = procs.context()
    with ctx.Pool(PROCESSES) as pool:
        batches = pool.starmap(_register_many, [
            (db.uri, str(tmp_path / f"p{k}"), "churn", k * PER_PROCESS + 1, PER_PROCESS) for k in range(PROCESSES)])
    done = [entry for batch in batches for entry in batch]
    total = PROCESSES * PER_PROCESS

    assert sorted(version for _, version, _ in done) == list(range(1, total + 1))
    assert db.sql("SELECT array_agg(version ORDER BY version) FROM models WHERE name = 'churn'") == \
        [(list(range(1, total + 1)),)]
    assert db.sql("SELECT count(DISTINCT sha256) FROM models") == [(total,)]
    assert db.sql("SELECT next_version FROM pgm_registered_models WHERE name = 'churn'") == [(total + 1,)]
    print(f"\n{PROCESSES} processes x {PER_PROCESS} registrations, ways: "
          f"{sorted({way for _, _, way in done})}")

    mlflow.set_tracking_uri(db.uri)
    for reg_id, version, _ in done:
        model = mlflow.pyfunc.load_model(f"models:/churn/{version}")
        assert model.predict(sample.X[:1])[0] == pytest.approx(reg_id * sample.X[0, 0]), (reg_id, version)


# ---------------------------------------------------------------------- stage transitions
def _transition_randomly(uri: str, workdir: str, name: str, versions: int, moves: int, seed: int) -> int:
    procs.enter(workdir, tracking_uri=uri)
    client = MlflowClient()
    rng = random.Random(seed)
    for _ in range(moves):
        client.transition_model_version_stage(
            name, str(rng.randint(1, versions)), rng.choice(["Staging", "Production"]),
            archive_existing_versions=True)
    return moves


def test_concurrent_transitions_leave_at_most_one_version_per_stage(client, db, tmp_path):
    client.create_registered_model("churn")
    path = str(tmp_path / "model")
    mlflow.sklearn.save_model(sample.regressor(1.0), path, pip_requirements=["scikit-learn"])
    client.create_model_version("churn", path)
    for _ in range(11):
        client.copy_model_version("models:/churn/1", "churn")

    with procs.context().Pool(6) as pool:
        pool.starmap(_transition_randomly,
                     [(db.uri, str(tmp_path / f"p{k}"), "churn", 12, 15, k) for k in range(6)])

    versions = client.search_model_versions("name = 'churn'")
    stages = [mv.current_stage for mv in versions]
    assert stages.count("Production") <= 1 and stages.count("Staging") <= 1
    assert stages.count("Production") + stages.count("Staging") >= 1
    # is_active and the stage agree, row by row
    for version, is_active, stage in db.sql("SELECT version, is_active, stage FROM models WHERE name = 'churn'"):
        reported = client.get_model_version("churn", str(version)).current_stage
        assert (reported == "Archived") == (is_active is False)
        assert reported == (stage if is_active else "Archived")
    latest = {mv.current_stage: int(mv.version) for mv in client.get_latest_versions("churn")}
    for stage in ("Production", "Staging"):
        if stage in stages:
            assert latest[stage] == int(versions[stages.index(stage)].version)


# ---------------------------------------------------------------------- first use
def _first_use(uri: str, workdir: str, name: str) -> str:
    """In a child process: the very first registry call of a fresh process on a database."""
    # registry only: the tracking server is elsewhere (and never contacted for registry calls)
    procs.enter(workdir, tracking_uri="http://127.0.0.1:9", registry_uri=uri)
    MlflowClient().create_registered_model(name)
    return MlflowClient().get_registered_model(name).name


def test_many_processes_on_an_empty_database_create_the_schema_once(empty_db, tmp_path):
    names = [f"model-{k}" for k in range(8)]
    with procs.context().Pool(8) as pool:
        created = pool.starmap(_first_use, [(empty_db.uri, str(tmp_path / n), n) for n in names])

    assert created == names
    assert empty_db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION,)]
    assert empty_db.sql("SELECT count(*) FROM pg_class WHERE relname = 'models'") == [(1,)]
    assert sorted(r[0] for r in empty_db.sql("SELECT name FROM pgm_registered_models")) == names


def _first_use_with_tracking(uri: str, workdir: str, name: str) -> int:
    """In a child process: log and register a model on a database nobody has used yet."""
    procs.enter(workdir, tracking_uri=uri)
    return int(sample.log(sample.regressor(1.0), name, serialization_format="cloudpickle").registered_model_version)


def test_many_processes_logging_into_an_empty_database_all_succeed(empty_db, tmp_path):
    with procs.context().Pool(4) as pool:
        versions = pool.starmap(_first_use_with_tracking,
                                [(empty_db.uri, str(tmp_path / f"p{k}"), "churn") for k in range(4)])

    assert sorted(versions) == [1, 2, 3, 4]
    assert empty_db.sql("SELECT count(*) FROM models") == [(4,)]
