"""Lifecycle at scale (issue 19): ``du`` at 10,000 models / 100,000 versions, a prune of 10,000
versions, and what VACUUM does with the space a prune frees.

    python benchmarks/lifecycle.py            # ~3 minutes on 2 CPUs
    python benchmarks/lifecycle.py --quick    # 1,000 models, a smaller VACUUM round

Starts its own embedded PostgreSQL in a temporary directory, prints what it measured and writes
benchmarks/results/lifecycle.json; docs/performance.md ("Lifecycle") quotes the numbers.

* du: the registry of benchmarks/scale.py (10 versions per model, made by one generate_series
  INSERT), ``space.usage`` timed over the whole store (median of 5), then ``mlflow-pgmodels du --json``
  as a command (start-up included).
* prune: ``--keep-last 9`` deletes version 1 of every model (archived, unprotected): the plan
  (a dry run) and the real run, one transaction per model through the registry store.
* VACUUM: 200 versions of 1 MiB each (out-of-line, uncompressed, as the store writes them), half
  pruned, then plain VACUUM, then 100 new versions, then those pruned and VACUUM FULL: the TOAST
  table's and the database's size at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("MLFLOW_PGMODELS_PROGRESS", "0")

from benchmarks import scale  # noqa: E402
from benchmarks.bench import remove_tree, start_postgres  # noqa: E402

_TOAST_SIZE = ("SELECT pg_relation_size(reltoastrelid), pg_total_relation_size('models'),"
               " pg_database_size(current_database()) FROM pg_class WHERE oid = 'models'::regclass")


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def du_and_prune(server, models: int) -> dict:
    from mlflow_pgmodels._lifecycle import prune
    from mlflow_pgmodels._lifecycle import space
    from mlflow_pgmodels._pg.schema import ensure_schema

    server.psql("CREATE DATABASE lifecycle")
    uri = server.socket_uri("lifecycle")
    ensure_schema(uri)
    scale._fill(uri, scale._OURS, models)
    usage = space.usage(uri)  # warm
    assert sum(len(m.versions) for m in usage.models) == models * scale.VERSIONS
    samples = [_timed(lambda: space.usage(uri))[0] for _ in range(5)]
    command, _ = _timed(lambda: subprocess.run(
        [sys.executable, "-m", "mlflow_pgmodels.cli", "du", "--json", "--uri", uri],
        check=True, capture_output=True))
    rules = prune.Rules(keep_last=scale.VERSIONS - 1)
    plan_s, planned = _timed(lambda: prune.plan(uri, rules))
    assert planned.count() == models
    execute_s, outcome = _timed(lambda: prune.execute(uri, planned))
    assert sum(len(v) for v in outcome.deleted.values()) == models and not outcome.failed
    return {"models": models, "versions": models * scale.VERSIONS, "du_median_s": statistics.median(samples),
            "du_min_s": min(samples), "du_max_s": max(samples), "du_command_s": command,
            "prune_versions": models, "prune_plan_s": plan_s, "prune_execute_s": execute_s}


def vacuum(server, versions: int) -> dict:
    import psycopg

    from mlflow_pgmodels._lifecycle import prune
    from mlflow_pgmodels._pg.schema import ensure_schema

    server.psql("CREATE DATABASE vacuum")
    uri = server.socket_uri("vacuum")
    ensure_schema(uri)
    insert = ("INSERT INTO models (name, version, model_type, event, model_binary, format, size_bytes)"
              " SELECT 'vac', v, 'regression', 'default', convert_to(repeat(md5(v::text), 32768), 'UTF8'),"
              " 'mlflow-zip', 1048576 FROM generate_series(%s::int, %s::int) v")
    steps = {}
    with psycopg.connect(server.socket_uri("vacuum", scheme="postgresql"), autocommit=True) as conn:
        conn.execute(insert, (1, versions))
        conn.execute("UPDATE models SET is_active = false WHERE version <= %s", (versions // 2,))
        conn.execute("VACUUM models")
        steps["filled"] = conn.execute(_TOAST_SIZE).fetchone()
        planned = prune.plan(uri, prune.Rules(archived_only=True))
        prune.execute(uri, planned)
        steps["pruned"] = conn.execute(_TOAST_SIZE).fetchone()
        conn.execute("VACUUM models")
        steps["vacuumed"] = conn.execute(_TOAST_SIZE).fetchone()
        conn.execute(insert, (versions + 1, versions + versions // 2))
        steps["refilled"] = conn.execute(_TOAST_SIZE).fetchone()
        conn.execute("UPDATE models SET is_active = false WHERE version > %s", (versions,))
        prune.execute(uri, prune.plan(uri, prune.Rules(archived_only=True)))
        conn.execute("VACUUM FULL models")
        steps["pruned_again_vacuum_full"] = conn.execute(_TOAST_SIZE).fetchone()
    return {"versions": versions, "pruned": planned.count(), "freed_bytes": planned.freed_bytes,
            "steps": {k: dict(zip(("toast", "models_total", "database"), v)) for k, v in steps.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "lifecycle.json"))
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pgmodels-lifecycle-"))
    server = start_postgres(base)
    try:
        results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                   "du_prune": du_and_prune(server, 1_000 if args.quick else 10_000),
                   "vacuum": vacuum(server, 40 if args.quick else 200)}
    finally:
        server.stop("immediate")
        remove_tree(base)
    print(json.dumps(results, indent=2))
    if not args.quick:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
