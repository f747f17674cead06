"""Privileges in the database itself: history is written only by the change it records, and
the reader role sees what a predict job needs and no webhook URL or secret.

Every SECURITY DEFINER function is found in pg_proc (never a hard-coded list) and called as the
reader, the writer and a login role with no grants at all, as a forger would call it.
"""

from __future__ import annotations

import itertools

import psycopg
import pytest
from psycopg import errors

from mlflow_pgmodels._pg.schema import upgrade
from tests import sample

_counter = itertools.count()
# Plausible arguments, by type: what a forger would pass (a version that does not exist).
FORGED_ARGUMENTS = {"text": "'churn'", "integer": "7", "jsonb": """'{"alias": "champion", "version": 7}'""",
                    "integer[]": "'{7}'", "xid8": "'1'", "boolean": "true"}
# Who may call which SECURITY DEFINER function: no one but its owner (they are trigger functions).
MAY_CALL: dict[str, set[str]] = {}
SECRETS = ("pgm_webhooks", "pgm_webhook_events", "pgm_webhook_deliveries", "webhooks", "webhook_events", "secrets")
READER_TABLES = {
    "models", "pgm_registered_models", "pgm_registered_model_tags", "pgm_model_version_tags", "pgm_aliases",
    "pgm_version_files", "pgm_artifacts", "pgm_blobs", "pgm_blob_pieces", "pgm_history", "pgm_schema_info",
    "alembic_version", "experiments", "experiment_tags", "runs", "tags", "params", "metrics", "latest_metrics",
    "datasets", "inputs", "input_tags", "logged_models", "logged_model_tags", "logged_model_params",
    "logged_model_metrics"}


def _security_definer_functions(db) -> list[tuple[str, str]]:
    """(signature, a call with forged arguments) of every SECURITY DEFINER function outside the catalog."""
    rows = db.sql(
        "SELECT p.oid::regprocedure::text, quote_ident(n.nspname) || '.' || quote_ident(p.proname),"
        "       ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i)"
        "             ORDER BY i)"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
    return [(signature, f"SELECT {name}({', '.join(_forged(t) for t in types)})") for signature, name, types in rows]


def _forged(type_name: str) -> str:
    return f"{FORGED_ARGUMENTS.get(type_name, 'NULL')}::{type_name}"


def _logins(db) -> dict[str, str]:
    """postgresql:// URIs of a reader, a writer and a login role with no grants."""
    uris = {}
    for group in ("pgmodels_reader", "pgmodels_writer"):
        user, password = db.login_role(group)
        uris[group] = db.server.tcp_uri(db.name, user, password, scheme="postgresql")
    nobody = f"nobody_{db.name}_{next(_counter)}"
    db.sql(f"CREATE ROLE {nobody} LOGIN PASSWORD 'pw-nobody-s3cret'")
    uris["no grants"] = db.server.tcp_uri(db.name, nobody, "pw-nobody-s3cret", scheme="postgresql")
    return uris


def _webhook_for_everything(db) -> None:
    """An active webhook subscribed to alias and version events and to every other change."""
    db.sql("INSERT INTO pgm_webhooks (webhook_id, name, url, all_changes, creation_timestamp)"
           " VALUES ('w1', 'ci', 'https://example.org/hook', true, 0) ON CONFLICT DO NOTHING")
    db.sql("INSERT INTO pgm_webhook_events (webhook_id, entity, action) VALUES"
           " ('w1', 'model_version_alias', 'created'), ('w1', 'model_version', 'created') ON CONFLICT DO NOTHING")


def _written(db) -> tuple:
    return (db.sql("SELECT id, db_user, name, version, action FROM pgm_history ORDER BY id"),
            db.sql("SELECT history_id, event FROM pgm_webhook_deliveries ORDER BY id"))


def _walk_every_security_definer_function(db) -> list[str]:
    """Calls every SECURITY DEFINER function as each role; asserts the refusals; returns the signatures."""
    functions = _security_definer_functions(db)
    _webhook_for_everything(db)
    before = _written(db)
    for role, uri in _logins(db).items():
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("SELECT set_config('pgmodels.mlflow_user', 'alice', false)")
            for signature, call in functions:
                if role in MAY_CALL.get(signature, set()):
                    conn.execute(call)
                    continue
                with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
                    conn.execute(call)
    assert _written(db) == before, "a refused call wrote history or queued a webhook"
    return [signature for signature, _ in functions]


def test_no_role_can_call_a_security_definer_function_to_forge_history(db):
    signatures = _walk_every_security_definer_function(db)
    # the walk did meet the functions that write history and fan it out to webhooks
    assert {"pgm_history_models()", "pgm_webhooks_fan_out()"} <= set(signatures)
    # and none of the functions that record history runs with its owner's rights when called
    assert db.sql("SELECT proname FROM pg_proc WHERE prosecdef AND proname IN"
                  " ('pgm_history_record', 'pgm_history_version_tags')") == []


def test_nobody_can_call_the_recording_functions_directly(db):
    """The forgery of the issue: as the reader, a history row for version 7 that does not exist."""
    _assert_recorders_refused(db)


def _assert_recorders_refused(db) -> None:
    _webhook_for_everything(db)
    before = _written(db)
    for role, uri in _logins(db).items():
        with psycopg.connect(uri, autocommit=True) as conn:
            for call in ("SELECT pgm_history_record('churn', 7, 'alias_set', NULL, '{\"alias\": \"champion\"}')",
                         "SELECT pgm_history_version_tags('churn', '{7}')",
                         "SELECT pgm_webhook_event('alias_set', 'churn', 7, '1')"):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(call)
    assert _written(db) == before


def test_a_real_change_by_the_writer_is_still_recorded_and_fanned_out(db):
    import mlflow

    mlflow.set_tracking_uri(db.uri)
    sample.log(sample.regressor(3.0), "churn")
    _webhook_for_everything(db)
    writer_user, password = db.login_role("pgmodels_writer")
    with psycopg.connect(db.server.tcp_uri(db.name, writer_user, password, scheme="postgresql"),
                         autocommit=True) as conn:
        conn.execute("SELECT set_config('pgmodels.mlflow_user', 'bob', false)")
        conn.execute("INSERT INTO pgm_aliases (name, alias, version) VALUES ('churn', 'champion', 1)")
    assert db.sql("SELECT db_user, mlflow_user, action, new FROM pgm_history WHERE action = 'alias_set'") == [
        (writer_user, "bob", "alias_set", {"alias": "champion", "version": 1})]
    assert db.sql("SELECT event FROM pgm_webhook_deliveries") == [("model_version_alias.created",)]


def test_the_writer_counts_and_sweeps_orphan_blobs_as_mlflow_gc_does(db):
    # the blob sweeper is the one maintenance function a non-owner runs (mlflow gc as the server's role)
    db.sql("INSERT INTO pgm_blobs (size_bytes, sha256, crc32) VALUES (0, repeat('0', 64), 0)")
    writer_user, password = db.login_role("pgmodels_writer")
    with psycopg.connect(db.server.tcp_uri(db.name, writer_user, password, scheme="postgresql"),
                         autocommit=True) as conn:
        assert conn.execute("SELECT pgm_orphan_blob_count()").fetchone()[0] == 1
        assert conn.execute("SELECT pgm_sweep_orphan_blobs()").fetchone()[0] == 1
    assert db.sql("SELECT pgm_orphan_blob_count()") == [(0,)]


def _upgrade_from_version_4(db) -> None:
    """The database as version 4 left it (recording functions open to everyone, the reader on
    every table), then upgraded by the package, without re-running sql/roles.sql."""
    db.login_role("pgmodels_reader")  # the groups exist
    db.sql("ALTER FUNCTION pgm_history_record(text, integer, text, jsonb, jsonb) SECURITY DEFINER")
    db.sql("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC")
    db.sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgmodels_reader")
    # and default privileges that give every new function to the writer: the upgrade creates one anew
    db.sql("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO pgmodels_writer")
    db.sql("DROP FUNCTION pgm_history_version_tags(text, integer[])")
    db.sql("UPDATE pgm_schema_info SET schema_version = 4")
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), autocommit=True) as conn:
        assert upgrade(conn) == 4


