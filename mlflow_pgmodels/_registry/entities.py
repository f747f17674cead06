"""Rows of the store's tables as MLflow entities, and the errors that name a missing one.

``MV_COLUMNS`` / ``RM_COLUMNS`` are the select lists (tables aliased ``m`` = models and
``r`` = pgm_registered_models) that :func:`model_version` / :func:`registered_model` read.
"""

from __future__ import annotations

import json
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

from mlflow_pgmodels._registry import column_tags
from mlflow_pgmodels._pg.uri import download_uri

# The stage of a row: is_active = false is Archived, whatever models.stage says.
STAGE_SQL = "CASE WHEN m.is_active IS FALSE THEN 'Archived' ELSE m.stage END"
# A row counts as active unless is_active is false (NULL: the seed's default TRUE was bypassed).
ACTIVE_SQL = "is_active IS NOT FALSE"
_MS = "(extract(epoch FROM {})*1000)::bigint"

MV_COLUMNS = f"""
    m.name, m.version, {_MS.format("m.created_at::timestamptz")}, {_MS.format("m.last_updated_at")},
    m.description, m.user_id, {STAGE_SQL}, m.source, m.run_id, m.run_link, m.model_id,
    m.event, m.model_type,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_model_version_tags t
      WHERE t.name = m.name AND t.version = m.version),
    (SELECT coalesce(json_agg(a.alias ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = m.name AND a.version = m.version)
"""
RM_COLUMNS = f"""
    r.name, {_MS.format("r.created_at")}, {_MS.format("r.last_updated_at")}, r.description,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_registered_model_tags t
      WHERE t.name = r.name),
    (SELECT coalesce(json_agg(json_build_array(a.alias, a.version) ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = r.name)
"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def model_version(row: tuple) -> ModelVersion:
    """A row selected with ``MV_COLUMNS`` as a ModelVersion (READY: a row exists only once complete)."""
    (name, version, created, updated, description, user_id, stage, source, run_id, run_link,
     model_id, event, model_type, tags, aliases) = row
    tag_list = [ModelVersionTag(k, v) for k, v in _json(tags)] + column_tags.as_tags(event, model_type)
    return ModelVersion(
        name=name, version=version, creation_timestamp=created, last_updated_timestamp=updated,
        description=description, user_id=user_id, current_stage=stage,
        source=source or download_uri(name, version), run_id=run_id, status="READY",
        tags=tag_list, run_link=run_link, aliases=list(_json(aliases)), model_id=model_id,
    )


def registered_model(row: tuple, latest_versions: list[ModelVersion] | None = None) -> RegisteredModel:
    """A row selected with ``RM_COLUMNS`` as a RegisteredModel (aliases map to int versions, as in MLflow)."""
    name, created, updated, description, tags, aliases = row
    return RegisteredModel(
        name=name, creation_timestamp=created, last_updated_timestamp=updated, description=description,
        latest_versions=latest_versions or [],
        tags=[RegisteredModelTag(k, v) for k, v in _json(tags)],
        aliases=[RegisteredModelAlias(a, int(v)) for a, v in _json(aliases)],
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
