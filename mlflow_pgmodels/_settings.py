"""Settings read from the environment (``MLFLOW_PGMODELS_*``), and modes of MLflow the store refuses."""

from __future__ import annotations

import os

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INVALID_STATE


def positive_number(env: str, default: float, kind: type = int) -> float:
    """The value of ``env`` as a positive ``kind`` (``int`` or ``float``), ``default`` when unset.

    Underscores may group digits (``10_000_000``). Anything else is INVALID_PARAMETER_VALUE naming
    the variable.
    """
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise MlflowException(f"{env}={raw!r} is not a positive {'whole ' if kind is int else ''}number "
                              f"(default {default:g})", error_code=INVALID_PARAMETER_VALUE)
    return value


def refuse_workspaces() -> None:
    """Refuse MLflow's workspaces mode (``mlflow server --enable-workspaces``): the store has none."""
    from mlflow_pgmodels._mlflow import workspaces_enabled

    if workspaces_enabled():
        raise MlflowException(
            "The pgmodels:// store does not support MLflow workspaces: start `mlflow server` without "
            "--enable-workspaces and with MLFLOW_ENABLE_WORKSPACES unset (one database per team "
            "separates registries instead).", error_code=INVALID_STATE)