def test_an_upgraded_database_takes_the_rights_back(db):
    _upgrade_from_version_4(db)
    _walk_every_security_definer_function(db)
    _assert_recorders_refused(db)
    user, password = db.login_role("pgmodels_reader")
    _assert_reader_refused_secrets(db, user, password)


def _assert_reader_refused_secrets(db, user: str, password: str) -> None:
    with psycopg.connect(db.server.tcp_uri(db.name, user, password, scheme="postgresql"), autocommit=True) as conn:
        for table in SECRETS:
            with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
                conn.execute(f"SELECT * FROM {table} LIMIT 1")


def _reader_tables(db) -> set[str]:
    return {name for (name,) in db.sql(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm')"
        " AND has_table_privilege('pgmodels_reader', oid, 'SELECT')")}


def test_reader_reads_what_a_predict_job_needs_and_no_webhook_or_secret(db):
    user, password = db.login_role("pgmodels_reader")
    _assert_reader_refused_secrets(db, user, password)
    assert _reader_tables(db) == READER_TABLES


def test_roles_sql_narrows_a_reader_set_up_by_an_earlier_version(db):
    # what roles.sql granted before: every table, and every table created later
    db.login_role("pgmodels_reader")
    db.sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgmodels_reader")
    db.sql("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pgmodels_reader")
    db.sql("CREATE TABLE team_features (x int)")
    db.sql("GRANT SELECT ON team_features TO pgmodels_reader")

    user, password = db.login_role("pgmodels_reader")  # runs sql/roles.sql again

    _assert_reader_refused_secrets(db, user, password)
    assert _reader_tables(db) == READER_TABLES
    db.sql("CREATE TABLE created_later (x int)")  # e.g. by an MLflow migration
    assert "created_later" not in _reader_tables(db)
    # the writer still writes every table but the history
    assert db.sql("SELECT has_table_privilege('pgmodels_writer', 'created_later', 'INSERT'),"
                  " has_table_privilege('pgmodels_writer', 'pgm_webhooks', 'SELECT, INSERT, UPDATE, DELETE'),"
                  " has_table_privilege('pgmodels_writer', 'pgm_history', 'INSERT')") == [(True, True, False)]
