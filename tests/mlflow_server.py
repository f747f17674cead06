"""`mlflow server` as a subprocess for tests, and clients that know nothing but its address.

The server runs on a free loopback port, with its log in a file the tests read; clients run in
fresh Python processes whose environment holds the server URL and nothing of the database.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_pgmodels._pg.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
# What a log line of a failure looks like: a Python traceback or a logging record at ERROR.
_FAILURE = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b")
# Not a failure: MLflow 3.18's UI asks for a presigned URL before each artifact preview (run
# artifacts, model version files), and the server answers 501 and logs this at ERROR for every
# repository that has none (its own local file store too); the UI then reads the file through the
# server, as before.
_MLFLOW_NOISE = re.compile(r"ERROR mlflow\.server\.handlers: Error in "
                           r"(_create_presigned_download_url|get_model_version_artifact_handler): "
                           r"Presigned download is not supported for the current artifact repository")


@dataclass
class MlflowServer:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def failures(self) -> list[str]:
        """Log lines that show an error or a traceback."""
        return [line for line in self.log().splitlines() if _FAILURE.search(line) and not _MLFLOW_NOISE.search(line)]


def _wait_healthy(server: MlflowServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer /health in {timeout:.0f} s:\n{server.log()[-4000:]}")


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_uri: str, registry_uri: str | None = None, workers: int = 1,
                  env: dict[str, str] | None = None, app_name: str | None = None,
                  args: tuple[str, ...] = ()) -> Iterator[MlflowServer]:
    """``mlflow server`` on ``127.0.0.1:<free port>`` in ``workdir`` (more options in ``args``);
    stopped (SIGTERM) on exit.

    ``app_name``: an MLflow server app, e.g. ``basic-auth`` (its user store in ``workdir``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *args]
    if registry_uri:
        cmd += ["--registry-store-uri", registry_uri]
    if app_name:
        cmd += ["--app-name", app_name]
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server_env.update({
        "MLFLOW_PGMODELS_CACHE_DIR": str(workdir / "server-cache"),
        "MLFLOW_PGMODELS_PROGRESS": "0",
        # MLflow's job runner (its huey consumer processes) only where a test submits jobs: it
        # doubles a server's processes and start time (tests/test_jobs.py turns it on)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(env or {}),
    })
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mlflow-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=workdir, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", log_path, process)
    try:
        _wait_healthy(server, timeout=90)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def client_env(server_url: str, cache_dir: Path) -> dict[str, str]:
    """The whole environment of a remote client: the server URL, no database URI or credentials."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(cache_dir.parent),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),  # for tests.sample
        "MLFLOW_TRACKING_URI": server_url,
        "MLFLOW_PGMODELS_CACHE_DIR": str(cache_dir),
        "MLFLOW_PGMODELS_PROGRESS": "0",
    }


def run_client(server_url: str, workdir: Path, script: str, *args: str, cache: str = "client-cache",
               timeout: float = 240, env: dict[str, str] | None = None) -> str:
    """Run a Python client ``script`` (with ``args`` in sys.argv) in its own process; returns its stdout."""
    return run_command(server_url, workdir, [sys.executable, "-c", script, *args], cache=cache, timeout=timeout,
                       env=env)


def run_command(server_url: str, workdir: Path, cmd: list[str], cache: str = "client-cache",
                timeout: float = 240, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` as a remote client process (``env``: more variables, e.g. credentials); fails
    the test with its output if it fails."""
    env = {**client_env(server_url, workdir / cache), **(env or {})}
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"client {cmd[:4]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result.stdout
