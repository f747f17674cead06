"""MLflow's model registry on the ``models`` table: one row per version, the model in ``model_binary``.

This module maps MLflow's registry API (``AbstractStore``) onto the tables; the parts live
beside it: entities.py (rows ⇄ MLflow entities), search.py (filters, order, pages, ``latest``),
versions.py (how a version is written), models_table.py (the one writer of a version's row and
the existence checks), column_tags.py (``event`` / ``model_type``),
webhooks.py (the webhook API). docs/design.md has the whole scheme:

* ``version`` is the row's ``version``: gap-free per name and never reused.
* the stage is ``is_active``: false is ``Archived``; an active row's stage is ``models.stage``.
* ``latest`` is the highest active version.
* the tags ``event`` and ``model_type`` are the columns of the same names; other tags, aliases
  and registered-model data live in ``pgm_*`` tables.
"""

from __future__ import annotations

import contextlib

from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.model_registry.model_version_stages import (
    DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS,
    STAGE_ARCHIVED,
    STAGE_NONE,
    get_canonical_stage,
)
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.model_registry.abstract_store import AbstractStore
from psycopg.rows import dict_row

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels._events.webhooks import WebhookStoreMixin
from mlflow_pgmodels._mlflow import (
    validate_alias_name,
    validate_alias_name_reserved,
    validate_model_name,
    validate_model_renaming,
    validate_model_version_tag,
    validate_registered_model_tag,
    validate_tag_name,
)
from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.reads import read_connection
from mlflow_pgmodels._pg.schema import ensure_schema, read_as_found, seed_era_is_read_only
from mlflow_pgmodels._pg.uri import download_uri, redact, to_conninfo
from mlflow_pgmodels._registry import actor, column_tags, search, sources, versions
from mlflow_pgmodels._registry.arguments import blank as _blank
from mlflow_pgmodels._registry.arguments import name as _name
from mlflow_pgmodels._registry.arguments import tags as _tags
from mlflow_pgmodels._registry.arguments import version as _version
from mlflow_pgmodels._registry.entities import (
    ACTIVE_SQL,
    MV_COLUMNS,
    RM_COLUMNS,
    model_not_found,
    model_version,
    no_active_version,
    registered_model,
    version_not_found,
)
from mlflow_pgmodels._registry.models_table import MODELS
from mlflow_pgmodels._settings import refuse_workspaces


