"""The benchmark runs end to end (``--quick``); its numbers are not checked here, only that it ran."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ROWS = ["log_model", "register, database part", "repeated `load_model", "first load, empty cache",
        "client peak memory", "processes load one new version at once", 'resolve "models:/meta/latest"',
        "`get_latest_versions`", "`search_model_versions", "TOAST blocks"]


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
