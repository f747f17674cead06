"""Change history: every change, through MLflow or by plain SQL, recorded once by the database.

What a user relies on: `mlflow-pgmodels history NAME` answers who changed what and when, for
changes made any way, also after the model was deleted or renamed; nobody but the table's owner
can rewrite that record.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from mlflow import MlflowClient

from mlflow_pgmodels import cli
from mlflow_pgmodels._events.history import model_history, parse_notification
from tests import sample

VERSION_KEYS = {"source", "run_id", "model_id", "event", "model_type", "is_active", "stage", "description", "user_id"}


def _kv(key, value):
    return {"key": key, "value": value}


def _alias(alias, version):
    return {"alias": alias, "version": version}


def _stage(stage, active):
    return {"stage": stage, "is_active": active}


V1 = {"event": "cpi", "model_type": "unspecified", "is_active": True, "stage": "None", "description": "v1 desc"}
V2 = {"event": "default", "model_type": "unspecified", "is_active": True, "stage": "None", "description": None}
# (action, version, old, new) of each step below, in order; model_version_created / _deleted
# compare the keys above (all contract keys must be there)
EXPECTED = [
    ("registered_model_created", None, None, {"description": "first", "tags": {}}),
    ("registered_model_tag_set", None, None, _kv("team", "risk")),
    ("registered_model_description_changed", None, {"description": "first"}, {"description": "second"}),
    ("registered_model_tag_set", None, _kv("team", "risk"), _kv("team", "fraud")),
    ("registered_model_tag_deleted", None, _kv("team", "fraud"), None),
    ("model_version_created", 1, None, V1),
    ("model_version_tag_set", 1, None, _kv("owner", "ann")),
    ("model_version_created", 2, None, V2),
    ("model_version_description_changed", 1, {"description": "v1 desc"}, {"description": "better"}),
    ("model_version_stage_changed", 1, _stage("None", True), _stage("Production", True)),
    ("model_version_stage_changed", 1, _stage("Production", True), _stage("None", False)),
    ("model_version_tag_set", 1, _kv("model_type", "unspecified"), _kv("model_type", "regression")),
    ("model_version_tag_set", 1, _kv("event", "cpi"), _kv("event", "default")),
    ("model_version_tag_set", 1, _kv("owner", "ann"), _kv("owner", "bob")),
    ("model_version_tag_deleted", 1, _kv("owner", "bob"), None),
    ("alias_set", 1, None, _alias("champion", 1)),
    ("alias_set", 2, _alias("champion", 1), _alias("champion", 2)),
    ("alias_deleted", 2, _alias("champion", 2), None),
    ("registered_model_renamed", None, {"name": "churn"}, {"name": "attrition"}),
    ("model_version_deleted", 2, V2, None),
    ("registered_model_deleted", None, {"description": "second"}, None),
]
# the name each recorded row carries (after the rename: the new name)
NAMES = ["churn"] * 18 + ["attrition"] * 3


def _through_mlflow(client: MlflowClient, db, tmp_path) -> None:
    source = sample.saved(tmp_path / "m")
    client.create_registered_model("churn", tags={"team": "risk"}, description="first")
    client.update_registered_model("churn", "second")
    client.set_registered_model_tag("churn", "team", "fraud")
    client.delete_registered_model_tag("churn", "team")
    client.create_model_version("churn", source, tags={"event": "cpi", "owner": "ann"}, description="v1 desc")
    client.create_model_version("churn", source)
    client.update_model_version("churn", 1, "better")
    client.transition_model_version_stage("churn", 1, "Production")
    client.transition_model_version_stage("churn", 1, "Archived")
    client.set_model_version_tag("churn", 1, "model_type", "regression")
    client.delete_model_version_tag("churn", 1, "event")
    client.set_model_version_tag("churn", 1, "owner", "bob")
    client.delete_model_version_tag("churn", 1, "owner")
    client.set_registered_model_alias("churn", "champion", 1)
    client.set_registered_model_alias("churn", "champion", 2)
    client.delete_registered_model_alias("churn", "champion")
    client.rename_registered_model("churn", "attrition")
    client.delete_model_version("attrition", 2)
    client.delete_registered_model("attrition")


def _by_plain_sql(client: MlflowClient, db, tmp_path) -> None:
    for statement in [
        "INSERT INTO pgm_registered_models (name, description) VALUES ('churn', 'first')",
        "INSERT INTO pgm_registered_model_tags VALUES ('churn', 'team', 'risk')",
        "UPDATE pgm_registered_models SET description = 'second' WHERE name = 'churn'",
        "UPDATE pgm_registered_model_tags SET value = 'fraud' WHERE name = 'churn'",
        "DELETE FROM pgm_registered_model_tags WHERE name = 'churn'",
        "INSERT INTO models (name, version, model_type, event, model_binary, description)"
        " VALUES ('churn', 1, 'unspecified', 'cpi', 'x', 'v1 desc')",
        "INSERT INTO pgm_model_version_tags VALUES ('churn', 1, 'owner', 'ann')",
        "INSERT INTO models (name, version, model_type, event, model_binary) VALUES ('churn', 2, 'unspecified', 'default', 'x')",
        "UPDATE models SET description = 'better' WHERE name = 'churn' AND version = 1",
        "UPDATE models SET stage = 'Production' WHERE name = 'churn' AND version = 1",
        "UPDATE models SET stage = 'None', is_active = false WHERE name = 'churn' AND version = 1",
        "UPDATE models SET model_type = 'regression' WHERE name = 'churn' AND version = 1",
        "UPDATE models SET event = 'default' WHERE name = 'churn' AND version = 1",
        "UPDATE pgm_model_version_tags SET value = 'bob' WHERE name = 'churn'",
        "DELETE FROM pgm_model_version_tags WHERE name = 'churn'",
        "INSERT INTO pgm_aliases VALUES ('churn', 'champion', 1)",
        "UPDATE pgm_aliases SET version = 2 WHERE name = 'churn'",
        "DELETE FROM pgm_aliases WHERE name = 'churn'",
        "UPDATE pgm_registered_models SET name = 'attrition' WHERE name = 'churn'",
        "DELETE FROM models WHERE name = 'attrition' AND version = 2",
        "DELETE FROM pgm_registered_models WHERE name = 'attrition'",
    ]:
        db.sql(statement)


def _recorded(db) -> list[tuple]:
    return db.sql("SELECT name, action, version, old, new, db_user, mlflow_user FROM pgm_history ORDER BY id")


def _comparable(action, version, old, new):
    if action in ("model_version_created", "model_version_deleted"):
        fields = new if action == "model_version_created" else old
        assert set(fields) == VERSION_KEYS
        fields = {k: fields[k] for k in V1}
        return (action, version, None, fields) if action == "model_version_created" else (action, version, fields, None)
    return action, version, old, new


@pytest.mark.parametrize("make_changes", [_through_mlflow, _by_plain_sql])
def test_every_change_is_recorded_once_with_old_and_new(client, db, tmp_path, make_changes):
    make_changes(client, db, tmp_path)

    rows = _recorded(db)
    assert [_comparable(*r[1:5]) for r in rows] == EXPECTED
    assert [r[0] for r in rows] == NAMES
    assert {r[5] for r in rows} == {"postgres"}
    if make_changes is _by_plain_sql:
        assert {r[6] for r in rows} == {None}  # no MLflow user behind plain SQL
    else:
        assert None not in {r[6] for r in rows}  # the store names the MLflow user of each change


def test_a_registration_under_a_placeholder_number_is_one_creation_under_the_final_number(db):
    db.sql("INSERT INTO pgm_registered_models (name) VALUES ('churn')")
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql")) as conn, conn.transaction():
        conn.execute("INSERT INTO models (name, version, model_type, event, model_binary)"
                     " VALUES ('churn', -pg_backend_pid(), 'regression', 'cpi', 'x')")
        conn.execute("INSERT INTO pgm_model_version_tags VALUES ('churn', -pg_backend_pid(), 'owner', 'ann')")
        conn.execute("UPDATE models SET version = 1 WHERE name = 'churn' AND version = -pg_backend_pid()")

    rows = db.sql("SELECT action, version, new ->> 'event', new FROM pgm_history WHERE version IS NOT NULL ORDER BY id")
    assert [r[:3] for r in rows] == [("model_version_created", 1, "cpi"),
                                     ("model_version_tag_set", 1, None)]
    assert rows[1][3] == _kv("owner", "ann")


def test_history_of_a_deleted_and_renamed_model_stays_readable(client, db, tmp_path, capsys):
    _through_mlflow(client, db, tmp_path)
    ids = [r[0] for r in db.sql("SELECT id FROM pgm_history ORDER BY id DESC")]

    # either name finds the whole story, newest first, after the model is gone
    for name in ("churn", "attrition"):
        assert [c.id for c in model_history(db.uri, name)] == ids
    assert [c.action for c in model_history(db.uri, "churn", version=2)] == \
        ["model_version_deleted", "alias_deleted", "alias_set", "model_version_created"]

    assert cli.main(["history", "attrition", "--json", "--uri", db.uri]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["id"] for line in lines] == ids
    first = lines[-1]
    assert first["name"] == "churn" and first["version"] is None and first["action"] == "registered_model_created"
    assert first["new"] == {"description": "first", "tags": {}} and first["old"] is None
    assert first["db_user"] == "postgres" and "mlflow_user" in first
    assert first["time"].startswith(str(db.sql("SELECT at::date FROM pgm_history WHERE id = %s", (first["id"],))[0][0]))
    assert first["time"][-6] in "+-"  # an explicit UTC offset

    assert cli.main(["history", "churn", "--version", "1", "--uri", db.uri]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 10 and all("churn v1" in line for line in text)
    assert "event = 'cpi' → 'default'" in text[3] and "Production → Archived" in text[5]


def test_since_takes_iso_8601_postgresql_times_and_durations(client, db, capsys):
    client.create_registered_model("churn")
    db.sql("UPDATE pgm_history SET at = at - interval '3 days'")  # as the owner may
    client.update_registered_model("churn", "new")

    def actions(since):
        assert cli.main(["history", "churn", "--json", "--since", since, "--uri", db.uri]) == 0
        return [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]

    [[day_before]] = db.sql("SELECT to_char(now() - interval '1 day', 'YYYY-MM-DD\"T\"HH24:MI:SSOF')")
    assert actions(day_before) == ["registered_model_description_changed"]
    assert actions("2 days") == ["registered_model_description_changed"]
    assert actions("1 week") == ["registered_model_description_changed", "registered_model_created"]
    assert actions("epoch") == ["registered_model_description_changed", "registered_model_created"]
    assert actions("tomorrow") == []

    assert cli.main(["history", "churn", "--since", "soonish", "--uri", db.uri]) == 2
    assert "--since 'soonish' is neither a time nor a duration" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(db, capsys):
    assert cli.main(["history", "nobody", "--uri", db.uri]) == 2
    assert "No change of registered model 'nobody' is recorded" in capsys.readouterr().err


def test_only_the_owner_can_alter_the_history(client, db, tmp_path):
    writer, writer_password = db.login_role("pgmodels_writer")
    reader, reader_password = db.login_role("pgmodels_reader")
    # a writer's change is recorded under its name, though it has no right of its own on pgm_history
    MlflowClient(registry_uri=db.tcp_uri(writer, writer_password)).create_registered_model("churn")
    [[recorded_by]] = db.sql("SELECT db_user FROM pgm_history WHERE action = 'registered_model_created'")
    assert recorded_by == writer

    for user, password in ((writer, writer_password), (reader, reader_password)):
        with psycopg.connect(db.server.tcp_uri(db.name, user, password, scheme="postgresql"),
                             autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pgm_history").fetchone()[0] == 1
            for statement in ("UPDATE pgm_history SET db_user = 'someone else'", "DELETE FROM pgm_history",
                              "TRUNCATE pgm_history",
                              "INSERT INTO pgm_history (name, action) VALUES ('churn', 'registered_model_deleted')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    assert db.sql("SELECT count(*), min(db_user) FROM pgm_history") == [(1, writer)]
    assert [c.db_user for c in model_history(db.tcp_uri(reader, reader_password), "churn")] == [writer]


def test_each_row_is_announced_on_pgmodels_changes(db):
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql"), autocommit=True) as listener:
        listener.execute("LISTEN pgmodels_changes")
        db.sql("INSERT INTO pgm_registered_models (name, description) VALUES ('churn', 'short')")
        db.sql("UPDATE pgm_registered_models SET description = %s WHERE name = 'churn'", ("x" * 9000,))
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]

    ids = [r[0] for r in db.sql("SELECT id FROM pgm_history ORDER BY id")]
    created = parse_notification(payloads[0])
    assert created.id == ids[0] and created.action == "registered_model_created" and created.name == "churn"
    assert created.new == {"description": "short", "tags": {}} and created.db_user == "postgres"
    assert parse_notification(payloads[1]) == ids[1]  # too long for a payload: its id


def test_recording_a_change_of_a_version_reads_none_of_its_bytes(db):
    """A stage change of a big model is recorded without fetching the model out of TOAST."""
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary) VALUES ('big', 1, 't', 'e', %s)",
           (bytes(range(256)) * 8192,))  # 2 MiB, stored out of line
    [[toast]] = db.sql("SELECT reltoastrelid FROM pg_class WHERE oid = 'models'::regclass")
    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql")) as conn, conn.transaction():
        conn.execute("UPDATE models SET stage = 'Production', description = 'd', event = 'cpi' WHERE name = 'big'")
        [[fetched]] = conn.execute("SELECT pg_stat_get_xact_blocks_fetched(%s)", (toast,)).fetchall()
        conn.execute("DELETE FROM models WHERE name = 'big'")  # (removing the bytes reads their chunks)
    assert fetched < 10
    assert [r[0] for r in db.sql("SELECT action FROM pgm_history WHERE name = 'big' AND version = 1 ORDER BY id")] == [
        "model_version_created", "model_version_stage_changed", "model_version_description_changed",
        "model_version_tag_set", "model_version_deleted"]


def _rest_as(server_url: str, user: str, password: str, name: str) -> int:
    """Create a registered model through `mlflow server`'s REST API with a Basic header; the HTTP status."""
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server_url}/api/2.0/mlflow/registered-models/create", method="POST",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _recorded_users(db) -> list[tuple]:
    return db.sql("SELECT name, db_user, mlflow_user FROM pgm_history ORDER BY id")


@pytest.mark.slow
def test_a_forged_basic_header_is_not_recorded_as_the_mlflow_user(db, tmp_path):
    from tests.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "server", db.uri) as server:  # no authentication app
        assert _rest_as(server.url, "admin", "anything", "churn") == 200
    # the change is recorded, under the database role only: nobody checked that header
    assert _recorded_users(db) == [("churn", "postgres", None)]


@pytest.mark.slow
def test_the_user_mlflows_auth_app_authenticated_is_recorded(db, tmp_path):
    from tests.mlflow_server import mlflow_server

    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": "admin-s3cret-pw", "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-for-tests"}
    with mlflow_server(tmp_path / "server", db.uri, env=env, app_name="basic-auth") as server:
        assert _rest_as(server.url, "admin", "wrong", "fraud") == 401
        assert _rest_as(server.url, "admin", "admin-s3cret-pw", "churn") == 200
    assert _recorded_users(db) == [("churn", "postgres", "admin")]
