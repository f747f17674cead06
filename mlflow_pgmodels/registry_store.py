"""MLflow's model registry on the ``models`` table: one row per version, the model in ``model_binary``.

How a version maps to a row (docs/design.md has the whole scheme):

* ``version`` is the row's ``version``; numbers come from ``pgm_registered_models.next_version``
  under a row lock, in the transaction that inserts the row, so they are gap-free and never reused.
* the stage is ``is_active``: false is ``Archived``; an active row's stage is ``models.stage``.
* ``latest`` is the highest active version.
* the tags ``event`` and ``model_type`` are the columns of the same names; other tags, aliases
  and registered-model data live in ``pgm_*`` tables.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelAlias,
    RegisteredModelTag,
)
from mlflow.entities.model_registry.model_version_stages import (
    ALL_STAGES,
    DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS,
    STAGE_ARCHIVED,
    STAGE_NONE,
    get_canonical_stage,
)
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.model_registry import (
    SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
    SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD,
)
from mlflow.store.model_registry.abstract_store import AbstractStore
from mlflow.utils.search_utils import SearchModelUtils, SearchModelVersionUtils, SearchUtils
from mlflow.utils.validation import (
    _validate_model_alias_name,
    _validate_model_alias_name_reserved,
    _validate_model_name,
    _validate_model_renaming,
    _validate_model_version,
    _validate_model_version_tag,
    _validate_registered_model_tag,
)

from mlflow_pgmodels import archive, blobs, sources
from mlflow_pgmodels.db import connection
from mlflow_pgmodels.schema import ensure_schema
from mlflow_pgmodels.webhooks import WebhookStoreMixin
from mlflow_pgmodels.uri import download_uri, is_pgmodels_uri, parse_download_uri, redact, to_conninfo

# Tags stored in columns of the models table, and their values when a version has no such tag.
COLUMN_TAGS = {"event": 255, "model_type": 50}
DEFAULT_EVENT = "default"
DEFAULT_MODEL_TYPE = "unspecified"
_DEFAULTS = {"event": DEFAULT_EVENT, "model_type": DEFAULT_MODEL_TYPE}
_MAX_NAME = 255
_MAX_VERSION = 2**31 - 1  # models.version is an INTEGER

_STAGE_SQL = "CASE WHEN m.is_active IS FALSE THEN 'Archived' ELSE m.stage END"
_MS = "(extract(epoch FROM {})*1000)::bigint"
_MV_COLUMNS = f"""
    m.name, m.version, {_MS.format("m.created_at::timestamptz")}, {_MS.format("m.last_updated_at")},
    m.description, m.user_id, {_STAGE_SQL}, m.source, m.run_id, m.run_link, m.model_id,
    m.event, m.model_type,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_model_version_tags t
      WHERE t.name = m.name AND t.version = m.version),
    (SELECT coalesce(json_agg(a.alias ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = m.name AND a.version = m.version)
"""
_RM_COLUMNS = f"""
    r.name, {_MS.format("r.created_at")}, {_MS.format("r.last_updated_at")}, r.description,
    (SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]') FROM pgm_registered_model_tags t
      WHERE t.name = r.name),
    (SELECT coalesce(json_agg(json_build_array(a.alias, a.version) ORDER BY a.alias), '[]') FROM pgm_aliases a
      WHERE a.name = r.name)
"""
_MV_ORDER = {"name": "m.name", "version_number": "m.version",
             "creation_timestamp": "m.created_at", "last_updated_timestamp": "m.last_updated_at"}
_RM_ORDER = {"name": "r.name", "timestamp": "r.last_updated_at", "last_updated_timestamp": "r.last_updated_at",
             "creation_timestamp": "r.created_at"}


def _not_found_rm(name: str) -> MlflowException:
    return MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)


def _not_found_mv(name: str, version: Any) -> MlflowException:
    return MlflowException(f"Model Version (name={name}, version={version}) not found", RESOURCE_DOES_NOT_EXIST)


def _no_active_version(name: str, inactive: int) -> MlflowException:
    if not inactive:
        return MlflowException(f"Registered model '{name}' has no active version: it has no versions at all",
                               RESOURCE_DOES_NOT_EXIST)
    return MlflowException(
        f"Registered model '{name}' has no active version: all {inactive} of its versions are archived "
        f"(models.is_active = false), so '{name}/latest' resolves to nothing. Load a version by number "
        f"(models:/{name}/<version>) or make one active again (transition it out of Archived, or "
        "UPDATE models SET is_active = true).", RESOURCE_DOES_NOT_EXIST)


def _version(version: Any) -> int:
    """A version number as int (str from REST, int from Python), refused unless 1 … 2**31-1."""
    number = _validate_model_version(version)
    if not 0 < number <= _MAX_VERSION:
        raise MlflowException.invalid_parameter_value(
            f"Invalid version {version!r}: versions are whole numbers from 1 to {_MAX_VERSION}")
    return number


def _name(name: Any) -> str:
    _validate_model_name(name)
    if len(name) > _MAX_NAME:
        raise MlflowException.invalid_parameter_value(
            f"Model name is {len(name)} characters long; at most {_MAX_NAME} are allowed")
    return name


def _tags(tags: Any) -> dict[str, str]:
    """Tags as a dict, from entity lists, protobuf repeated fields or dicts."""
    if not tags:
        return {}
    if isinstance(tags, dict):
        return {str(k): (None if v is None else str(v)) for k, v in tags.items()}
    return {t.key: t.value for t in tags}


def _blank(value: Any) -> Any:
    """REST passes '' for unset fields; the Python client passes None."""
    return None if value == "" else value


def _check_column_tag(key: str, value: str) -> None:
    limit = COLUMN_TAGS[key]
    if value is None or value == "" or len(value) > limit:
        raise MlflowException.invalid_parameter_value(
            f"Tag '{key}' is stored in models.{key} and must be 1 to {limit} characters long "
            f"(got {0 if value is None else len(value)})")


class PgModelsRegistryStore(WebhookStoreMixin, AbstractStore):
    """The ``pgmodels://`` model registry store."""

    def __init__(self, store_uri: str | None = None, tracking_uri: str | None = None) -> None:
        super().__init__(store_uri=store_uri, tracking_uri=tracking_uri)
        to_conninfo(store_uri)  # a clear error for a URI of another scheme
        self.store_uri = store_uri
        self.tracking_uri = tracking_uri
        ensure_schema(store_uri)

    def __repr__(self) -> str:
        return f"PgModelsRegistryStore({redact(self.store_uri)!r})"

    def _conn(self, what: str):
        return connection(self.store_uri, what)

    # ------------------------------------------------------------------ rows -> entities
    @staticmethod
    def _mv(row: tuple) -> ModelVersion:
        (name, version, created, updated, description, user_id, stage, source, run_id, run_link,
         model_id, event, model_type, tags, aliases) = row
        tag_list = [ModelVersionTag(k, v) for k, v in (json.loads(tags) if isinstance(tags, str) else tags)]
        tag_list += [ModelVersionTag("event", event), ModelVersionTag("model_type", model_type)]
        return ModelVersion(
            name=name, version=version, creation_timestamp=created, last_updated_timestamp=updated,
            description=description, user_id=user_id, current_stage=stage,
            source=source or download_uri(name, version), run_id=run_id, status="READY",
            tags=tag_list, run_link=run_link, aliases=list(json.loads(aliases) if isinstance(aliases, str) else aliases),
            model_id=model_id,
        )

    def _rm(self, conn, row: tuple, latest: dict[str, list[ModelVersion]] | None = None) -> RegisteredModel:
        name, created, updated, description, tags, aliases = row
        return RegisteredModel(
            name=name, creation_timestamp=created, last_updated_timestamp=updated, description=description,
            latest_versions=(latest or {}).get(name, []),
            tags=[RegisteredModelTag(k, v) for k, v in tags],
            aliases=[RegisteredModelAlias(a, str(v)) for a, v in aliases],
        )

    def _latest_by_stage(self, conn, names: list[str], stages: list[str]) -> dict[str, list[ModelVersion]]:
        """The highest version in each of ``stages`` for each name (an index lookup each)."""
        if not names:
            return {}
        # One LIMIT 1 index probe per name and stage. Each stage is its own branch with the stage
        # as a parameter, so that the planner sees its value: for a stage no version is in, it
        # then takes pgm_models_latest_idx instead of walking every version of the name.
        branches, params = [], []
        for stage in dict.fromkeys(stages):
            active = "x.is_active IS FALSE" if stage == STAGE_ARCHIVED else "x.is_active IS NOT FALSE AND x.stage = %s"
            branches.append(f"""SELECT {_MV_COLUMNS} FROM unnest(%s::text[]) AS n(name) CROSS JOIN LATERAL (
                SELECT * FROM models x WHERE x.name = n.name AND {active} ORDER BY x.version DESC LIMIT 1) m""")
            params += [names] if stage == STAGE_ARCHIVED else [names, stage]
        rows = conn.execute(" UNION ALL ".join(branches) + " ORDER BY 1, 2 DESC", params).fetchall()
        out: dict[str, list[ModelVersion]] = {}
        for row in rows:
            out.setdefault(row[0], []).append(self._mv(row))
        return out

    def _get_rm(self, conn, name: str) -> RegisteredModel:
        row = conn.execute(f"SELECT {_RM_COLUMNS} FROM pgm_registered_models r WHERE r.name = %s", (name,)).fetchone()
        if row is None:
            raise _not_found_rm(name)
        return self._rm(conn, row, self._latest_by_stage(conn, [name], _ACTIVE_STAGES))

    def _get_mv(self, conn, name: str, version: int) -> ModelVersion:
        row = conn.execute(f"SELECT {_MV_COLUMNS} FROM models m WHERE m.name = %s AND m.version = %s",
                           (name, version)).fetchone()
        if row is None:
            raise _not_found_mv(name, version)
        return self._mv(row)

    def _touch_rm(self, conn, name: str) -> None:
        if conn.execute("UPDATE pgm_registered_models SET last_updated_at = now() WHERE name = %s",
                        (name,)).rowcount == 0:
            raise _not_found_rm(name)

    # ------------------------------------------------------------------ registered models
    def create_registered_model(self, name, tags=None, description=None, deployment_job_id=None):
        name = _name(name)
        tags = _tags(tags)
        for key, value in tags.items():
            _validate_registered_model_tag(key, value)
        with self._conn(f"create registered model '{name}'") as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO pgm_registered_models (name, description) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (name, _blank(description)),
            ).rowcount
            if not inserted:
                from mlflow.prompt.registry_utils import handle_resource_already_exist_error

                is_prompt = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pgm_registered_model_tags WHERE name = %s AND key = %s AND value = 'true')",
                    (name, IS_PROMPT_TAG_KEY),
                ).fetchone()[0]
                handle_resource_already_exist_error(name, is_prompt, IS_PROMPT_TAG_KEY in tags)
                raise MlflowException(f"Registered Model (name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
            conn.cursor().executemany(
                "INSERT INTO pgm_registered_model_tags (name, key, value) VALUES (%s, %s, %s)",
                [(name, k, v) for k, v in tags.items()],
            )
            return self._get_rm(conn, name)

    def update_registered_model(self, name, description, deployment_job_id=None):
        _validate_model_name(name)
        with self._conn(f"update registered model '{name}'") as conn, conn.transaction():
            if conn.execute(
                "UPDATE pgm_registered_models SET description = %s, last_updated_at = now() WHERE name = %s",
                (description, name),
            ).rowcount == 0:
                raise _not_found_rm(name)
            return self._get_rm(conn, name)

    def rename_registered_model(self, name, new_name):
        _validate_model_name(name)
        _validate_model_renaming(new_name)
        new_name = _name(new_name)
        with self._conn(f"rename registered model '{name}'") as conn, conn.transaction():
            if conn.execute("SELECT 1 FROM pgm_registered_models WHERE name = %s", (new_name,)).fetchone():
                raise MlflowException(f"Registered Model (name={new_name}) already exists.", RESOURCE_ALREADY_EXISTS)
            # foreign keys cascade the new name to versions, tags and aliases
            if conn.execute(
                "UPDATE pgm_registered_models SET name = %s, last_updated_at = now() WHERE name = %s",
                (new_name, name),
            ).rowcount == 0:
                raise _not_found_rm(name)
            conn.execute("UPDATE models SET last_updated_at = now() WHERE name = %s", (new_name,))
            return self._get_rm(conn, new_name)

    def delete_registered_model(self, name):
        _validate_model_name(name)
        with self._conn(f"delete registered model '{name}'") as conn:
            if conn.execute("DELETE FROM pgm_registered_models WHERE name = %s", (name,)).rowcount == 0:
                raise _not_found_rm(name)

    def get_registered_model(self, name):
        _validate_model_name(name)
        with self._conn(f"read registered model '{name}'") as conn:
            return self._get_rm(conn, name)

    def search_registered_models(self, filter_string=None, max_results=None, order_by=None, page_token=None):
        max_results = _max_results(max_results, SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
                                   SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD)
        where, params = [], []
        parsed = _parse_filter(SearchModelUtils, filter_string)
        for clause in parsed:
            sql, args = _clause(clause, {"name": "r.name"}, "pgm_registered_model_tags t WHERE t.name = r.name", {})
            where.append(sql)
            params += args
        if not any(c["type"] == "tag" and c["key"] == IS_PROMPT_TAG_KEY for c in parsed):
            where.append("NOT EXISTS (SELECT 1 FROM pgm_registered_model_tags t WHERE t.name = r.name"
                         " AND t.key = %s AND t.value = 'true')")
            params.append(IS_PROMPT_TAG_KEY)
        order = _order_by(order_by, _parse_rm_order, _RM_ORDER, ["r.name ASC"])
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        sql = (f"SELECT {_RM_COLUMNS} FROM pgm_registered_models r "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order} LIMIT %s OFFSET %s")
        with self._conn("search registered models") as conn:
            rows = conn.execute(sql, (*params, max_results + 1, offset)).fetchall()
            page = rows[:max_results]
            latest = self._latest_by_stage(conn, [r[0] for r in page], _ACTIVE_STAGES)
            models = [self._rm(conn, r, latest) for r in page]
        return PagedList(models, _next_token(len(rows) > max_results, offset + max_results))

    def get_latest_versions(self, name, stages=None):
        """The highest version per stage. No stages: per active stage, so ``latest`` = highest active.

        No stages asked for and every version inactive: an error that says so (MLflow would
        report "no versions" when it resolves ``models:/NAME/latest``).
        """
        _validate_model_name(name)
        any_stage = not stages  # None from Python, [] from REST
        stages = _ACTIVE_STAGES if any_stage else list(dict.fromkeys(get_canonical_stage(s) for s in stages))
        with self._conn(f"read latest versions of '{name}'") as conn:
            if not conn.execute("SELECT 1 FROM pgm_registered_models WHERE name = %s", (name,)).fetchone():
                raise _not_found_rm(name)
            latest = self._latest_by_stage(conn, [name], stages).get(name, [])
            if not latest and any_stage:
                inactive = conn.execute("SELECT count(*) FROM models WHERE name = %s", (name,)).fetchone()[0]
                if inactive:
                    raise _no_active_version(name, inactive)
            return latest

    def set_registered_model_tag(self, name, tag):
        _validate_model_name(name)
        _validate_registered_model_tag(tag.key, tag.value)
        with self._conn(f"tag registered model '{name}'") as conn, conn.transaction():
            self._touch_rm(conn, name)
            conn.execute(
                "INSERT INTO pgm_registered_model_tags (name, key, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value",
                (name, tag.key, tag.value),
            )

    def delete_registered_model_tag(self, name, key):
        _validate_model_name(name)
        with self._conn(f"delete a tag of registered model '{name}'") as conn, conn.transaction():
            self._touch_rm(conn, name)
            conn.execute("DELETE FROM pgm_registered_model_tags WHERE name = %s AND key = %s", (name, key))

    # ------------------------------------------------------------------ model versions
    def create_model_version(self, name, source, run_id=None, tags=None, run_link=None, description=None,
                             local_model_path=None, model_id=None):
        """Pack the files first, then insert the whole version in one transaction."""
        name = _name(name)
        source, run_id, run_link = _blank(source) or "", _blank(run_id), _blank(run_link)
        description, model_id = _blank(description), _blank(model_id)
        tags = _tags(tags)
        for key, value in tags.items():
            _validate_model_version_tag(key, value)
            if key in COLUMN_TAGS:
                _check_column_tag(key, value)
        model_id = model_id or sources.logged_model_id(source)
        run_id = run_id or sources.source_run_id(model_id, self.tracking_uri)
        row = {"name": name, "description": description, "source": redact(source), "run_id": run_id,
               "run_link": run_link, "model_id": model_id}

        copied_from = self._own_version(source)
        if copied_from is not None:
            return self._insert_version(row, tags, copy_of=copied_from)
        with sources.model_files(source, local_model_path, self.tracking_uri) as model_dir:
            if model_dir is None:
                return self._insert_version(row, tags, blob=None)
            with archive.pack(model_dir) as packed:
                return self._insert_version(row, tags, blob=packed)

    def _own_version(self, source: str) -> tuple[str, int] | None:
        """(name, version) when ``source`` is a version of this store: copied inside the database."""
        if source.startswith("pgmodels:/") and not is_pgmodels_uri(source):
            return parse_download_uri(source)
        if source.startswith("models:/") and not sources.logged_model_id(source):
            parts = source[len("models:/"):].strip("/").split("/")
            if len(parts) == 2 and parts[1].isdigit():
                return parts[0], int(parts[1])
        return None

    def _insert_version(self, row: dict, tags: dict, blob=None, copy_of: tuple[str, int] | None = None,
                        number: int | None = None, state: tuple | None = None) -> ModelVersion:
        name = row["name"]
        size = 0
        if blob is not None:
            size = os.fstat(blob.fileno()).st_size
            blobs.check_size(size, f"Model '{name}'")
        with self._conn(f"register a version of '{name}'") as conn, conn.transaction():
            got = conn.execute(
                "SELECT event, model_type FROM pgm_registered_models r"
                " LEFT JOIN LATERAL (SELECT max(value) FILTER (WHERE key = 'event') AS event,"
                "  max(value) FILTER (WHERE key = 'model_type') AS model_type"
                "  FROM pgm_registered_model_tags t WHERE t.name = r.name) x ON TRUE"
                " WHERE r.name = %s", (name,)).fetchone()
            if got is None:
                raise _not_found_rm(name)
            row["event"] = tags.pop("event", None) or got[0] or DEFAULT_EVENT
            row["model_type"] = tags.pop("model_type", None) or got[1] or DEFAULT_MODEL_TYPE
            for key in COLUMN_TAGS:
                _check_column_tag(key, row[key])
            if number is not None:
                version = number  # the models insert trigger moves next_version past it
            else:
                # the row lock on the registered model serializes registrations of one name
                version = conn.execute(
                    "UPDATE pgm_registered_models SET next_version = next_version + 1, last_updated_at = now()"
                    " WHERE name = %s RETURNING next_version - 1", (name,)).fetchone()[0]
            if copy_of is not None:
                src_name, src_version = copy_of
                copied = conn.execute(
                    "INSERT INTO models (name, version, model_type, event, model_binary, description, source,"
                    " run_id, run_link, model_id, format, sha256, size_bytes)"
                    " SELECT %s, %s, %s, %s, model_binary, %s, %s, %s, %s, coalesce(%s, model_id), format, sha256,"
                    " size_bytes FROM models WHERE name = %s AND version = %s",
                    (name, version, row["model_type"], row["event"], row["description"], row["source"],
                     row["run_id"], row["run_link"], row["model_id"], src_name, src_version)).rowcount
                if not copied:
                    raise _not_found_mv(src_name, src_version)
            elif blob is None:
                conn.execute(
                    "INSERT INTO models (name, version, model_type, event, model_binary, description, source,"
                    " run_id, run_link, model_id, format, sha256, size_bytes)"
                    " VALUES (%s, %s, %s, %s, '', %s, %s, %s, %s, %s, 'none', %s, 0)",
                    (name, version, row["model_type"], row["event"], row["description"], row["source"],
                     row["run_id"], row["run_link"], row["model_id"], _EMPTY_SHA256))
            else:
                blobs.copy_row_with_blob(
                    conn, "models",
                    {"name": name, "version": blobs.Int4(version), "model_type": row["model_type"],
                     "event": row["event"], "description": row["description"], "source": row["source"],
                     "run_id": row["run_id"], "run_link": row["run_link"], "model_id": row["model_id"],
                     "format": "mlflow-zip", "size_bytes": size},
                    "model_binary", blob, size, "sha256", progress=f"Uploading {name} v{version}")
            if tags:
                conn.cursor().executemany(
                    "INSERT INTO pgm_model_version_tags (name, version, key, value) VALUES (%s, %s, %s, %s)",
                    [(name, version, k, v) for k, v in tags.items()])
            if state is not None:
                active, stage, user_id, created_ms = state
                conn.execute(
                    "UPDATE models SET is_active = %s, stage = %s, user_id = %s,"
                    " created_at = coalesce(to_timestamp(%s::bigint / 1000.0), created_at)"
                    " WHERE name = %s AND version = %s",
                    (active, stage, user_id, created_ms, name, version))
            return self._get_mv(conn, name, version)

    def import_model_version(self, mv: ModelVersion, local_model_path: str | None) -> ModelVersion:
        """Insert a version copied from another MLflow registry under its own number (import-registry).

        Keeps its stage (Archived: inactive), tags, description, run id, user and creation time;
        not its LoggedModel id, which belongs to the other tracking store. Later registrations
        continue after the highest number, so gaps from deleted versions stay gaps. A number
        that is taken fails with RESOURCE_ALREADY_EXISTS.
        """
        name = _name(mv.name)
        tags = _tags(mv.tags)
        for key, value in tags.items():
            _validate_model_version_tag(key, value)
        stage = get_canonical_stage(mv.current_stage or STAGE_NONE)
        archived = stage == STAGE_ARCHIVED
        row = {"name": name, "description": _blank(mv.description), "source": redact(mv.source or ""),
               "run_id": _blank(mv.run_id), "run_link": _blank(mv.run_link), "model_id": None}
        state = (not archived, STAGE_NONE if archived else stage, _blank(mv.user_id), mv.creation_timestamp)
        if local_model_path is None:
            return self._insert_version(row, tags, number=_version(mv.version), state=state)
        with archive.pack(local_model_path) as packed:
            return self._insert_version(row, tags, blob=packed, number=_version(mv.version), state=state)

    def _await_model_version_creation(self, mv, await_creation_for):
        """Versions are READY when create_model_version returns: nothing to wait for."""

    def update_model_version(self, name, version, description):
        _validate_model_name(name)
        version = _version(version)
        with self._conn(f"update model '{name}' version {version}") as conn, conn.transaction():
            if conn.execute(
                "UPDATE models SET description = %s, last_updated_at = now() WHERE name = %s AND version = %s",
                (description, name, version),
            ).rowcount == 0:
                raise _not_found_mv(name, version)
            return self._get_mv(conn, name, version)

    def transition_model_version_stage(self, name, version, stage, archive_existing_versions):
        _validate_model_name(name)
        version = _version(version)
        stage = get_canonical_stage(stage)
        if archive_existing_versions and stage not in DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS:
            raise MlflowException(
                f"Model version transition cannot archive existing model versions because '{stage}' is "
                f"not an Active stage. Valid stages are {DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS}",
                INVALID_PARAMETER_VALUE)
        with self._conn(f"change the stage of model '{name}' version {version}") as conn, conn.transaction():
            # lock the registered model: concurrent transitions of one name run one after another
            if not conn.execute("SELECT 1 FROM pgm_registered_models WHERE name = %s FOR UPDATE", (name,)).fetchone():
                raise _not_found_rm(name)
            active = stage != STAGE_ARCHIVED
            if conn.execute(
                "UPDATE models SET is_active = %s, stage = %s, last_updated_at = now()"
                " WHERE name = %s AND version = %s",
                (active, stage if active else STAGE_NONE, name, version),
            ).rowcount == 0:
                raise _not_found_mv(name, version)
            if archive_existing_versions:
                conn.execute(
                    "UPDATE models SET is_active = false, stage = 'None', last_updated_at = now()"
                    " WHERE name = %s AND version <> %s AND is_active IS NOT FALSE AND stage = %s",
                    (name, version, stage))
            self._touch_rm(conn, name)
            return self._get_mv(conn, name, version)

    def delete_model_version(self, name, version):
        """Deletes the row; its number is not given out again (the counter stays where it is)."""
        _validate_model_name(name)
        version = _version(version)
        with self._conn(f"delete model '{name}' version {version}") as conn, conn.transaction():
            if conn.execute("DELETE FROM models WHERE name = %s AND version = %s", (name, version)).rowcount == 0:
                raise _not_found_mv(name, version)
            self._touch_rm(conn, name)

    def get_model_version(self, name, version):
        _validate_model_name(name)
        version = _version(version)
        with self._conn(f"read model '{name}' version {version}") as conn:
            return self._get_mv(conn, name, version)

    def get_model_version_download_uri(self, name, version):
        _validate_model_name(name)
        version = _version(version)
        with self._conn(f"read model '{name}' version {version}") as conn:
            if not conn.execute("SELECT 1 FROM models WHERE name = %s AND version = %s", (name, version)).fetchone():
                raise _not_found_mv(name, version)
        return download_uri(name, version)

    def search_model_versions(self, filter_string=None, max_results=None, order_by=None, page_token=None):
        max_results = _max_results(max_results, SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
                                   SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD)
        where, params = [], []
        parsed = _parse_filter(SearchModelVersionUtils, filter_string)
        columns = {"name": "m.name", "version_number": "m.version", "run_id": "m.run_id", "source_path": "m.source"}
        for clause in parsed:
            sql, args = _clause(clause, columns,
                                "pgm_model_version_tags t WHERE t.name = m.name AND t.version = m.version",
                                {"event": "m.event", "model_type": "m.model_type"})
            where.append(sql)
            params += args
        if not any(c["type"] == "tag" and c["key"] == IS_PROMPT_TAG_KEY for c in parsed):
            where.append("NOT EXISTS (SELECT 1 FROM pgm_model_version_tags t WHERE t.name = m.name"
                         " AND t.version = m.version AND t.key = %s AND t.value = 'true')")
            params.append(IS_PROMPT_TAG_KEY)
        order = _order_by(order_by, _parse_mv_order, _MV_ORDER,
                          ["m.last_updated_at DESC", "m.name ASC", "m.version DESC"])
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        sql = (f"SELECT {_MV_COLUMNS} FROM models m {'WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY {order} LIMIT %s OFFSET %s")
        with self._conn("search model versions") as conn:
            rows = conn.execute(sql, (*params, max_results + 1, offset)).fetchall()
        page = [self._mv(r) for r in rows[:max_results]]
        return PagedList(page, _next_token(len(rows) > max_results, offset + max_results))

    def set_model_version_tag(self, name, version, tag):
        version = _version(version)
        _validate_model_name(name)
        _validate_model_version_tag(tag.key, tag.value)
        with self._conn(f"tag model '{name}' version {version}") as conn, conn.transaction():
            if tag.key in COLUMN_TAGS:
                _check_column_tag(tag.key, tag.value)
                updated = conn.execute(
                    f"UPDATE models SET {tag.key} = %s, last_updated_at = now() WHERE name = %s AND version = %s",
                    (tag.value, name, version)).rowcount
            else:
                updated = conn.execute(
                    "UPDATE models SET last_updated_at = now() WHERE name = %s AND version = %s",
                    (name, version)).rowcount
                if updated:
                    conn.execute(
                        "INSERT INTO pgm_model_version_tags (name, version, key, value) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (name, version, key) DO UPDATE SET value = EXCLUDED.value",
                        (name, version, tag.key, tag.value))
            if not updated:
                raise _not_found_mv(name, version)

    def delete_model_version_tag(self, name, version, key):
        """Deleting ``event`` or ``model_type`` resets the column to its default."""
        version = _version(version)
        _validate_model_name(name)
        with self._conn(f"delete a tag of model '{name}' version {version}") as conn, conn.transaction():
            if key in COLUMN_TAGS:
                sql = f"UPDATE models SET {key} = %s, last_updated_at = now() WHERE name = %s AND version = %s"
                updated = conn.execute(sql, (_DEFAULTS[key], name, version)).rowcount
            else:
                updated = conn.execute(
                    "UPDATE models SET last_updated_at = now() WHERE name = %s AND version = %s",
                    (name, version)).rowcount
                conn.execute("DELETE FROM pgm_model_version_tags WHERE name = %s AND version = %s AND key = %s",
                             (name, version, key))
            if not updated:
                raise _not_found_mv(name, version)

    # ------------------------------------------------------------------ aliases
    def set_registered_model_alias(self, name, alias, version):
        _validate_model_name(name)
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
        version = _version(version)
        with self._conn(f"set alias '{alias}' of '{name}'") as conn, conn.transaction():
            if not conn.execute("SELECT 1 FROM models WHERE name = %s AND version = %s", (name, version)).fetchone():
                raise _not_found_mv(name, version)
            conn.execute(
                "INSERT INTO pgm_aliases (name, alias, version) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, alias) DO UPDATE SET version = EXCLUDED.version", (name, alias, version))
            self._touch_rm(conn, name)

    def delete_registered_model_alias(self, name, alias):
        _validate_model_name(name)
        _validate_model_alias_name(alias)
        with self._conn(f"delete alias '{alias}' of '{name}'") as conn, conn.transaction():
            self._touch_rm(conn, name)
            conn.execute("DELETE FROM pgm_aliases WHERE name = %s AND alias = %s", (name, alias))

    def get_model_version_by_alias(self, name, alias):
        _validate_model_name(name)
        _validate_model_alias_name(alias)
        if alias.lower() == "latest":
            latest = self.get_latest_versions(name)
            if not latest:
                raise _no_active_version(name, 0)
            return max(latest, key=lambda mv: int(mv.version))
        with self._conn(f"read alias '{alias}' of '{name}'") as conn:
            row = conn.execute("SELECT version FROM pgm_aliases WHERE name = %s AND alias = %s", (name, alias)).fetchone()
            if row is None:
                if not conn.execute("SELECT 1 FROM pgm_registered_models WHERE name = %s", (name,)).fetchone():
                    raise _not_found_rm(name)
                raise MlflowException(f"Registered model alias {alias} not found.", INVALID_PARAMETER_VALUE)
            return self._get_mv(conn, name, row[0])


# ---------------------------------------------------------------------- search helpers
_ACTIVE_STAGES = [s for s in ALL_STAGES if s != STAGE_ARCHIVED]
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "LIKE": "LIKE", "ILIKE": "ILIKE"}


