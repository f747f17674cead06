"""This store against stock MLflow (sqlite registry + local file artifacts), side by side.

    python benchmarks/run.py            # full run (~3 minutes on 2 CPUs): tiny, ~100 MB and 512 MB models
    python benchmarks/run.py --quick    # smoke run (~1 minute): tiny and ~10 MB models

Starts its own embedded PostgreSQL in a temporary directory (unix socket), builds the models once,
measures both stores in this one run, prints a table (median, min–max, ratio, goal) and writes
benchmarks/results/latest.json (``--quick``: quick.json); a full run also puts the table in
docs/performance.md. Issue 5 lists the goals; docs/performance.md explains the results.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_PGMODELS_PROGRESS", "0")

from benchmarks.report import Row, Stat, save, table, update_docs  # noqa: E402

MiB = 2**20


@dataclass(frozen=True)
class Plan:
    big_mb: int                  # the RandomForest
    huge_mb: int | None          # the 512 MB model (None: skipped)
    versions: tuple[int, int]    # registry sizes for the metadata queries
    repeats: int                 # samples of the slow measurements
    loads: int                   # samples of the repeated load
    meta_repeats: int            # samples of each metadata query
    concurrent: int              # processes loading one new version at once
    lone: int                    # samples of a lone load in a new process
    cached_memory: bool          # also measure the memory of a load from the cache
    stock_concurrent: bool       # also measure stock MLflow under the same concurrency


FULL = Plan(big_mb=100, huge_mb=512, versions=(1000, 10000), repeats=3, loads=10, meta_repeats=10,
            concurrent=8, lone=2, cached_memory=True, stock_concurrent=True)
QUICK = Plan(big_mb=10, huge_mb=None, versions=(100, 1000), repeats=2, loads=5, meta_repeats=3,
             concurrent=3, lone=1, cached_memory=False, stock_concurrent=False)


# --------------------------------------------------------------------------- the two stores
@dataclass
class Side:
    """One store under test: its URIs and its working directory (where ./mlruns goes)."""

    name: str
    uri: str
    workdir: Path

    def activate(self) -> None:
        import mlflow

        os.chdir(self.workdir)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)


def start_postgres(base: Path):
    from mlflow_pgmodels.embedded import EmbeddedPostgres

    os.chmod(base, 0o755)
    server = EmbeddedPostgres(base / "pgdata")
    server.init()
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
    server.start()
    server.psql("CREATE DATABASE bench")
    server.psql("CREATE EXTENSION pg_stat_statements", "bench")
    return server


# --------------------------------------------------------------------------- models
def tiny_model():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).random((40, 3))
    return LogisticRegression().fit(X, (X[:, 0] > 0.5).astype(int)), X[:2]


def forest(target_mb: int):
    """A RandomForest whose pickle is about ``target_mb`` MB (~1.74 MB per tree on 20k rows)."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    X, y = rng.random((20_000, 8)), rng.random(20_000)
    trees = max(1, round(target_mb / 1.74))
    return RandomForestRegressor(n_estimators=trees, max_features=0.5, n_jobs=2, random_state=0).fit(X, y), X[:2]


