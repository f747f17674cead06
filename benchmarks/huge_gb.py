"""A model past PostgreSQL's 1 GB value limit (issue 11, ``--huge-gb``): log + register and a first
load, time and client peak memory, each in a fresh process, against stock MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import MiB
from benchmarks.bench import Bench, Side
from benchmarks.processes import load_in_child
from benchmarks.report import Stat

LOG_CHILD = Path(__file__).resolve().parent / "log_child.py"
NAME = "huge-gb"


def huge_gb(bench: Bench, gib: float) -> None:
    """Log, register and load a ``gib`` GiB model on both sides, one process each, one after the other."""
    mib = round(gib * 1024)
    size = f"{gib:g} GiB"
    logged = {side.name: _log_in_child(side, mib) for side in (bench.stock, bench.ours)}
    version = logged["pgmodels"]["version"]
    fmt, stored, files = bench.pg.execute(
        "SELECT format, size_bytes, (SELECT count(*) FROM pgm_version_files f WHERE f.name = m.name"
        " AND f.version = m.version) FROM models m WHERE name = %s AND version = %s", (NAME, int(version))).fetchone()
    bench.empty_cache()
    loaded = {side.name: load_in_child(side, f"models:/{NAME}/{logged[side.name]['version']}")
              for side in (bench.stock, bench.ours)}
    model_mib = (loaded["stock"]["rss_after"] - loaded["stock"]["rss_before"]) / MiB
    bench.facts[f"huge {size}"] = {"logged": logged, "loaded": loaded, "format": fmt, "stored_bytes": stored,
                                   "files": files, "model_mib": model_mib}

    def extra(r: dict, base: float = 0.0) -> float:
        return max(0.0, (r["rss_peak"] - r["rss_before"]) / MiB - base)

    bench.row(f"`log_model(..., registered_model_name=)`, {size}, new process", Stat([logged["pgmodels"]["seconds"]]),
              Stat([logged["stock"]["seconds"]], label="stock"), None,
              note=f"stored as format '{fmt}', {files} files, {stored / MiB:.0f} MiB")
    bench.row(f"client peak memory beyond the built model while logging, {size}",
              Stat([extra(logged["pgmodels"])], unit="MiB"), Stat([extra(logged["stock"])], unit="MiB", label="stock"),
              None)
    bench.row(f"first load, empty cache, {size}: `load_model` in a new process", Stat([loaded["pgmodels"]["seconds"]]),
              Stat([loaded["stock"]["seconds"]], label="stock"), None)
    bench.row(f"client peak memory beyond the loaded model, first load, {size}",
              Stat([extra(loaded["pgmodels"], model_mib)], unit="MiB"),
              Stat([extra(loaded["stock"], model_mib)], unit="MiB", label="stock"), None,
              note=f"loaded model {model_mib:.0f} MiB; {loaded['pgmodels']['model']}")


def _log_in_child(side: Side, mib: int) -> dict:
    """benchmarks/log_child.py's JSON line for ``side``."""
    run = subprocess.run([sys.executable, str(LOG_CHILD), "--uri", side.uri, "--name", NAME, "--mib", str(mib)],
                         cwd=side.workdir, capture_output=True, text=True, timeout=3600)
    if run.returncode:
        raise RuntimeError(f"benchmark log child failed ({run.returncode}): {run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])
