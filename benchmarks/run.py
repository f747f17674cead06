"""This store against stock MLflow (sqlite registry + local file artifacts), side by side.

    python benchmarks/run.py            # full run (~3 minutes on 2 CPUs): tiny, ~100 MB and 512 MB models
    python benchmarks/run.py --quick    # smoke run (~1 minute): tiny and ~10 MB models, a small registry
    python benchmarks/run.py --scale    # only the registry at scale (issue 13, ~3 minutes): 10,000 models
    python benchmarks/run.py --serving  # only 32 remote clients loading one version through `mlflow server` (issue 13)
    python benchmarks/run.py --registration  # only 1,000 versions registered in a row against stock on PostgreSQL (~2 minutes)
    python benchmarks/run.py --once     # only bytes travel once (issue 11, ~2 minutes): wire bytes, log + register
    python benchmarks/run.py --once --huge-gb 1.1   # and a 1.1 GiB model, log + load in new processes (~5 minutes)

Starts its own embedded PostgreSQL in a temporary directory (unix socket), builds the models once,
measures both stores in this one run, prints a table (median, min–max, ratio, goal) and writes
benchmarks/results/latest.json (``--quick``: quick.json, ``--scale``: scale.json, ``--serving``:
serving.json, ``--once`` / ``--huge-gb``: once.json, ``--registration``: registration.json); a full,
``--scale``, ``--serving``, ``--once`` or ``--registration`` run also puts its table in docs/performance.md. Issues 5 and 13 list the goals;
docs/performance.md explains the results.

One module per measurement family: registration (writes; ``--registration``: many versions in a
row against stock MLflow on PostgreSQL), loading (reads), metadata (registry
queries), scale (the Models list and version searches at 10,000 models against stock MLflow on
PostgreSQL: ``--scale``, and in the smoke run at small counts), serving (remote clients through
`mlflow server`: ``--serving`` only), huge (the 512 MB model), once (bytes on the wire and the
in-database zip assembly: ``--once``; wire.py counts the bytes) and huge_gb (a model past 1 GB:
``--huge-gb``); bench,
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
from benchmarks.huge_gb import huge_gb  # noqa: E402
from benchmarks.metadata import metadata  # noqa: E402
from benchmarks.models import forest, same_predictions, tiny_model  # noqa: E402
from benchmarks.once import once  # noqa: E402
from benchmarks.report import save, table, update_docs  # noqa: E402
from benchmarks.scale import scale  # noqa: E402
from benchmarks.serving import serving  # noqa: E402


def measure(bench: Bench, with_scale: bool, in_a_row: bool = False) -> None:
    """Every measurement, in the order of the table (``with_scale``: the registry at scale too;
    ``in_a_row``: a few versions registered in a row against stock MLflow on PostgreSQL)."""
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
    if in_a_row:
        bench.phase("versions in a row")
        registration.many_versions(bench, full=False)
    if plan.huge_mb:
        del big
        bench.phase("huge model")
        huge(bench, plan.huge_mb)
    bench.phase("")


def measure_once(bench: Bench, with_once: bool, huge_gib: float | None) -> None:
    """Issue 11: bytes travel once (``with_once``) and a model of ``huge_gib`` GiB."""
    if with_once:
        bench.phase("train forest")
        big, _ = forest(bench.plan.big_mb)
        bench.phase("bytes travel once")
        once(bench, big, f"{bench.plan.big_mb} MB")
        del big
    if huge_gib:
        bench.phase(f"{huge_gib:g} GiB model")
        huge_gb(bench, huge_gib)
    bench.phase("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument("--scale", action="store_true", help="only the registry at scale (issue 13)")
    parser.add_argument("--serving", action="store_true",
                        help="only remote clients loading one version through `mlflow server` (issue 13)")
    parser.add_argument("--once", action="store_true",
                        help="only bytes travel once: wire bytes, log + register against stock + COPY (issue 11)")
    parser.add_argument("--registration", action="store_true",
                        help="only versions registered one after another, against stock MLflow on PostgreSQL")
    parser.add_argument("--huge-gb", type=float, metavar="GIB",
                        help="only (or with --once) a model of GIB GiB: log + register and load, time and memory")
    parser.add_argument("--out", help="results file (default benchmarks/results/latest.json, quick: quick.json,"
                                      " scale: scale.json, both: scale-quick.json, serving: serving.json, once: once.json,"
                                      " registration: registration.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    section = ("once" if args.once or args.huge_gb else "serving" if args.serving else "scale" if args.scale
               else "registration" if args.registration else "full")  # which table in docs/performance.md
    mode = f"{'quick' if section == 'full' else section + '-quick'}" if args.quick else section
    out = args.out or str(HERE / "results" / f"{'latest' if mode == 'full' else mode}.json")
    base = Path(tempfile.mkdtemp(prefix="pgmodels-bench-"))
    bench = Bench(plan, base)
    started = time.time()
    print(table([]), flush=True)
    try:
        bench.phase("setup")
        bench.setup()
        if section == "once":
            measure_once(bench, args.once, args.huge_gb)
        elif args.serving:
            serving(bench)
        elif args.registration:
            registration.many_versions(bench, full=not args.quick)
        elif args.scale:
            scale(bench)
        else:
            measure(bench, with_scale=args.quick, in_a_row=args.quick)
    finally:
        bench.teardown()
        remove_tree(base)
    minutes = (time.time() - started) / 60
    flags = "".join(f" --{flag}" for flag in ("quick", "scale", "serving", "registration", "once")
                    if getattr(args, flag))
    flags += f" --huge-gb {args.huge_gb:g}" if args.huge_gb else ""
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
