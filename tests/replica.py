"""Test support: a primary and a streaming hot standby, two embedded PostgreSQL servers.

The standby is made with its own ``pg_basebackup -R`` of the primary (streaming over the
primary's unix socket) and promoted with ``pg_ctl promote``; both listen on their own socket
directory and loopback port, so a multi-host URI can list them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres, binary
from tests import procs
from tests.conftest import TEMPLATE

DATABASE = "mlflow"


def _new_primary(base: Path, template: EmbeddedPostgres) -> EmbeddedPostgres:
    """A new server whose database is a copy of the test session's template (MLflow's tables and ours)."""
    primary = EmbeddedPostgres(base / "primary", tcp=True, durable=False).start()
    primary.psql(f"CREATE DATABASE {DATABASE}")
    dump = template._run([binary("pg_dump"), "-h", str(template.socket_dir), "-p", str(template.port),
                          "-U", "postgres", "--no-owner", TEMPLATE]).stdout
    primary._run([binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(primary.socket_dir),
                  "-p", str(primary.port), "-U", "postgres", "-d", DATABASE], input=dump)
    return primary


def _new_standby(primary: EmbeddedPostgres, base: Path) -> EmbeddedPostgres:
    standby = EmbeddedPostgres(base / "standby", tcp=True, durable=False)
    standby.data_dir.mkdir(mode=0o700)
    standby.socket_dir.mkdir(mode=0o700)
    standby._prepare_root()
    # -R: standby.signal and primary_conninfo; -X stream: the WAL written meanwhile comes along
    standby._run([binary("pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres",
                  "-D", str(standby.data_dir), "-R", "-X", "stream", "--checkpoint=fast"])
    return standby.start()


@dataclass
class Pair:
    """A primary and its streaming standby, in a directory removed by :meth:`close`."""

    base: Path
    primary: EmbeddedPostgres
    standby: EmbeddedPostgres

    @classmethod
    def start(cls, template: EmbeddedPostgres) -> "Pair":
        """A new pair; ``template`` is the session's server (fixture ``pg``), whose template database it copies."""
        base = Path(tempfile.mkdtemp(prefix="pgmodels-replica-"))
        base.chmod(0o755)
        primary = _new_primary(base, template)
        pair = cls(base, primary, _new_standby(primary, base))
        pair.wait_replayed()
        return pair

    def close(self) -> None:
        for server in (self.standby, self.primary):
            server.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ URIs
    @staticmethod
    def uri_of(*servers: EmbeddedPostgres, **params: str) -> str:
        """``pgmodels://`` over the unix sockets of ``servers`` (a multi-host URI for more than one)."""
        query = {"host": ",".join(str(s.socket_dir) for s in servers),
                 "port": ",".join(str(s.port) for s in servers), **params}
        return f"pgmodels://postgres@/{DATABASE}?" + "&".join(f"{k}={v}" for k, v in query.items())

    def sql(self, server: EmbeddedPostgres, query: str, params: tuple = ()) -> list[tuple]:
        """One statement on ``server``'s database as the superuser; its rows."""
        with psycopg.connect(server.socket_uri(DATABASE, scheme="postgresql"), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    # ------------------------------------------------------------------ replication
    def wait_replayed(self) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = self.sql(self.primary, "SELECT pg_current_wal_insert_lsn()")[0][0]
        procs.wait_for("the standby to catch up", lambda: self.sql(
            self.standby, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0], timeout=30)

    def pause_replay(self) -> None:
        self.sql(self.standby, "SELECT pg_wal_replay_pause()")
        procs.wait_for("replay to pause", lambda: self.sql(
            self.standby, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", timeout=30)

    def resume_replay(self) -> None:
        self.sql(self.standby, "SELECT pg_wal_replay_resume()")

    def promote(self) -> None:
        """Make the standby a primary (``pg_ctl promote``, waiting until it accepts writes)."""
        self.standby._run([binary("pg_ctl"), "-D", str(self.standby.data_dir), "-w", "-t", "60", "promote"])
