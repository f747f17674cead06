"""The models the benchmark registers and loads, and the checks that a loaded one is the same model."""

from __future__ import annotations

import copy
from typing import Any

from benchmarks import MiB


def tiny_model():
    """A logistic regression of a few hundred bytes, and two rows to predict."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).random((40, 3))
    return LogisticRegression().fit(X, (X[:, 0] > 0.5).astype(int)), X[:2]


def forest(target_mb: int):
    """A RandomForest whose pickle is about ``target_mb`` MB (~1.74 MB per tree on 20k rows)."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    X, y = rng.random((20_000, 8)), rng.random(20_000)
    trees = max(1, round(target_mb / 1.74))
    return RandomForestRegressor(n_estimators=trees, max_features=0.5, n_jobs=2, random_state=0).fit(X, y), X[:2]


def huge_model(target_mb: int):
    """A nearest-neighbours classifier that keeps ``target_mb`` MiB of (incompressible) training data."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    rows = target_mb * MiB // (64 * 8)
    X = np.random.default_rng(0).random((rows, 64))
    return KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(X, np.arange(rows) % 2), X[:1].copy()


def log_model(model: Any, name: str) -> str:
    """``mlflow.sklearn.log_model`` into a new run, registered as ``name``; the new version number."""
    import mlflow

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    return str(info.registered_model_version)


def same_predictions(loaded: Any, original: Any, X: Any) -> bool:
    """Whether two scikit-learn estimators predict exactly the same values on ``X``.

    Both predict on one thread: a forest with ``n_jobs`` > 1 adds up its trees in whatever order
    its threads finish, so its last bits vary from call to call even for the very same model.
    """
    one_thread = []
    for model in (loaded, original):
        model = copy.copy(model)  # shallow: the caller's estimator keeps its n_jobs
        if "n_jobs" in model.get_params(deep=False):
            model.set_params(n_jobs=1)
        one_thread.append(model.predict(X))
    return bool((one_thread[0] == one_thread[1]).all())
