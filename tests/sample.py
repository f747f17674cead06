"""Small real models and data for the tests."""

from __future__ import annotations

import time

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression

X = np.random.default_rng(0).random((40, 3))
Y_CLASS = (X[:, 0] > 0.5).astype(int)


def classifier(seed: int = 0) -> LogisticRegression:
    """A fitted classifier; different seeds give models with different coefficients."""
    rng = np.random.default_rng(seed)
    return LogisticRegression(C=float(rng.uniform(0.1, 10))).fit(X, Y_CLASS)


def regressor(slope: float = 2.0) -> LinearRegression:
    """A fitted regression whose predictions reveal ``slope`` (so loads can be told apart)."""
    return LinearRegression().fit(X, X[:, 0] * slope)


def log(model, name: str, **kwargs):
    """``mlflow.sklearn.log_model`` in its own run, registering under ``name``; returns ModelInfo."""
    import mlflow

    kwargs.setdefault("pip_requirements", ["scikit-learn"])  # skip slow requirement inference
    with mlflow.start_run():
        return mlflow.sklearn.log_model(model, name="model", registered_model_name=name, **kwargs)


def saved(path, model=None) -> str:
    """A model directory written by ``mlflow.sklearn.save_model``: a cheap ``source`` to register."""
    import mlflow

    mlflow.sklearn.save_model(model if model is not None else classifier(), str(path),
                              pip_requirements=["scikit-learn"])
    return str(path)


def register(client, tmp_path, name: str = "churn", model=None, registered_description: str | None = None,
             **kwargs):
    """A new version of ``name`` from ``model`` (default: a classifier) saved under ``tmp_path``;
    returns the ModelVersion.

    ``client`` is an MlflowClient or a registry store. The registered model is created on first use
    (with ``registered_description``); ``kwargs`` go to ``create_model_version``.
    """
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name, description=registered_description)
    source = saved(tmp_path / f"{name}-{time.monotonic_ns()}", model)
    return client.create_model_version(name, source, **kwargs)