def _clause(clause: dict, columns: dict[str, str], tag_from: str, tag_columns: dict[str, str]) -> tuple[str, list]:
    """One parsed MLflow filter clause as SQL with parameters (values are never put in the SQL)."""
    kind, key, op, value = clause["type"], clause["key"], clause["comparator"].upper(), clause["value"]
    if kind == "attribute":
        column = columns.get(key)
        if column is None:
            raise MlflowException.invalid_parameter_value(f"Invalid attribute key '{key}' in filter")
        if op in ("IN", "NOT IN"):
            sql = f"{column} = ANY(%s)" if op == "IN" else f"NOT ({column} = ANY(%s))"
            return sql, [list(value)]
        if op not in _SQL_OPS:
            raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for attribute '{key}'")
        if key == "version_number":
            if op in ("LIKE", "ILIKE"):
                raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for version_number")
            return f"{column} {_SQL_OPS[op]} %s", [_version_in_filter(value)]
        return f"{column} {_SQL_OPS[op]} %s", [value]
    if kind == "tag":
        if op not in ("=", "!=", "LIKE", "ILIKE"):
            raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for tag '{key}'")
        if key in tag_columns:
            return f"{tag_columns[key]} {_SQL_OPS[op]} %s", [value]
        if key == IS_PROMPT_TAG_KEY and (op, value) in (("!=", "true"), ("=", "false")):
            # models without the tag are not prompts (as in MLflow's own stores)
            return (f"NOT EXISTS (SELECT 1 FROM {tag_from} AND t.key = %s AND t.value IS DISTINCT FROM %s)",
                    [key, "false"])
        return f"EXISTS (SELECT 1 FROM {tag_from} AND t.key = %s AND t.value {_SQL_OPS[op]} %s)", [key, value]
    raise MlflowException.invalid_parameter_value(f"Invalid search expression type '{kind}'")


