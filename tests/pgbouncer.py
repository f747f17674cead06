"""Test support: Debian's PgBouncer (``/usr/sbin/pgbouncer``) in front of an embedded PostgreSQL.

Transaction pooling, on a free loopback port; it reaches the server over the server's unix
socket as the connecting user. PgBouncer refuses to run as root, so under root it runs as the
embedded server's own user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from mlflow_pgmodels._pg.embedded import _RUN_AS, EmbeddedPostgres, free_port
from tests import procs

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
INSTALL_HINT = "apt-get install -y pgbouncer (.ci/run does it)"


def available() -> bool:
    return os.access(PGBOUNCER, os.X_OK)


class PgBouncer:
    """One PgBouncer process; ``uri(dbname)`` connects through it."""

    def __init__(self, server: EmbeddedPostgres, pool_mode: str = "transaction", pool_size: int = 20) -> None:
        self.server = server
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgmodels-pgbouncer-"))
        self.dir.chmod(0o755)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.process: subprocess.Popen | None = None

    def _config(self) -> str:
        return f"""[databases]
* = host={self.server.socket_dir} port={self.server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / 'users.txt'}
admin_users = postgres
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
"""

    def start(self) -> "PgBouncer":
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(self._config())
        user = _RUN_AS if os.geteuid() == 0 else None
        if user:
            shutil.chown(self.dir, user)
        self.process = subprocess.Popen([PGBOUNCER, str(self.dir / "pgbouncer.ini")], user=user,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.wait_for("PgBouncer to accept connections", self._answers, timeout=30)
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: "
                               f"{self.process.stderr.read().decode(errors='replace')}\n{self.log()[-2000:]}")
        try:
            self.admin("SHOW VERSION")
            return True
        except psycopg.OperationalError:
            return False

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)

    def uri(self, dbname: str, scheme: str = "pgmodels") -> str:
        """A URI through PgBouncer (loopback TCP, trusted)."""
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, command: str) -> list[dict]:
        """A ``SHOW`` command on PgBouncer's admin console; rows as dicts."""
        with psycopg.connect(self.uri("pgbouncer", "postgresql"), autocommit=True, prepare_threshold=None) as conn:
            cur = conn.execute(command)
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def transactions(self, dbname: str) -> int:
        """How many transactions PgBouncer has passed on to ``dbname`` so far."""
        return sum(int(row["total_xact_count"]) for row in self.admin("SHOW STATS") if row["database"] == dbname)