def huge_model(target_mb: int):
    """A nearest-neighbours classifier that keeps ``target_mb`` MiB of (incompressible) training data."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    rows = target_mb * MiB // (64 * 8)
    X = np.random.default_rng(0).random((rows, 64))
    return KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(X, np.arange(rows) % 2), X[:1].copy()


def log_model(model, name: str) -> str:
    import mlflow

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    return str(info.registered_model_version)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- database helpers
def conninfo(uri: str) -> str:
    from mlflow_pgmodels.uri import to_conninfo

    return to_conninfo(uri)


def toast_blocks(uri: str) -> int:
    """TOAST blocks of ``models`` read so far (``model_binary`` lives there): a real measure of blob reads.

    Statistics reach pg_statio when a backend exits, so the plugin's pooled connections are closed first.
    """
    import psycopg

    from mlflow_pgmodels import db

    for pool in list(db._pools.values()):
        pool.discard_idle()
    with psycopg.connect(conninfo(uri), autocommit=True, application_name="pgmodels-bench") as conn:
        for _ in range(500):
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                " AND application_name = 'mlflow-pgmodels'").fetchone()[0]
            if not busy:
                break
            time.sleep(0.01)
        # a backend leaves pg_stat_activity just before it reports: wait until the count settles
        seen = []
        while len(seen) < 3 or len(set(seen[-3:])) > 1:
            time.sleep(0.05)
            seen.append(conn.execute("SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)"
                                     " FROM pg_statio_all_tables WHERE relname = 'models'").fetchone()[0])
        return seen[-1]


def chunk_reads(conn) -> int:
    """How many chunk reads of ``model_binary`` (blobs.read_blob's query) the server has run so far.

    pg_stat_statements counts each statement when it ends, in shared memory: exact, no delay.
    """
    return int(conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                            " WHERE query LIKE 'SELECT substring(model_binary FROM%'").fetchone()[0])


def raw_fetch(conn, name: str, version: str) -> bytes:
    """The whole model_binary in one binary-format fetch: the fastest read PostgreSQL offers."""
    return conn.cursor(binary=True).execute(
        "SELECT model_binary FROM models WHERE name = %s AND version = %s", (name, int(version))).fetchone()[0]


def raw_fetch_unzip(conn, name: str, version: str, dst: Path) -> None:
    zipfile.ZipFile(io.BytesIO(raw_fetch(conn, name, version))).extractall(dst)


def plain_copy(conn, path: str) -> None:
    """The bytes of ``path`` into a one-column table by binary COPY in 8 MiB slices."""
    size = os.path.getsize(path)
    with conn.transaction(), conn.cursor().copy("COPY bench_copy (b) FROM STDIN (FORMAT BINARY)") as copy, \
            open(path, "rb") as f:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!iih", 0, 0, 1) + struct.pack("!i", size))
        while chunk := f.read(8 * MiB):
            copy.write(chunk)
        copy.write(struct.pack("!h", -1))


def bulk_versions_pg(uri: str, name: str, upto: int) -> None:
    """Copy version 1 of ``name`` (a tiny model) into versions 2..``upto`` with one INSERT."""
    import psycopg

    with psycopg.connect(conninfo(uri), autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'models'"
            " AND column_name NOT IN ('id', 'version') ORDER BY ordinal_position")]
        have = conn.execute("SELECT max(version) FROM models WHERE name = %s", (name,)).fetchone()[0]
        listed = ", ".join(cols)
        # no autovacuum pass over the new rows' TOAST while the metadata queries are being measured
        conn.execute("ALTER TABLE models SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
        conn.execute(f"INSERT INTO models ({listed}, version) SELECT {listed}, g FROM models,"
                     " generate_series(%s::int, %s::int) g WHERE name = %s AND version = 1", (have + 1, upto, name))
        conn.execute("VACUUM ANALYZE models")


def bulk_versions_sqlite(db_path: Path, name: str, upto: int) -> None:
    with sqlite3.connect(db_path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(model_versions)") if r[1] != "version"]
        have = conn.execute("SELECT max(version) FROM model_versions WHERE name = ?", (name,)).fetchone()[0]
        listed = ", ".join(cols)
        conn.execute(f"WITH RECURSIVE g(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM g WHERE v < ?)"
                     f" INSERT INTO model_versions ({listed}, version) SELECT {listed}, g.v FROM model_versions, g"
                     " WHERE name = ? AND version = 1", (have + 1, upto, name))


# --------------------------------------------------------------------------- child processes
def child(side: Side, model_uri: str, go_file: str | None = None) -> subprocess.Popen:
    args = [sys.executable, str(HERE / "child.py"), "--tracking-uri", side.uri, "--registry-uri", side.uri,
            "--model-uri", model_uri, "--warm-uri", "models:/warmup/1"]
    if go_file:
        args += ["--go-file", go_file]
    return subprocess.Popen(args, cwd=side.workdir, stdout=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen) -> dict:
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


# --------------------------------------------------------------------------- the measurements
class Bench:
    def __init__(self, plan: Plan, base: Path) -> None:
        self.plan, self.base = plan, base
        self.rows: list[Row] = []
        self.facts: dict = {}

    def phase(self, what: str) -> None:
        now = time.perf_counter()
        if getattr(self, "_phase", None):
            print(f"  [{self._phase[0]}: {now - self._phase[1]:.1f} s]", file=sys.stderr, flush=True)
        self._phase = (what, now)

    def row(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        return row

    def setup(self) -> None:
        (self.base / "cache").mkdir()
        os.environ["MLFLOW_PGMODELS_CACHE_DIR"] = str(self.base / "cache")
        self.server = start_postgres(self.base)
        for d in ("ours", "stock", "scratch"):
            (self.base / d).mkdir()
        self.ours = Side("pgmodels", self.server.socket_uri("bench"), self.base / "ours")
        self.stock_db = self.base / "stock" / "mlflow.db"
        self.stock = Side("stock", f"sqlite:///{self.stock_db}", self.base / "stock")
        tiny, _ = tiny_model()
        for side in (self.ours, self.stock):  # tables, imports and caches: before anything is timed
            side.activate()
            log_model(tiny, "warmup")
        import psycopg

        self.pg = psycopg.connect(conninfo(self.ours.uri), autocommit=True)
        self.pg.execute("CREATE TABLE bench_copy (b bytea)")
        self.pg.execute("ALTER TABLE bench_copy ALTER COLUMN b SET STORAGE EXTERNAL")

    def teardown(self) -> None:
        os.chdir(self.base.parent)
        if getattr(self, "pg", None):
            self.pg.close()
        if getattr(self, "server", None):
            self.server.stop("immediate")

    def blob_mib(self, name: str, version: str) -> float:
        return self.pg.execute("SELECT size_bytes FROM models WHERE name = %s AND version = %s",
                               (name, int(version))).fetchone()[0] / MiB

    # ------------------------------------------------------------------ writes
    def log_and_register(self, model, name: str, size: str) -> dict[str, list[str]]:
        versions: dict[str, list[str]] = {"pgmodels": [], "stock": []}
        samples: dict[str, list[float]] = {"pgmodels": [], "stock": []}
        repeats = self.plan.repeats if size != "512 MB" else 1
        for _ in range(repeats):
            for side in (self.stock, self.ours):  # alternate, so drift hits both alike
                side.activate()
                start = time.perf_counter()
                versions[side.name].append(log_model(model, name))
                samples[side.name].append(time.perf_counter() - start)
        self.row(f"`log_model(..., registered_model_name=)`, {size}", Stat(samples["pgmodels"]),
                 Stat(samples["stock"], label="stock"), 1.2 if size != "512 MB" else None)
        return versions

    def database_part(self, model, size: str) -> None:
        """The register step alone (version number + COPY + digest) against a plain COPY of the same zip."""
        import mlflow

        from mlflow_pgmodels import archive
        from mlflow_pgmodels.registry_store import PgModelsRegistryStore

        saved = self.base / "scratch" / "saved"
        mlflow.sklearn.save_model(model, saved, serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        store = PgModelsRegistryStore(self.ours.uri)
        store.create_registered_model("dbpart")
        ours, copy, pack = [], [], []
        for _ in range(self.plan.repeats):
            start = time.perf_counter()
            with archive.pack(str(saved)) as packed:
                pack.append(time.perf_counter() - start)
                row = {"name": "dbpart", "description": None, "source": "bench", "run_id": None,
                       "run_link": None, "model_id": None}
                ours.append(timed(store._insert_version, row, {}, packed))
                packed.seek(0)
                zip_path = self.base / "scratch" / "model.zip"
                with open(zip_path, "wb") as f:
                    shutil.copyfileobj(packed, f, 8 * MiB)
            copy.append(timed(plain_copy, self.pg, str(zip_path)))
            self.pg.execute("TRUNCATE bench_copy")
        self.row(f"register, database part, {size}", Stat(ours), Stat(copy, label="plain COPY"), 1.2)
        self.row(f"register, packing the zip, {size}", Stat(pack), None, None)
        shutil.rmtree(saved)

    # ------------------------------------------------------------------ reads
    def repeated_load(self, size: str) -> None:
        import mlflow

        samples = {}
        for side in (self.stock, self.ours):
            side.activate()
            mlflow.pyfunc.load_model("models:/m/latest")  # warm: ours fills the cache here
            samples[side.name] = [timed(mlflow.pyfunc.load_model, "models:/m/latest") for _ in range(self.plan.loads)]
        self.row(f'repeated `load_model("models:/m/latest")` in one process, {size}', Stat(samples["pgmodels"]),
                 Stat(samples["stock"], label="stock"), 1.1)

    def first_load(self, name: str, version: str, size: str) -> None:
        import mlflow

        from mlflow_pgmodels import cache

        self.ours.activate()
        fetch, load, raw, raw_load = [], [], [], []
        repeats = self.plan.repeats + 2 if size != "512 MB" else 1

        def settled(remove) -> None:
            remove()
            os.sync()  # deleting 100s of MB costs disk time later: not in the next sample

        for i in range(repeats):
            dst = self.base / "scratch" / f"raw{i}"
            settled(cache.clear)
            fetch.append(timed(mlflow.artifacts.download_artifacts, f"models:/{name}/{version}"))
            settled(cache.clear)
            raw.append(timed(raw_fetch_unzip, self.pg, name, version, dst))
            settled(lambda: shutil.rmtree(dst))
            if size != "512 MB":
                load.append(timed(mlflow.pyfunc.load_model, f"models:/{name}/{version}"))
                start = time.perf_counter()
                raw_fetch_unzip(self.pg, name, version, dst)
                mlflow.pyfunc.load_model(str(dst))
                raw_load.append(time.perf_counter() - start)
                settled(lambda: shutil.rmtree(dst))
        self.row(f"first load, empty cache, {size}: download into the cache", Stat(fetch),
                 Stat(raw, label="raw fetch + unzip"), 1.3)
        if load:
            self.row(f"first load, empty cache, {size}: whole `load_model`", Stat(load),
                     Stat(raw_load, label="raw fetch + unzip + load"), 1.3)

    def memory(self, name: str, version: str, stock_version: str, size: str) -> None:
        """Peak RSS during a load beyond what the loaded model itself occupies, against the blob size."""
        from mlflow_pgmodels import cache

        blob = self.blob_mib(name, version)
        cache.clear()
        procs = [child(self.stock, f"models:/{name}/{stock_version}"), child(self.ours, f"models:/{name}/{version}")]
        stock, first = (child_result(p) for p in procs)  # side by side: memory is per process
        model_mib = (stock["rss_after"] - stock["rss_before"]) / MiB
        cached = load_in_child(self.ours, f"models:/{name}/{version}") if self.plan.cached_memory else None

        def extra(r: dict) -> float:
            return max(0.0, (r["rss_peak"] - r["rss_before"]) / MiB - model_mib)

        self.facts[f"memory {size}"] = {"blob_mib": blob, "model_mib": model_mib, "stock": stock,
                                        "first": first, "cached": cached}
        self.row(f"client peak memory beyond the loaded model, first load, {size}",
                 Stat([extra(first)], unit="MiB"), Stat([blob], unit="MiB", label="blob"), 1.5,
                 note=f"stock: {extra(stock):.0f} MiB")
        if cached and size != "512 MB":
            self.row(f"client peak memory beyond the loaded model, cached load, {size}",
                     Stat([extra(cached)], unit="MiB"), Stat([blob], unit="MiB", label="blob"), 1.5)

    def concurrent(self, size: str, versions: list[str], stock_versions: list[str]) -> None:
        """N processes load one new version at once; each against a lone load of a new version."""
        import mlflow

        from mlflow_pgmodels import cache

        n = self.plan.concurrent
        self.ours.activate()
        client = mlflow.MlflowClient()
        lone_v, together_v, probe_v = ([client.copy_model_version(f"models:/m/{versions[-1]}", "m").version
                                        for _ in range(k)] for k in (self.plan.lone, 1, 1))
        lone = [load_in_child(self.ours, f"models:/m/{v}")["seconds"] for v in lone_v]
        before = chunk_reads(self.pg)
        results = load_together(self.ours, f"models:/m/{together_v[0]}", n, self.base)
        after = chunk_reads(self.pg)
        mlflow.pyfunc.load_model(f"models:/m/{probe_v[0]}")  # one read of the same bytes, for scale
        reads = (after - before) / (chunk_reads(self.pg) - after)
        entries = [e for e in cache.entries() if e.name == "m" and e.version == int(together_v[0])]
        leftovers = [p for p in Path(cache.root(), "m").iterdir() if ".fill-" in p.name or ".deleting" in p.name]
        together = [r["seconds"] for r in results]
        self.facts["concurrent"] = {"lone": lone, "together": together, "blob_reads": reads,
                                    "entries": len(entries), "leftovers": len(leftovers)}
        self.row(f"{n} processes load one new version at once, {size}: slowest", Stat([max(together)]),
                 Stat(lone, label="lone first load"), 1.5, note=f"median {statistics.median(together):.3f} s")
        self.row(f"{n} processes at once: times the blob was read from the database", Stat([round(reads, 2)], unit=""),
                 None, None, note=f"{len(entries)} cache entry, {len(leftovers)} leftovers; goal: 1")
        if self.plan.stock_concurrent:
            lone_s = [load_in_child(self.stock, f"models:/m/{stock_versions[-1]}")["seconds"]
                      for _ in range(self.plan.lone)]
            together_s = [r["seconds"] for r in load_together(self.stock, f"models:/m/{stock_versions[-1]}", n, self.base)]
            self.row(f"stock MLflow, {n} processes at once (for comparison): slowest", Stat([max(together_s)]),
                     Stat(lone_s, label="stock lone load"), None)

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> None:
        import mlflow
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        tiny, _ = tiny_model()
        for side in (self.stock, self.ours):
            side.activate()
            log_model(tiny, "meta")
        toast_read = 0
        latest_by_size = {}
        for n in self.plan.versions:
            bulk_versions_sqlite(self.stock_db, "meta", n)
            bulk_versions_pg(self.ours.uri, "meta", n)  # copies blobs: not counted below
            toast_before = toast_blocks(self.ours.uri)
            got = {}
            for side in (self.stock, self.ours):
                side.activate()
                client = mlflow.MlflowClient()
                assert len(client.search_model_versions("name='meta'")) == n, side.name
                ModelsArtifactRepository("models:/meta/latest")  # warm
                got[side.name] = {
                    "latest": [timed(ModelsArtifactRepository, "models:/meta/latest") for _ in range(self.plan.meta_repeats)],
                    "glv": [timed(client.get_latest_versions, "meta") for _ in range(self.plan.meta_repeats)],
                    "search": [timed(client.search_model_versions, "name='meta'")
                               for _ in range(max(3, self.plan.meta_repeats // 3))],
                }
            toast_read += toast_blocks(self.ours.uri) - toast_before
            latest_by_size[n] = got["pgmodels"]["latest"]
            for key, what, goal in (("latest", 'resolve "models:/meta/latest"', 0.5),
                                    ("glv", "`get_latest_versions`", 0.5),
                                    ("search", "`search_model_versions(\"name='meta'\")`", 1.0)):
                self.row(f"{what}, {n:,} versions", Stat(got["pgmodels"][key]),
                         Stat(got["stock"][key], label="stock"), goal)
        small, large = self.plan.versions
        self.row(f"resolve latest: {large:,} versions against {small:,} (flat)", Stat(latest_by_size[large]),
                 Stat(latest_by_size[small], label=f"{small:,} versions"), 1.2)
        self.row("TOAST blocks of `model_binary` read by all the metadata queries above",
                 Stat([toast_read], unit=""), None, None, note="goal: 0")

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        import mlflow

        plan = self.plan
        self.phase("log tiny")
        tiny, _ = tiny_model()
        self.log_and_register(tiny, "tiny", "tiny model")
        self.phase("train forest")
        big, big_x = forest(plan.big_mb)
        size = f"{plan.big_mb} MB"
        self.phase("log forest")
        versions = self.log_and_register(big, "m", size)
        self.facts["blob_mib"] = self.blob_mib("m", versions["pgmodels"][-1])
        self.phase("database part")
        self.database_part(big, size)
        self.phase("repeated load")
        self.repeated_load(size)
        self.ours.activate()
        assert (mlflow.pyfunc.load_model("models:/m/latest").predict(big_x) == big.predict(big_x)).all()
        self.phase("first load")
        self.first_load("m", versions["pgmodels"][-1], size)
        self.phase("memory")
        self.memory("m", versions["pgmodels"][-1], versions["stock"][-1], size)
        self.phase("concurrent")
        self.concurrent(size, versions["pgmodels"], versions["stock"])
        self.phase("metadata")
        self.metadata()
        if plan.huge_mb:
            del big
            self.phase("huge model")
            huge, huge_x = huge_model(plan.huge_mb)
            size = f"{plan.huge_mb} MB"
            hv = self.log_and_register(huge, "huge", size)
            self.facts["huge_blob_mib"] = self.blob_mib("huge", hv["pgmodels"][-1])
            del huge
            self.first_load("huge", hv["pgmodels"][-1], size)
            self.memory("huge", hv["pgmodels"][-1], hv["stock"][-1], size)
            self.ours.activate()
            loaded = mlflow.pyfunc.load_model(f"models:/huge/{hv['pgmodels'][-1]}")
            self.row(f"{size} model: register + load + predict work", Stat([1], unit=""), None, None,
                     note=f"blob {self.facts['huge_blob_mib']:.0f} MiB, prediction {loaded.predict(huge_x)[0]}")
        self.phase("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument("--out", help="results file (default benchmarks/results/latest.json, quick: quick.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or str(HERE / "results" / ("quick.json" if args.quick else "latest.json"))
    base = Path(tempfile.mkdtemp(prefix="pgmodels-bench-"))
    bench = Bench(plan, base)
    started = time.time()
    print(table([]), flush=True)
    try:
        bench.phase("setup")
        bench.setup()
        bench.run()
    finally:
        bench.teardown()
        shutil.rmtree(base, ignore_errors=True)
    minutes = (time.time() - started) / 60
    header = (f"`python benchmarks/run.py{' --quick' if args.quick else ''}`, "
              f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {minutes:.1f} min; "
              f"medians (min–max); ratio = pgmodels / baseline.")
    print("\n" + header + "\n\n" + table(bench.rows))
    save(bench.rows, out, "quick" if args.quick else "full", {"header": header, "facts": bench.facts})
    print(f"\nresults: {out}")
    if not args.quick and not args.no_docs:
        update_docs(str(ROOT / "docs" / "performance.md"), bench.rows, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
