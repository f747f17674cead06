"""pyfunc loader for file-era rows: ``model_binary`` holding a raw joblib dump, no MLmodel.

MLflow loads such a version as ``python_function`` through this module (see archive.py).
"""

from __future__ import annotations

import os
from typing import Any

import joblib


class LegacyJoblibModel:
    """A joblib-loaded estimator behind the pyfunc ``predict`` interface."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, data: Any, params: dict | None = None) -> Any:
        return self.model.predict(data)


def _load_pyfunc(path: str) -> LegacyJoblibModel:
    if os.path.isdir(path):
        path = os.path.join(path, "model.joblib")
    return LegacyJoblibModel(joblib.load(path))
