"""The version tags ``event`` and ``model_type``: the seed's columns of ``models``, shown as tags.

Every row holds both (the columns are NOT NULL), so every version reports both tags. A new
version takes them from its own tags, else from its registered model's tags, else the defaults.
Deleting one resets the column to its default.
"""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._pg.schema import SEED_COLUMN_DEFAULTS

DEFAULT_EVENT = SEED_COLUMN_DEFAULTS["event"]
DEFAULT_MODEL_TYPE = SEED_COLUMN_DEFAULTS["model_type"]
# tag key -> (default value, the column's VARCHAR limit)
COLUMNS = {"event": (DEFAULT_EVENT, 255), "model_type": (DEFAULT_MODEL_TYPE, 50)}


def is_column_tag(key: str) -> bool:
    return key in COLUMNS


def default(key: str) -> str:
    return COLUMNS[key][0]


def check(key: str, value: str | None) -> None:
    """Refuse a value the column cannot hold (empty, or longer than the column)."""
    limit = COLUMNS[key][1]
    if value is None or value == "" or len(value) > limit:
        raise MlflowException.invalid_parameter_value(
            f"Tag '{key}' is stored in models.{key} and must be 1 to {limit} characters long "
            f"(got {0 if value is None else len(value)})")


def split(tags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(column values, other tags)``; the column values are checked."""
    columns = {k: v for k, v in tags.items() if k in COLUMNS}
    for key, value in columns.items():
        check(key, value)
    return columns, {k: v for k, v in tags.items() if k not in COLUMNS}


def for_new_version(version_tags: dict[str, str], model_tags: dict[str, str | None]) -> dict[str, str]:
    """The column values of a new version: its own tag, else its registered model's, else the default."""
    values = {key: version_tags.get(key) or model_tags.get(key) or default(key) for key in COLUMNS}
    for key, value in values.items():
        check(key, value)
    return values


def as_tags(event: str, model_type: str) -> list[ModelVersionTag]:
    return [ModelVersionTag("event", event), ModelVersionTag("model_type", model_type)]
