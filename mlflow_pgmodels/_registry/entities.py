"""Rows of the store's tables as MLflow entities, and the errors that name a missing one.

``MV_COLUMNS`` / ``RM_COLUMNS`` are the select lists (tables aliased ``m`` = models and
``r`` = pgm_registered_models) that :func:`model_version` / :func:`registered_model` read by
column name: select them with ``conn.cursor(row_factory=psycopg.rows.dict_row)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelAlias,
    RegisteredModelTag,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels._pg.uri import download_uri
from mlflow_pgmodels._registry import column_tags

# The stage of a row: is_active = false is Archived, whatever models.stage says.
STAGE_SQL = "CASE WHEN m.is_active IS FALSE THEN 'Archived' ELSE m.stage END"
# A row counts as active unless is_active is false (NULL: the seed's default TRUE was bypassed).
ACTIVE_SQL = "is_active IS NOT FALSE"
_MS = "(extract(epoch FROM {})*1000)::bigint"

MV_COLUMNS = f"""
    m.name, m.version, {_MS.format("m.created_at::timestamptz")} AS creation_timestamp,
    {_MS.format("m.last_updated_at")} AS last_updated_timestamp, m.description, m.user_id,
    {STAGE_SQL} AS current_stage, m.source, m.run_id, m.run_link, m.model_id, m.event, m.model_type,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_model_version_tags t
      WHERE t.name = m.name AND t.version = m.version) AS tags,
    (SELECT coalesce(json_agg(a.alias ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = m.name AND a.version = m.version) AS aliases
"""
RM_COLUMNS = f"""
    r.name, {_MS.format("r.created_at")} AS creation_timestamp, {_MS.format("r.last_updated_at")} AS last_updated_timestamp,
    r.description,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_registered_model_tags t
      WHERE t.name = r.name) AS tags,
    (SELECT coalesce(json_agg(json_build_array(a.alias, a.version) ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = r.name) AS aliases
"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def model_version(row: Mapping[str, Any]) -> ModelVersion:
    """A row selected with ``MV_COLUMNS``, read by name (``psycopg.rows.dict_row``), as a ModelVersion
    (READY: a row exists only once complete). Other columns of the row are ignored."""
    name, version = row["name"], row["version"]
    tag_list = [ModelVersionTag(k, v) for k, v in _json(row["tags"])] + column_tags.as_tags(row["event"],
                                                                                          row["model_type"])
    return ModelVersion(
        name=name, version=version, creation_timestamp=row["creation_timestamp"],
        last_updated_timestamp=row["last_updated_timestamp"], description=row["description"],
        user_id=row["user_id"], current_stage=row["current_stage"],
        source=row["source"] or download_uri(name, version), run_id=row["run_id"], status="READY",
        tags=tag_list, run_link=row["run_link"], aliases=list(_json(row["aliases"])), model_id=row["model_id"],
    )


def registered_model(row: Mapping[str, Any], latest_versions: list[ModelVersion] | None = None) -> RegisteredModel:
    """A row selected with ``RM_COLUMNS``, read by name (``psycopg.rows.dict_row``), as a RegisteredModel
    (aliases map to int versions, as in MLflow)."""
    return RegisteredModel(
        name=row["name"], creation_timestamp=row["creation_timestamp"],
        last_updated_timestamp=row["last_updated_timestamp"], description=row["description"],
        latest_versions=latest_versions or [],
        tags=[RegisteredModelTag(k, v) for k, v in _json(row["tags"])],
        aliases=[RegisteredModelAlias(a, int(v)) for a, v in _json(row["aliases"])],
    )


def model_not_found(name: str) -> MlflowException:
    return MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)


def version_not_found(name: str, version: Any) -> MlflowException:
    return MlflowException(f"Model Version (name={name}, version={version}) not found", RESOURCE_DOES_NOT_EXIST)


def no_active_version(name: str, inactive: int) -> MlflowException:
    if not inactive:
        return MlflowException(f"Registered model '{name}' has no active version: it has no versions at all",
                               RESOURCE_DOES_NOT_EXIST)
    return MlflowException(
        f"Registered model '{name}' has no active version: all {inactive} of its versions are archived "
        f"(models.is_active = false), so '{name}/latest' resolves to nothing. Load a version by number "
        f"(models:/{name}/<version>) or make one active again (transition it out of Archived, or "
        "UPDATE models SET is_active = true).", RESOURCE_DOES_NOT_EXIST)
