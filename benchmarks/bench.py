"""What every measurement shares: the plan, the two stores side by side, and the rows measured so far."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import database
from benchmarks.models import log_model, tiny_model
from benchmarks.report import Row, table


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


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it, read-only cache entries too."""
    for top, _, _ in os.walk(path):
        os.chmod(top, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def start_postgres(base: Path):
    """An embedded PostgreSQL under ``base`` with a ``bench`` database and the statistics extensions."""
    from mlflow_pgmodels._pg.embedded import EmbeddedPostgres

    os.chmod(base, 0o755)
    server = EmbeddedPostgres(base / "pgdata", durable=False)  # no fsync: like stock MLflow's files in the page cache
    server.init()
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
    server.start()
    server.psql("CREATE DATABASE bench")
    server.psql("CREATE EXTENSION pg_stat_statements", "bench")
    server.psql("CREATE EXTENSION pg_buffercache", "bench")
    return server


class Bench:
    """One run: the embedded PostgreSQL, both sides (``ours``, ``stock``), a connection for direct SQL
    (``pg``), and the rows and facts measured so far."""

    def __init__(self, plan: Plan, base: Path) -> None:
        self.plan, self.base = plan, base
        self.rows: list[Row] = []
        self.facts: dict = {}
        self._phase: tuple[str, float] | None = None
        self._caches = 0

    def setup(self) -> None:
        self.empty_cache()
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

        self.pg = psycopg.connect(database.conninfo(self.ours.uri), autocommit=True)

    def teardown(self) -> None:
        os.chdir(self.base.parent)
        if getattr(self, "pg", None):
            self.pg.close()
        if getattr(self, "server", None):
            self.server.stop("immediate")

    def empty_cache(self) -> None:
        """Point this process and the children it starts next at a new, empty model cache; drop the last one.

        Not ``cache clear``: that keeps the entries a live process (this one) is using.
        """
        old = self.base / f"cache{self._caches}"  # never the user's own cache: only ours
        self._caches += 1
        os.environ["MLFLOW_PGMODELS_CACHE_DIR"] = str(self.base / f"cache{self._caches}")
        remove_tree(old)

    def phase(self, what: str) -> None:
        """Report on stderr how long the previous phase took; ``what`` starts now."""
        now = time.perf_counter()
        if self._phase and self._phase[0]:
            print(f"  [{self._phase[0]}: {now - self._phase[1]:.1f} s]", file=sys.stderr, flush=True)
        self._phase = (what, now)

    def row(self, *args: Any, **kwargs: Any) -> Row:
        """Add a row to the results (arguments as :class:`Row`) and print it at once."""
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        return row
