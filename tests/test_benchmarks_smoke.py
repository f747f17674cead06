"""The benchmark runs end to end (``--quick``); its numbers are not checked here, only that it ran.
Its check that a loaded model predicts what was logged gives the same answer every time."""

import copy
import json
import pickle
import subprocess
import sys

import numpy as np
import psycopg
import pytest
from sklearn.ensemble import RandomForestRegressor

from benchmarks.bench import QUICK, Bench, Side
from benchmarks.models import same_predictions, tiny_model
from benchmarks.once import wire
from benchmarks.wire import Forwarder
from tests.conftest import ROOT

ROWS = ["log_model", "register, database part", "repeated `load_model", "first load, empty cache",
        "client peak memory", "processes load one new version at once", 'resolve "models:/meta/latest"',
        "`get_latest_versions`", "`search_model_versions", "TOAST blocks", "Models list page 1",
        "register a version of a model directory", "register a version of a LoggedModel"]


@pytest.mark.slow
def test_quick_benchmark_writes_a_results_file_with_every_row(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    results = json.loads(out.read_text())
    whats = [row["what"] for row in results["rows"]]
    for expected in ROWS:
        assert any(expected in w for w in whats), f"no row {expected!r} in {whats}"
    assert all(row["ours"]["samples"] for row in results["rows"])
    assert results["table"].splitlines()[0].startswith("| what | pgmodels | baseline | ratio | goal | met |")
    assert "| what |" in run.stdout  # the table is printed too


def test_a_forest_predicts_like_its_reloaded_copy_every_time():
    # 20 trees on 2 threads (as the benchmark's forest): the order they are added up in varies
    rng = np.random.default_rng(0)
    X, y = rng.random((2000, 8)), rng.random(2000)
    model = RandomForestRegressor(n_estimators=20, max_features=0.5, n_jobs=2, random_state=0).fit(X, y)
    reloaded = pickle.loads(pickle.dumps(model))
    fewer_trees = copy.deepcopy(model)
    fewer_trees.estimators_ = fewer_trees.estimators_[:-1]

    assert all(same_predictions(reloaded, model, X[:2]) for _ in range(50))
    assert not same_predictions(fewer_trees, model, X[:2])
    assert model.n_jobs == reloaded.n_jobs == 2  # the estimators compared are left as they were


def test_the_forwarder_counts_the_bytes_each_side_sends(db):
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    with Forwarder(str(db.server.socket_dir / f".s.PGSQL.{db.server.port}")) as fwd, \
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{fwd.port}/{db.name}?sslmode=disable") as conn:
        fwd.reset()  # the start-up and authentication
        length = conn.execute("SELECT octet_length(%b)", (payload,)).fetchone()[0]
        sent, received = fwd.reset()
        echoed = conn.execute("SELECT %b::bytea", (payload[:100_000],), binary=True).fetchone()[0]
        _, received_echo = fwd.reset()

    assert length == len(payload)
    assert len(payload) <= sent < len(payload) + 4096
    assert received < 4096
    assert echoed == payload[:100_000] and 100_000 <= received_echo < 100_000 + 4096


def test_the_wire_row_counts_the_zip_once_and_registering_sends_no_model_bytes(db, tmp_path):
    bench = Bench(QUICK, tmp_path)
    bench.ours = Side("pgmodels", db.uri, tmp_path)
    model = tiny_model()[0]
    model.ballast_ = np.random.default_rng(0).random(128 * 1024)  # 1 MiB that does not compress
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), autocommit=True) as bench.pg:
        wire(bench, model, "tiny")

    sent = bench.rows[0]
    assert sent.what.startswith("bytes the client sent for `log_model(..., registered_model_name=)`")
    facts = bench.facts["wire tiny"]
    assert facts["zip"] > 0 and facts["sent"] >= facts["zip"]  # the model's bytes did travel, through the forwarder
    assert facts["log_model_only"] >= facts["zip"]
    assert 0 < facts["register_only"] < facts["zip"]  # metadata only: the zip is built in the database


@pytest.mark.slow
def test_once_and_huge_gb_benchmark_writes_its_rows(tmp_path):
    out = tmp_path / "once.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--once", "--huge-gb",
                          "0.005", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    whats = [row["what"] for row in json.loads(out.read_text())["rows"]]
    for expected in ("bytes the client sent", "against stock + one plain COPY", "registering the LoggedModel alone",
                     "WAL written by registering alone", "0.005 GiB, new process", "first load, empty cache, 0.005 GiB"):
        assert any(expected in w for w in whats), f"no row {expected!r} in {whats}"
