"""MLflow's registry internals: its validators of names, versions, tags and aliases, and ``models:/`` URIs."""

from __future__ import annotations

from typing import Any

from mlflow_pgmodels._mlflow._core import resolve

VALIDATION = _V = "mlflow.utils.validation"
validate_model_name = resolve(_V, "_validate_model_name", params=("model_name",))
_validate_model_version = resolve(_V, "_validate_model_version", params=("model_version",))


def validate_model_version(version: Any) -> int:
    """MLflow's check of a version number (str from REST, int from Python); the number as int
    (older MLflow validators return None)."""
    checked = _validate_model_version(version)
    return int(version) if checked is None else checked


validate_model_renaming = resolve(_V, "_validate_model_renaming", params=("model_new_name",))
validate_registered_model_tag = resolve(_V, "_validate_registered_model_tag", params=("key", "value"))
validate_model_version_tag = resolve(_V, "_validate_model_version_tag", params=("key", "value"))
validate_tag_name = resolve(_V, "_validate_tag_name", params=("name",))
# renamed in MLflow 3.18 (both were validators of model aliases, now of any alias)
validate_alias_name = resolve(_V, "_validate_alias_name", "_validate_model_alias_name", params=("alias",))
validate_alias_name_reserved = resolve(_V, "_validate_alias_name_reserved", "_validate_model_alias_name_reserved",
                                       params=("alias",))


# models:/ URIs
parse_model_uri = resolve("mlflow.store.artifact.utils.models", "_parse_model_uri", params=("uri",))

# What MLflow's models:/ artifact repository writes into a download of a registered version
# (MLflow up to 3.17; 3.18 no longer does). Never part of a version's files.
REGISTERED_MODEL_META_FILE = "registered_model_meta"