class PgModelsRegistryStore(WebhookStoreMixin, AbstractStore):
    """The ``pgmodels://`` model registry store."""

    def __init__(self, store_uri: str | None = None, tracking_uri: str | None = None) -> None:
        _mlflow.require()  # an MLflow without what the store needs: say so here, not a silent unregistered scheme
        _mlflow.tolerate_half_imported_auth_module()
        super().__init__(store_uri=store_uri, tracking_uri=tracking_uri)
        refuse_workspaces()
        to_conninfo(store_uri)  # a clear error for a URI of another scheme
        self.store_uri = store_uri
        self.tracking_uri = tracking_uri
        ensure_schema(store_uri)

    def __repr__(self) -> str:
        return f"PgModelsRegistryStore({redact(self.store_uri)!r})"

    def _read(self, what: str):
        """A connection for reads: a hot standby's when MLFLOW_PGMODELS_READ_URI names one (db.read_connection);
        a seed-era table the role may not upgrade is read as it is (reads.py)."""
        return read_connection(self.store_uri, what)

    @contextlib.contextmanager
    def _write(self, what: str):
        """A connection in a transaction that names the MLflow user for the history."""
        if read_as_found(self.store_uri):
            raise seed_era_is_read_only(what, self.store_uri)
        with connection(self.store_uri, what) as conn, conn.transaction():
            actor.mark(conn)
            yield conn

    def _get_rm(self, conn, name: str):
        row = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {RM_COLUMNS} FROM pgm_registered_models r WHERE r.name = %s", (name,)).fetchone()
        if row is None:
            raise model_not_found(name)
        latest = search.latest_by_stage(conn, [name], search.ACTIVE_STAGES)
        return registered_model(row, [model_version(r) for r in latest])

    def _get_mv(self, conn, name: str, version: int) -> ModelVersion:
        row = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {MV_COLUMNS} FROM models m WHERE m.name = %s AND m.version = %s", (name, version)).fetchone()
        if row is None:
            raise version_not_found(name, version)
        return model_version(row)

    # ------------------------------------------------------------------ registered models
    def create_registered_model(self, name, tags=None, description=None, deployment_job_id=None):
        name = _name(name)
        tags = _tags(tags)
        for key, value in tags.items():
            validate_registered_model_tag(key, value)
        with self._write(f"create registered model '{name}'") as conn:
            inserted = conn.execute(
                "INSERT INTO pgm_registered_models (name, description) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (name, _blank(description)),
            ).rowcount
            if not inserted:
                from mlflow.prompt.registry_utils import handle_resource_already_exist_error

                handle_resource_already_exist_error(name, search.is_prompt(conn, name), IS_PROMPT_TAG_KEY in tags)
                raise MlflowException(f"Registered Model (name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
            conn.cursor().executemany(
                "INSERT INTO pgm_registered_model_tags (name, key, value) VALUES (%s, %s, %s)",
                [(name, k, v) for k, v in tags.items()],
            )
            return self._get_rm(conn, name)

    def update_registered_model(self, name, description, deployment_job_id=None):
        validate_model_name(name)
        with self._write(f"update registered model '{name}'") as conn:
            if conn.execute(
                "UPDATE pgm_registered_models SET description = %s, last_updated_at = now() WHERE name = %s",
                (description, name),
            ).rowcount == 0:
                raise model_not_found(name)
            return self._get_rm(conn, name)

    def rename_registered_model(self, name, new_name):
        validate_model_name(name)
        validate_model_renaming(new_name)
        new_name = _name(new_name)
        with self._write(f"rename registered model '{name}'") as conn:
            if MODELS.registered_model_exists(conn, new_name):
                raise MlflowException(f"Registered Model (name={new_name}) already exists.", RESOURCE_ALREADY_EXISTS)
            # foreign keys cascade the new name to versions, tags and aliases
            if conn.execute(
                "UPDATE pgm_registered_models SET name = %s, last_updated_at = now() WHERE name = %s",
                (new_name, name),
            ).rowcount == 0:
                raise model_not_found(name)
            conn.execute("UPDATE models SET last_updated_at = now() WHERE name = %s", (new_name,))
            return self._get_rm(conn, new_name)

    def delete_registered_model(self, name):
        validate_model_name(name)
        with self._write(f"delete registered model '{name}'") as conn:
            if conn.execute("DELETE FROM pgm_registered_models WHERE name = %s", (name,)).rowcount == 0:
                raise model_not_found(name)

    def get_registered_model(self, name):
        validate_model_name(name)
        with self._read(f"read registered model '{name}'") as conn:
            return self._get_rm(conn, name)

    def search_registered_models(self, filter_string=None, max_results=None, order_by=None, page_token=None):
        sql, params, max_results, offset = search.registered_models_sql(filter_string, max_results, order_by,
                                                                        page_token)
        with self._read("search registered models") as conn:
            rows = conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
            page = rows[:max_results]
            latest: dict[str, list[ModelVersion]] = {}
            for row in search.latest_by_stage(conn, [r["name"] for r in page], search.ACTIVE_STAGES):
                latest.setdefault(row["name"], []).append(model_version(row))
        models = [registered_model(r, latest.get(r["name"])) for r in page]
        return PagedList(models, search.next_page_token(len(rows), max_results, offset))

    def get_latest_versions(self, name, stages=None):
        """The highest version per stage. No stages: per active stage, so ``latest`` = highest active.

        No stages asked for and every version inactive: an error that says so (MLflow would
        report "no versions" when it resolves ``models:/NAME/latest``).
        """
        validate_model_name(name)
        any_stage = not stages  # None from Python, [] from REST
        stages = search.ACTIVE_STAGES if any_stage else list(dict.fromkeys(get_canonical_stage(s) for s in stages))
        with self._read(f"read latest versions of '{name}'") as conn:
            MODELS.require_registered_model(conn, name)
            latest = [model_version(r) for r in search.latest_by_stage(conn, [name], stages)]
            if not latest and any_stage:
                inactive = conn.execute("SELECT count(*) FROM models WHERE name = %s", (name,)).fetchone()[0]
                if inactive:
                    raise no_active_version(name, inactive)
            return latest

    def set_registered_model_tag(self, name, tag):
        validate_model_name(name)
        validate_registered_model_tag(tag.key, tag.value)
        with self._write(f"tag registered model '{name}'") as conn:
            MODELS.touch_registered_model(conn, name)
            conn.execute(
                "INSERT INTO pgm_registered_model_tags (name, key, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value",
                (name, tag.key, tag.value),
            )

    def delete_registered_model_tag(self, name, key):
        validate_model_name(name)
        validate_tag_name(key)
        with self._write(f"delete a tag of registered model '{name}'") as conn:
            MODELS.touch_registered_model(conn, name)
            conn.execute("DELETE FROM pgm_registered_model_tags WHERE name = %s AND key = %s", (name, key))

    # ------------------------------------------------------------------ model versions
    def create_model_version(self, name, source, run_id=None, tags=None, run_link=None, description=None,
                             local_model_path=None, model_id=None):
        """Pack the files first (no transaction open meanwhile), then write the version."""
        name = _name(name)
        source, model_id = _blank(source) or "", _blank(model_id)
        tags = _tags(tags)
        for key, value in tags.items():
            validate_model_version_tag(key, value)
        column_tags.split(tags)  # refuse bad event / model_type values before anything moves
        model_id = model_id or sources.logged_model_id(source)
        tracking = sources.Tracking(self.tracking_uri)
        new = versions.NewVersion(
            name=name, source=redact(source), run_id=_blank(run_id) or tracking.source_run_id(model_id),
            run_link=_blank(run_link), description=_blank(description), model_id=model_id, tags=tags)
        copied_from = sources.own_version(source)
        if copied_from is not None:
            return versions.copy(self.store_uri, new, *copied_from)
        in_database = sources.database_artifacts(source, tracking)
        if in_database is not None:  # log_model's files are here already: nothing travels again
            registered = versions.from_artifacts(self.store_uri, new, in_database)
            if registered is not None:
                return registered
        with sources.model_files(source, local_model_path, tracking) as model_dir:
            if model_dir is None:
                return versions.without_files(self.store_uri, new)
            return versions.upload(self.store_uri, new, model_dir)

    def import_model_version(self, mv: ModelVersion, local_model_path: str | None) -> ModelVersion:
        """Insert a version copied from another MLflow registry under its own number (import-registry).

        Keeps its stage (Archived: inactive), tags, description, run id, user and creation time;
        not its LoggedModel id, which belongs to the other tracking store. Later registrations
        continue after the highest number, so gaps from deleted versions stay gaps. A number
        that is taken fails with RESOURCE_ALREADY_EXISTS.
        """
        tags = _tags(mv.tags)
        for key, value in tags.items():
            validate_model_version_tag(key, value)
        stage = get_canonical_stage(mv.current_stage or STAGE_NONE)
        archived = stage == STAGE_ARCHIVED
        new = versions.NewVersion(name=_name(mv.name), source=redact(mv.source or ""), run_id=_blank(mv.run_id),
                                  run_link=_blank(mv.run_link), description=_blank(mv.description), tags=tags)
        state = versions.ImportedState(active=not archived, stage=STAGE_NONE if archived else stage,
                                       user_id=_blank(mv.user_id), created_ms=mv.creation_timestamp)
        return versions.import_numbered(self.store_uri, new, _version(mv.version), state, local_model_path)

    def _await_model_version_creation(self, mv, await_creation_for):
        """Versions are READY when create_model_version returns: nothing to wait for."""

    def update_model_version(self, name, version, description):
        validate_model_name(name)
        version = _version(version)
        with self._write(f"update model '{name}' version {version}") as conn:
            MODELS.touch(conn, name, version, {"description": description})
            return self._get_mv(conn, name, version)

    def transition_model_version_stage(self, name, version, stage, archive_existing_versions):
        validate_model_name(name)
        version = _version(version)
        stage = get_canonical_stage(stage)
        if archive_existing_versions and stage not in DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS:
            raise MlflowException(
                f"Model version transition cannot archive existing model versions because '{stage}' is "
                f"not an Active stage. Valid stages are {DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS}",
                INVALID_PARAMETER_VALUE)
        with self._write(f"change the stage of model '{name}' version {version}") as conn:
            # concurrent transitions of one name run one after another; NO KEY: an upload in
            # flight (which holds a key-share lock on the row) does not hold this up
            MODELS.require_registered_model(conn, name, lock=True)
            active = stage != STAGE_ARCHIVED
            MODELS.touch(conn, name, version, {"is_active": active, "stage": stage if active else STAGE_NONE})
            if archive_existing_versions:
                conn.execute(
                    "UPDATE models SET is_active = false, stage = 'None', last_updated_at = now()"
                    f" WHERE name = %s AND version <> %s AND {ACTIVE_SQL} AND stage = %s",
                    (name, version, stage))
            MODELS.touch_registered_model(conn, name)
            return self._get_mv(conn, name, version)

    def delete_model_version(self, name, version):
        """Deletes the row; its number is not given out again (the counter stays where it is)."""
        validate_model_name(name)
        version = _version(version)
        with self._write(f"delete model '{name}' version {version}") as conn:
            if conn.execute("DELETE FROM models WHERE name = %s AND version = %s", (name, version)).rowcount == 0:
                raise version_not_found(name, version)
            MODELS.touch_registered_model(conn, name)

    def delete_model_versions_checked(self, name: str, pick) -> list[int]:
        """Delete the versions of ``name`` that ``pick(conn)`` returns, in one transaction (``mlflow-pgmodels prune``).

        ``pick`` runs twice: once with the registered model's row locked (registrations of the name,
        stage changes and aliases wait), once more with the picked versions' rows locked too (tag
        and description changes wait); only versions picked both times are deleted. So a change
        committed meanwhile by anyone is seen before anything goes. History, webhooks and
        governance triggers see each delete, as with :meth:`delete_model_version`.
        """
        validate_model_name(name)
        with self._write(f"delete versions of model '{name}'") as conn:
            if not MODELS.registered_model_exists(conn, name, lock=True):
                return []
            first = pick(conn)
            if not first:
                return []
            conn.execute("SELECT 1 FROM models WHERE name = %s AND version = ANY(%s) FOR UPDATE", (name, first))
            chosen = sorted(set(first) & set(pick(conn)))
            if chosen:
                conn.execute("DELETE FROM models WHERE name = %s AND version = ANY(%s)", (name, chosen))
                MODELS.touch_registered_model(conn, name)
            return chosen

    def get_model_version(self, name, version):
        validate_model_name(name)
        version = _version(version)
        with self._read(f"read model '{name}' version {version}") as conn:
            return self._get_mv(conn, name, version)

    def get_model_version_download_uri(self, name, version):
        validate_model_name(name)
        version = _version(version)
        with self._read(f"read model '{name}' version {version}") as conn:
            MODELS.require_version(conn, name, version)
        return download_uri(name, version)

    def search_model_versions(self, filter_string=None, max_results=None, order_by=None, page_token=None):
        sql, params, max_results, offset = search.model_versions_sql(filter_string, max_results, order_by,
                                                                     page_token)
        with self._read("search model versions") as conn:
            rows = conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
        page = [model_version(r) for r in rows[:max_results]]
        return PagedList(page, search.next_page_token(len(rows), max_results, offset))

    def set_model_version_tag(self, name, version, tag):
        version = _version(version)
        validate_model_name(name)
        validate_model_version_tag(tag.key, tag.value)
        with self._write(f"tag model '{name}' version {version}") as conn:
            if column_tags.is_column_tag(tag.key):
                column_tags.check(tag.key, tag.value)
                MODELS.touch(conn, name, version, {tag.key: tag.value})
                return
            MODELS.touch(conn, name, version)
            conn.execute(
                "INSERT INTO pgm_model_version_tags (name, version, key, value) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name, version, key) DO UPDATE SET value = EXCLUDED.value",
                (name, version, tag.key, tag.value))

    def delete_model_version_tag(self, name, version, key):
        """Deleting ``event`` or ``model_type`` resets the column to its default."""
        version = _version(version)
        validate_model_name(name)
        validate_tag_name(key)
        with self._write(f"delete a tag of model '{name}' version {version}") as conn:
            if column_tags.is_column_tag(key):
                MODELS.touch(conn, name, version, {key: column_tags.default(key)})
                return
            MODELS.touch(conn, name, version)
            conn.execute("DELETE FROM pgm_model_version_tags WHERE name = %s AND version = %s AND key = %s",
                         (name, version, key))

    # ------------------------------------------------------------------ aliases
    def set_registered_model_alias(self, name, alias, version):
        validate_model_name(name)
        validate_alias_name(alias)
        validate_alias_name_reserved(alias)
        version = _version(version)
        with self._write(f"set alias '{alias}' of '{name}'") as conn:
            MODELS.require_version(conn, name, version)
            conn.execute(
                "INSERT INTO pgm_aliases (name, alias, version) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, alias) DO UPDATE SET version = EXCLUDED.version", (name, alias, version))
            MODELS.touch_registered_model(conn, name)

    def delete_registered_model_alias(self, name, alias):
        validate_model_name(name)
        validate_alias_name(alias)
        with self._write(f"delete alias '{alias}' of '{name}'") as conn:
            MODELS.touch_registered_model(conn, name)
            conn.execute("DELETE FROM pgm_aliases WHERE name = %s AND alias = %s", (name, alias))

    def get_model_version_by_alias(self, name, alias):
        validate_model_name(name)
        validate_alias_name(alias)
        with self._read(f"read alias '{alias}' of '{name}'") as conn:
            if alias.lower() == "latest":
                version = search.latest_active_version(conn, name)
                if version is None:
                    MODELS.require_registered_model(conn, name)
                    raise no_active_version(name, conn.execute(
                        "SELECT count(*) FROM models WHERE name = %s", (name,)).fetchone()[0])
                return self._get_mv(conn, name, version)
            row = conn.cursor(row_factory=dict_row).execute(
                "SELECT version FROM pgm_aliases WHERE name = %s AND alias = %s", (name, alias)).fetchone()
            if row is None:
                MODELS.require_registered_model(conn, name)
                raise MlflowException(f"Registered model alias {alias} not found.", INVALID_PARAMETER_VALUE)
            return self._get_mv(conn, name, row["version"])
