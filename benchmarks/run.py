"""This store against stock MLflow (sqlite registry + local file artifacts), side by side.

    python benchmarks/run.py            # full run (~3 minutes on 2 CPUs): tiny, ~100 MB and 512 MB models
    python benchmarks/run.py --quick    # smoke run (~1 minute): tiny and ~10 MB models, a small registry
    python benchmarks/run.py --scale    # only the registry at scale (issue 13, ~3 minutes): 10,000 models
    python benchmarks/run.py --serving  # only 32 remote clients loading one version through `mlflow server` (issue 13)

Starts its own embedded PostgreSQL in a temporary directory (unix socket), builds the models once,
measures both stores in this one run, prints a table (median, min–max, ratio, goal) and writes
benchmarks/results/latest.json (``--quick``: quick.json, ``--scale``: scale.json, ``--serving``:
serving.json); a full, ``--scale`` or ``--serving`` run also puts its table in docs/performance.md. Issues 5 and 13 list the goals;
docs/performance.md explains the results.

One module per measurement family: registration (writes), loading (reads), metadata (registry
queries), scale (the Models list and version searches at 10,000 models against stock MLflow on
PostgreSQL: ``--scale``, and in the smoke run at small counts), serving (remote clients through
`mlflow server`: ``--serving`` only), huge (the 512 MB model); bench,
models, database and processes are what they share.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_PGMODELS_PROGRESS", "0")

from benchmarks import database, loading, registration  # noqa: E402
from benchmarks.bench import FULL, QUICK, Bench, remove_tree  # noqa: E402
from benchmarks.huge import huge  # noqa: E402
from benchmarks.metadata import metadata  # noqa: E402
from benchmarks.models import forest, same_predictions, tiny_model  # noqa: E402
from benchmarks.report import save, table, update_docs  # noqa: E402
from benchmarks.scale import scale  # noqa: E402
from benchmarks.serving import serving  # noqa: E402


def measure(bench: Bench, with_scale: bool) -> None:
    """Every measurement, in the order of the table (``with_scale``: the registry at scale too)."""
    import mlflow

    plan = bench.plan
    bench.phase("log tiny")
    tiny, _ = tiny_model()
    registration.log_and_register(bench, tiny, "tiny", "tiny model")
    bench.phase("train forest")
    big, big_x = forest(plan.big_mb)
    size = f"{plan.big_mb} MB"
    bench.phase("log forest")
    versions = registration.log_and_register(bench, big, "m", size)
    bench.facts["blob_mib"] = database.blob_mib(bench.pg, "m", versions["pgmodels"][-1])
    bench.phase("database part")
    registration.database_part(bench, big, size)
    bench.phase("repeated load")
    loading.repeated_load(bench, size)
    bench.ours.activate()
    assert same_predictions(mlflow.pyfunc.load_model("models:/m/latest").get_raw_model(), big, big_x)
    bench.phase("first load")
    loading.first_load(bench, "m", versions["pgmodels"][-1], size)
    bench.phase("memory")
    loading.memory(bench, "m", versions["pgmodels"][-1], versions["stock"][-1], size)
    bench.phase("concurrent")
    loading.concurrent(bench, size, versions["pgmodels"], versions["stock"])
    bench.phase("metadata")
    metadata(bench)
    if with_scale:
        bench.phase("scale")
        scale(bench)
    if plan.huge_mb:
        del big
        bench.phase("huge model")
        huge(bench, plan.huge_mb)
    bench.phase("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument("--scale", action="store_true", help="only the registry at scale (issue 13)")
    parser.add_argument("--serving", action="store_true",
                        help="only remote clients loading one version through `mlflow server` (issue 13)")
    parser.add_argument("--out", help="results file (default benchmarks/results/latest.json, quick: quick.json,"
                                      " scale: scale.json, both: scale-quick.json, serving: serving.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    section = "serving" if args.serving else "scale" if args.scale else "full"  # which table in docs/performance.md
    mode = {"full": "quick", "scale": "scale-quick", "serving": "serving-quick"}[section] if args.quick else section
    out = args.out or str(HERE / "results" / f"{'latest' if mode == 'full' else mode}.json")
    base = Path(tempfile.mkdtemp(prefix="pgmodels-bench-"))
    bench = Bench(plan, base)
    started = time.time()
    print(table([]), flush=True)
    try:
        bench.phase("setup")
        bench.setup()
        if args.serving:
            serving(bench)
        elif args.scale:
            scale(bench)
        else:
            measure(bench, with_scale=args.quick)
    finally:
        bench.teardown()
        remove_tree(base)
    minutes = (time.time() - started) / 60
    flags = "".join(f" --{flag}" for flag in ("quick", "scale", "serving") if getattr(args, flag))
    header = (f"`python benchmarks/run.py{flags}`, "
              f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {minutes:.1f} min; "
              f"medians (min–max); ratio = pgmodels / baseline.")
    print("\n" + header + "\n\n" + table(bench.rows))
    save(bench.rows, out, mode, {"header": header, "facts": bench.facts})
    print(f"\nresults: {out}")
    if not args.quick and not args.no_docs:
        update_docs(str(ROOT / "docs" / "performance.md"), bench.rows, header, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
