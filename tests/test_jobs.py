"""MLflow's job execution on the one-URI server: ``mlflow server --backend-store-uri pgmodels://…``.

MLflow runs GenAI scorer, evaluation and prompt-optimization jobs from a job store in the backend
database; with a ``pgmodels://`` backend that is the same database, as with ``postgresql://``.
A job here is a small function of ours (tests/sample_jobs.py) submitted through the REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import sample_jobs
from tests.mlflow_server import ROOT, mlflow_server

TERMINAL = {"SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED"}


def _call(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_for_job(server_url: str, job_id: str, timeout: float = 180) -> dict:
    """The job once it has reached a terminal state (polled through the REST API)."""
    deadline = time.monotonic() + timeout
    while True:
        job = _call("GET", f"{server_url}/ajax-api/3.0/jobs/{job_id}")
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@pytest.mark.slow  # a server with its job runner, a job process, then mlflow gc
def test_a_job_submitted_to_the_server_runs_on_the_same_database(db, tmp_path):
    user, password = db.login_role("pgmodels_writer")
    uri = db.tcp_uri(user, password)
    env = {"PYTHONPATH": str(ROOT),  # where the job function lives
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true",
           "_MLFLOW_SUPPORTED_JOB_FUNCTION_LIST": sample_jobs.FUNCTION,
           "_MLFLOW_ALLOWED_JOB_NAME_LIST": sample_jobs.NAME}
    with mlflow_server(tmp_path / "server", uri, env=env) as server:
        submitted = _call("POST", f"{server.url}/ajax-api/3.0/jobs/",
                          {"job_name": sample_jobs.NAME, "params": {"experiment_name": "jobs", "text": "from a job"}})
        job = _wait_for_job(server.url, submitted["job_id"])
        log = server.log()

    assert job["status"] == "SUCCEEDED", (job, log[-5000:])
    run_id = job["result"]["run_id"]
    assert db.sql("SELECT count(*) FROM pgm_artifacts WHERE path LIKE %s", (f"%/{run_id}/artifacts/note.txt",)) == [(1,)]
    assert db.sql("SELECT count(*) FROM jobs WHERE id = %s", (submitted["job_id"],)) == [(1,)]  # the same database
    assert "job execution requirements not met" not in log
    assert password not in log

    # `mlflow gc --jobs` cleans up finished jobs from the same database
    gc_env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri, "--jobs"],
                          env=gc_env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Job with ID {submitted['job_id']} has been permanently deleted." in done.stdout
    assert db.sql("SELECT count(*) FROM jobs") == [(0,)]
    assert password not in done.stdout + done.stderr


def test_mlflows_job_store_opens_the_database_of_a_pgmodels_uri(db):
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    store = SqlAlchemyJobStore(db.uri)
    job = store.create_job(sample_jobs.NAME, json.dumps({"text": "x"}))
    assert db.sql("SELECT job_name FROM jobs WHERE id = %s", (job.job_id,)) == [(sample_jobs.NAME,)]
    assert store.get_job(job.job_id).status.name == "PENDING"


def test_a_pgmodels_uri_the_job_store_cannot_use_is_refused_without_its_password():
    from mlflow.exceptions import MlflowException
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    with pytest.raises(MlflowException) as e:
        SqlAlchemyJobStore("pgmodels://jobs:s3cret-pw@db.example:99999/mlflow")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "port" in e.value.message and "s3cret-pw" not in e.value.message
