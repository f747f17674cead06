"""Loads in fresh processes (benchmarks/child.py): one alone, or several started at the same moment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench import Side

CHILD = Path(__file__).resolve().parent / "child.py"


def child(side: Side, model_uri: str, go_file: str | None = None) -> subprocess.Popen:
    """A process that sets up, loads ``model_uri`` (after ``go_file`` exists, if given) and reports."""
    args = [sys.executable, str(CHILD), "--tracking-uri", side.uri, "--registry-uri", side.uri,
            "--model-uri", model_uri, "--warm-uri", "models:/warmup/1"]
    if go_file:
        args += ["--go-file", go_file]
    return subprocess.Popen(args, cwd=side.workdir, stdout=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen) -> dict:
    """The child's JSON line: load seconds and RSS before, at the peak of and after the load."""
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])


def load_in_child(side: Side, model_uri: str) -> dict:
    return child_result(child(side, model_uri))


def load_together(side: Side, model_uri: str, n: int, tmp: Path) -> list[dict]:
    """``n`` processes load ``model_uri`` at the same moment (all imports done before the start signal)."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs = [child(side, model_uri, str(go)) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    return [child_result(p) for p in procs]
