"""Test code in separate OS processes that start fast: MLflow is imported once, in a fork server.

Each child is a real process with its own connections (nothing is shared with the test
process); only the import time is saved, which keeps the many-process tests CI-sized.
"""

from __future__ import annotations

import multiprocessing
import os
import time

_PRELOAD = ["mlflow", "mlflow.pyfunc", "mlflow.sklearn", "sklearn.linear_model",
            "mlflow_pgmodels.registry_store", "mlflow_pgmodels.version_artifact_repo", "tests.sample"]


def context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for test children (fork server with MLflow preloaded)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def enter(workdir: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
    """Inside a child: its own working directory and model cache, MLflow pointed at the test database."""
    import mlflow

    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    os.environ["MLFLOW_PGMODELS_CACHE_DIR"] = os.path.join(workdir, "cache")
    os.environ["MLFLOW_PGMODELS_PROGRESS"] = "0"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)


def wait_for(what: str, check, timeout: float = 120):
    """``check()``'s first truthy result, polled until ``timeout`` seconds (then the test fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def register_dir(uri: str, workdir: str, name: str, path: str) -> None:
    """In a child: register the model directory ``path`` as a new version of ``name``."""
    from mlflow import MlflowClient

    enter(workdir, tracking_uri=uri)
    MlflowClient().create_model_version(name, source=path)
