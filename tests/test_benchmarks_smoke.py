"""The benchmark runs end to end (``--quick``); its numbers are not checked here, only that it ran.
Its check that a loaded model predicts what was logged gives the same answer every time."""

import copy
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from benchmarks.models import same_predictions
from tests.conftest import ROOT

ROWS = ["log_model", "register, database part", "repeated `load_model", "first load, empty cache",
        "client peak memory", "processes load one new version at once", 'resolve "models:/meta/latest"',
        "`get_latest_versions`", "`search_model_versions", "TOAST blocks", "Models list page 1"]


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
