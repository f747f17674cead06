"""The quickstart's embedded PostgreSQL: private to its user, durable, and visible with `mlflow-pgmodels embedded`.

Each test runs real servers in a temporary XDG_DATA_HOME, so that the user's own store is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from mlflow_pgmodels._pg import embedded
from mlflow_pgmodels._pg.embedded import EmbeddedPostgres, free_port

# what mlflow-pgmodels wrote into every server's postgresql.conf before it kept the quickstart's durable
OLD_CONF = "\n# mlflow-pgmodels\nfsync = off\nsynchronous_commit = off\nmax_connections = 200\nshared_buffers = 128MB\n"


@pytest.fixture
def data_home(monkeypatch):
    """A temporary XDG_DATA_HOME (short: unix socket paths have a limit) and port for the quickstart's server."""
    home = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.setenv("MLFLOW_PGMODELS_EMBEDDED_PORT", str(free_port()))
    yield home
    embedded.quickstart_server().stop("immediate")
    shutil.rmtree(home, ignore_errors=True)


def _quickstart(data_home: Path) -> EmbeddedPostgres:
    """The quickstart's server, started; never the user's real one."""
    server = embedded.quickstart_server()
    assert server.data_dir == data_home / "mlflow-pgmodels" / "pgdata"
    return server.start()


def _settings(server: EmbeddedPostgres, *names: str) -> dict[str, str]:
    with psycopg.connect(server.socket_uri(scheme="postgresql")) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}


def _connect_as(user: str, server: EmbeddedPostgres) -> subprocess.CompletedProcess:
    psql = embedded.binary("psql")
    return subprocess.run([psql, "-X", "-h", str(server.socket_dir), "-p", str(server.port), "-U", "postgres",
                           "-d", "postgres", "-c", "SELECT 1"], capture_output=True, text=True, timeout=60,
                          # another local user: its own uid, group and no supplementary groups (not root's)
                          user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])


def test_quickstart_server_is_private_to_its_user_and_durable(data_home):
    server = _quickstart(data_home)

    mode = server.socket_dir.stat()
    assert mode.st_mode & 0o777 == 0o700
    runs_as = pwd.getpwnam("embedded_postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert mode.st_uid == runs_as
    assert _settings(server, "fsync", "synchronous_commit", "full_page_writes") == {
        "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    if os.geteuid() == 0:  # root connects (above); any other local user does not
        other = _connect_as("nobody", server)
        assert other.returncode != 0 and "Permission denied" in other.stderr, other.stdout + other.stderr


def test_the_test_suites_throwaway_server_is_fast_by_explicit_choice(pg):
    assert pg.durable is False
    assert _settings(pg, "fsync", "synchronous_commit") == {"fsync": "off", "synchronous_commit": "off"}


def test_a_store_left_with_fsync_off_by_an_older_version_is_made_durable(data_home, caplog):
    old = embedded.quickstart_server()
    assert old.data_dir == data_home / "mlflow-pgmodels" / "pgdata"
    old.init()
    with open(old.data_dir / "postgresql.conf", "a") as conf:
        conf.write(OLD_CONF)
    # started as older versions did, and still running
    old._run([embedded.binary("pg_ctl"), "-D", str(old.data_dir), "-w", "-l", str(old.data_dir / "server.log"),
              "-o", f"-h '' -p {old.port} -k {old.socket_dir}", "start"])
    assert _settings(old, "fsync") == {"fsync": "off"}

    server = _quickstart(data_home)  # what the quickstart runs next time

    assert _settings(server, "fsync", "synchronous_commit") == {"fsync": "on", "synchronous_commit": "on"}
    assert "turned fsync and synchronous_commit back on" in caplog.text
    conf = (server.data_dir / "postgresql.conf").read_text()
    assert "\nfsync = off" not in conf and "\nsynchronous_commit = off" not in conf
    server.stop()
    assert _start_and_show_fsync(server) == "on"  # and it stays so after a restart


def _start_and_show_fsync(server: EmbeddedPostgres) -> str:
    server.start()
    return _settings(server, "fsync")["fsync"]


def test_embedded_status_and_stop(data_home, capsys):
    from mlflow_pgmodels.cli import main

    server = _quickstart(data_home)

    assert main(["embedded", "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "running"
    assert f"data directory: {server.data_dir}" in out
    assert f"port: {server.port}" in out
    assert f"URI: {server.socket_uri('mlflow')}" in out
    assert "password" not in out.lower()

    assert main(["embedded", "stop"]) == 0
    assert capsys.readouterr().out.startswith("stopped")
    assert not server.running()

    # the exit code as a shell sees it, like pg_ctl status
    status = subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", "embedded", "status"],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 3, status.stderr
    assert status.stdout.splitlines()[0] == "not running"


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def private_home(monkeypatch):
    """A drwx------ HOME (no XDG_DATA_HOME), with root's quickstart data in a temporary stand-in for /var/lib."""
    base = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))
    home, var_lib = base / "home", base / "var-lib"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(embedded, "ROOT_DATA_HOME", var_lib, raising=False)
    monkeypatch.setenv("MLFLOW_PGMODELS_EMBEDDED_PORT", str(free_port()))
    yield home
    embedded.quickstart_server().stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as a user of its own only when started as root")
def test_started_as_root_the_quickstart_server_leaves_a_private_home_private(private_home):
    server = embedded.default_server()

    assert _mode(private_home) == 0o700
    assert not server.data_dir.is_relative_to(private_home)
    assert "up" in server.psql("SELECT 'up'", "postgres")
    listed = subprocess.run(["ls", str(private_home)], user="embedded_postgres", capture_output=True, text=True)
    assert listed.returncode != 0 and "Permission denied" in listed.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as a user of its own only when started as root")
def test_started_as_root_in_a_private_directory_the_server_gets_traversal_only():
    private = Path(tempfile.mkdtemp(prefix="priv-", dir="/tmp"))
    private.chmod(0o700)
    server = EmbeddedPostgres(private / "pg", durable=False)
    try:
        server.start()
        assert _mode(private) == 0o701  # passable, not listable
        assert "up" in server.psql("SELECT 'up'", "postgres")
    finally:
        server.stop("immediate")
        shutil.rmtree(private, ignore_errors=True)


def test_commands_say_only_what_they_mean_without_xdg_runtime_dir(data_home):
    """As root, on a server or in CI XDG_RUNTIME_DIR is unset: no warning of platformdirs' on stderr."""
    _quickstart(data_home)
    env = {name: value for name, value in os.environ.items() if name != "XDG_RUNTIME_DIR"}
    for args in (["--help"], ["embedded", "status"]):
        done = subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr) == (0, ""), args
    assert "running" in done.stdout