def _parse_filter(utils, filter_string: str | None) -> list[dict]:
    """MLflow's parse of a filter string; the ValueErrors its parser lets out become 400s too."""
    try:
        return utils.parse_search_filter(filter_string or "")
    except MlflowException:
        raise
    except (ValueError, TypeError, IndexError) as e:
        raise MlflowException.invalid_parameter_value(f"Invalid filter {filter_string!r}: {e}") from None


def _version_in_filter(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MlflowException.invalid_parameter_value(
            f"Invalid version_number {value!r} in filter: expected a whole number") from None


def _parse_rm_order(text: str) -> tuple[str, bool]:
    return SearchUtils.parse_order_by_for_search_registered_models(text)


def _parse_mv_order(text: str) -> tuple[str, bool]:
    kind, key, ascending = SearchModelVersionUtils.parse_order_by_for_search_model_versions(text)
    if kind != "attribute":
        raise MlflowException.invalid_parameter_value(f"Invalid order_by entity: {kind}")
    return key, ascending


def _order_by(order_by, parse, columns: dict[str, str], default: list[str]) -> str:
    terms, seen = [], set()
    for text in order_by or []:
        key, ascending = parse(text)
        if columns[key] not in seen:
            seen.add(columns[key])
            terms.append(f"{columns[key]} {'ASC' if ascending else 'DESC'}")
    for term in default:  # tie-breakers, as in MLflow's own store
        if term.split()[0] not in seen:
            seen.add(term.split()[0])
            terms.append(term)
    return ", ".join(terms)


def _max_results(value, default: int, threshold: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value <= 0 or value > threshold:
        raise MlflowException.invalid_parameter_value(
            f"Invalid value for max_results. It must be a positive integer of at most {threshold}, but got {value!r}")
    return value


def _next_token(more: bool, offset: int) -> str | None:
    if not more:
        return None
    token = SearchUtils.create_page_token(offset)
    return token.decode() if isinstance(token, bytes) else token
