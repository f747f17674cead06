"""A job function for MLflow's job execution, for tests/test_jobs.py (a job must be a module-level function).

The server learns about it from ``_MLFLOW_SUPPORTED_JOB_FUNCTION_LIST`` and
``_MLFLOW_ALLOWED_JOB_NAME_LIST``, as in MLflow's own tests of its job endpoint.
"""

from __future__ import annotations

import mlflow
from mlflow.server.jobs import job

FUNCTION = "tests.sample_jobs.log_a_note"
NAME = "pgmodels_log_a_note"


@job(name=NAME, max_workers=1)
def log_a_note(experiment_name: str, text: str) -> dict[str, str]:
    """Log ``text`` as a run artifact (MLflow points a job's tracking URI at the server, or at its backend store)."""
    mlflow.set_experiment(experiment_name)
    with mlflow.start_run() as run:
        mlflow.log_text(text, "note.txt")
    return {"run_id": run.info.run_id}
