"""Registry arguments as the store takes them: from Python (ints, None, entities) and REST (strings, '')."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_pgmodels._mlflow import validate_model_name, validate_model_version

MAX_NAME = 255
MAX_VERSION = 2**31 - 1  # models.version is an INTEGER

def version(version: Any) -> int:
    """A version number as int (str from REST, int from Python), refused unless 1 … 2**31-1."""
    number = validate_model_version(version)
    if not 0 < number <= MAX_VERSION:
        raise MlflowException.invalid_parameter_value(
            f"Invalid version {version!r}: versions are whole numbers from 1 to {MAX_VERSION}")
    return number


def name(name: Any) -> str:
    validate_model_name(name)
    if len(name) > MAX_NAME:
        raise MlflowException.invalid_parameter_value(
            f"Model name is {len(name)} characters long; at most {MAX_NAME} are allowed")
    return name


def tags(tags: Any) -> dict[str, str]:
    """Tags as a dict, from entity lists, protobuf repeated fields or dicts."""
    if not tags:
        return {}
    if isinstance(tags, dict):
        return {str(k): (None if v is None else str(v)) for k, v in tags.items()}
    return {t.key: t.value for t in tags}


def blank(value: Any) -> Any:
    """REST passes '' for unset fields; the Python client passes None."""
    return None if value == "" else value
