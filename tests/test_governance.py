"""Governance the database enforces (sql/pgmodels_governance.sql, docs/governance.md).

Real login roles over TCP, one per part a person plays: writers (training jobs, data scientists),
a release manager, the owner, and a role with no rights at all. Every refusal is checked for its
code (PERMISSION_DENIED), for a message naming the rule and the role, and for nothing having
changed; the same rules hold through MlflowClient, the helper API, plain SQL and `mlflow server`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import mlflow
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookAction, WebhookEntity, WebhookEvent
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import cli, helpers
from mlflow_pgmodels._lifecycle import governance
from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import procs, sample
from tests.mlflow_server import mlflow_server

RM = "pgmodels_release_manager"
TAG_SET = WebhookEvent(WebhookEntity.MODEL_VERSION_TAG, WebhookAction.SET)


@dataclass
class Login:
    user: str
    uri: str  # pgmodels://

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """One statement as this user, outside MLflow (a psql session, say)."""
        with psycopg.connect(self.uri.replace("pgmodels://", "postgresql://", 1), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def logins(db):
    """login(group) -> a new login role in ``group`` (None: a role with no rights at all)."""
    def login(group: str | None) -> Login:
        if group is None:
            user, password = f"nobody_{db.name}", "pw-nobody-s3cret"
            db.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        else:
            user, password = db.login_role(group)
        return Login(user, db.tcp_uri(user, password))
    return login


def _refused(call, *words: str) -> MlflowException:
    with pytest.raises(MlflowException) as e:
        call()
    assert e.value.error_code == "PERMISSION_DENIED", e.value.message
    for word in words:
        assert word in e.value.message, e.value.message
    return e.value


def _registry(db) -> list:
    """What governance guards: versions and their stages, aliases, tags, registered models."""
    return [db.sql(q) for q in (
        "SELECT name, version, is_active, stage FROM models ORDER BY name, version",
        "SELECT * FROM pgm_aliases ORDER BY name, alias",
        "SELECT * FROM pgm_model_version_tags ORDER BY name, version, key",
        "SELECT name, description FROM pgm_registered_models ORDER BY name",
        "SELECT * FROM pgm_registered_model_tags ORDER BY name, key",
    )]


def _versions(client: MlflowClient, name: str, count: int, tmp_path) -> None:
    client.create_registered_model(name)
    for i in range(count):
        client.create_model_version(name, sample.saved(tmp_path / f"{name}-{i}"))


def _stage(client: MlflowClient, name: str, version: int) -> str:
    return client.get_model_version(name, str(version)).current_stage


# ---------------------------------------------------------------------------------- protected aliases
def test_protected_alias_only_the_release_manager_moves_it(db, logins, tmp_path):
    owner, writer, manager, nobody = logins("pgmodels_owner"), logins("pgmodels_writer"), logins(RM), logins(None)
    _versions(writer.client, "churn", 3, tmp_path)
    writer.client.set_registered_model_alias("churn", "champion", "1")
    governance.protect(owner.uri, "churn", RM, alias="champion")
    before = _registry(db)

    w = writer.client
    for what, call in {
        "move": lambda: w.set_registered_model_alias("churn", "champion", "2"),
        "remove": lambda: w.delete_registered_model_alias("churn", "champion"),
        "delete the version it points at": lambda: w.delete_model_version("churn", "1"),
        "delete the model": lambda: w.delete_registered_model("churn"),
        "rename the model": lambda: w.rename_registered_model("churn", "attrition"),
    }.items():
        e = _refused(call, "champion", "churn", RM, writer.user)
        assert "protect 'churn' --alias champion --role pgmodels_release_manager" in e.message, what
    # a role with no rights: refused by the grants already (what MLflow builds for registry_uri=nobody.uri)
    _refused(lambda: PgModelsRegistryStore(nobody.uri).set_registered_model_alias("churn", "champion", "2"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="protected"):
        writer.sql("UPDATE pgm_aliases SET version = 2 WHERE name = 'churn' AND alias = 'champion'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="protected"):
        writer.sql("DELETE FROM pgm_aliases WHERE alias = 'champion'")
    assert _registry(db) == before

    # what the rule does not name stays open to writers
    w.set_registered_model_alias("churn", "canary", "3")
    w.set_registered_model_alias("churn", "canary", "2")
    # and the release manager moves the champion; predict jobs load what it points at
    manager.client.set_registered_model_alias("churn", "champion", "3")
    assert int(w.get_model_version_by_alias("churn", "champion").version) == 3
    assert db.sql("SELECT action, new ->> 'version', db_user FROM pgm_history WHERE action = 'alias_set' "
                  "AND new ->> 'alias' = 'champion' ORDER BY id DESC LIMIT 1") == [("alias_set", "3", manager.user)]


def test_a_rule_for_every_model_and_unprotect(db, logins, tmp_path):
    owner, writer = logins("pgmodels_owner"), logins("pgmodels_writer")
    _versions(writer.client, "churn", 2, tmp_path)
    _versions(writer.client, "fraud", 1, tmp_path)
    governance.protect(owner.uri, "*", RM, alias="champion")
    _refused(lambda: writer.client.set_registered_model_alias("fraud", "champion", "1"), "'*'")
    _refused(lambda: writer.client.set_registered_model_alias("churn", "champion", "1"), "'*'")

    assert governance.unprotect(owner.uri, "*", alias="champion") is True
    writer.client.set_registered_model_alias("fraud", "champion", "1")
    assert governance.unprotect(owner.uri, "*", alias="champion") is False


# ---------------------------------------------------------------------------------- protected stages
def test_protected_stage_in_and_out_through_client_helpers_and_sql(db, logins, tmp_path):
    owner, writer, manager = logins("pgmodels_owner"), logins("pgmodels_writer"), logins(RM)
    _versions(writer.client, "churn", 3, tmp_path)
    governance.protect(owner.uri, "churn", RM, stage="production")  # any spelling MLflow accepts
    manager.client.transition_model_version_stage("churn", "1", "Production")
    before = _registry(db)

    w = writer.client
    _refused(lambda: w.transition_model_version_stage("churn", "2", "Production"), "stage", "Production", RM)
    _refused(lambda: w.transition_model_version_stage("churn", "1", "Archived"), "out of stage Production")
    _refused(lambda: w.transition_model_version_stage("churn", "1", "Staging"), "out of stage Production")
    assert helpers.deactivate_model("churn", "default", "unspecified", 1, uri=writer.uri) is False
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Production"):
        writer.sql("UPDATE models SET stage = 'Production' WHERE name = 'churn' AND version = 3")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Production"):
        writer.sql("UPDATE models SET is_active = false WHERE name = 'churn'")
    assert _registry(db) == before

    # other stages stay open; the release manager promotes and archives the old one in one call
    w.transition_model_version_stage("churn", "3", "Staging")
    assert helpers.deactivate_model("churn", "default", "unspecified", 2, uri=writer.uri) is True
    manager.client.transition_model_version_stage("churn", "3", "Production", archive_existing_versions=True)
    assert [_stage(w, "churn", v) for v in (1, 2, 3)] == ["Archived", "Archived", "Production"]


# ---------------------------------------------------------------------------------- latest
def test_protected_latest_new_versions_arrive_archived_until_released(db, logins, tmp_path):
    owner, writer, manager = logins("pgmodels_owner"), logins("pgmodels_writer"), logins(RM)
    _versions(writer.client, "churn", 2, tmp_path)
    governance.protect(owner.uri, "churn", RM, alias="latest")
    w = writer.client

    mv = w.create_model_version("churn", sample.saved(tmp_path / "v3"))
    assert (int(mv.version), mv.current_stage) == (3, "Archived")  # latest did not move
    assert int(w.get_model_version_by_alias("churn", "latest").version) == 2
    assert helpers.get_latest_model_version("churn", "default", "unspecified", uri=writer.uri) == 2
    before = _registry(db)
    _refused(lambda: w.transition_model_version_stage("churn", "3", "None"), "latest", RM)
    _refused(lambda: w.transition_model_version_stage("churn", "2", "Archived"), "latest")
    _refused(lambda: w.delete_model_version("churn", "2"), "latest")
    assert helpers.activate_model("churn", "default", "unspecified", 3, uri=writer.uri) is False
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="latest"):
        writer.sql("UPDATE models SET is_active = true WHERE name = 'churn' AND version = 3")
    assert _registry(db) == before
    # changes that leave latest where it is stay open
    w.transition_model_version_stage("churn", "1", "Archived")
    w.update_model_version("churn", "3", "candidate")

    manager.client.transition_model_version_stage("churn", "3", "Staging")
    assert int(w.get_model_version_by_alias("churn", "latest").version) == 3
    # the release manager's own registrations become latest at once
    assert manager.client.create_model_version("churn", sample.saved(tmp_path / "v4")).current_stage == "None"
    assert max(int(v.version) for v in w.get_latest_versions("churn")) == 4


def test_protected_latest_holds_for_plain_sql_inserts_and_with_four_eyes(db, logins, tmp_path):
    owner, writer, bob, manager = logins("pgmodels_owner"), logins("pgmodels_writer"), logins("pgmodels_writer"), logins(RM)
    _versions(writer.client, "churn", 1, tmp_path)
    governance.protect(owner.uri, "churn", RM, alias="latest")
    governance.set_four_eyes(owner.uri, "churn", True)

    # the seed's way of saving a version: a plain INSERT
    insert = ("INSERT INTO models (name, version, model_type, event, model_binary{}) "
              "VALUES ('churn', %s, 'regression', 'default', '\\x00'{})")
    writer.sql(insert.format("", ""), (2,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="registered_by"):
        writer.sql(insert.format(", registered_by", ", %s"), (3, bob.user))
    assert db.sql("SELECT version, is_active, registered_by FROM models ORDER BY version") == [
        (1, True, writer.user), (2, False, writer.user)]

    # four-eyes: even the release manager's own version waits for an approval
    mv = manager.client.create_model_version("churn", sample.saved(tmp_path / "v3"))
    assert (int(mv.version), mv.current_stage) == (3, "Archived")
    _refused(lambda: manager.client.transition_model_version_stage("churn", "3", "None"), "four-eyes")
    _refused(lambda: governance.approve(manager.uri, "churn", 3), "approving your own version")
    governance.approve(bob.uri, "churn", 3)
    manager.client.transition_model_version_stage("churn", "3", "None")
    assert int(writer.client.get_model_version_by_alias("churn", "latest").version) == 3


_ARCHIVE_IN_CHILD = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    try:
        conn.execute("UPDATE models SET is_active = false WHERE name = 'churn' AND version = 2")
        print("archived")
    except psycopg.errors.InsufficientPrivilege as e:
        print("refused:", e.diag.message_primary)
"""


def test_two_changes_that_each_leave_latest_alone_cannot_move_it_together(db, logins, tmp_path):
    owner, writer, manager = logins("pgmodels_owner"), logins("pgmodels_writer"), logins(RM)
    _versions(writer.client, "churn", 3, tmp_path)
    governance.protect(owner.uri, "churn", RM, alias="latest")

    with psycopg.connect(manager.uri.replace("pgmodels://", "postgresql://", 1)) as release:
        # the release manager archives v3 (latest becomes 2) and has not committed yet
        release.execute("UPDATE models SET is_active = false WHERE name = 'churn' AND version = 3")
        # meanwhile a writer archives v2, which leaves latest alone as far as it can see (3)
        child = subprocess.Popen([sys.executable, "-c", _ARCHIVE_IN_CHILD,
                                  writer.uri.replace("pgmodels://", "postgresql://", 1)],
                                 stdout=subprocess.PIPE, text=True)
        procs.wait_for("the writer to wait for the release manager", lambda: db.sql(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'", (writer.user,)))
        release.commit()
    out, _ = child.communicate(timeout=60)
    # once it sees the release, archiving v2 would move latest to 1: refused
    assert out.startswith("refused:") and "latest" in out, out
    assert int(writer.client.get_model_version_by_alias("churn", "latest").version) == 2


# ---------------------------------------------------------------------------------- the rules themselves
def test_only_the_owner_changes_the_rules(db, logins):
    owner, writer, manager, reader = (logins("pgmodels_owner"), logins("pgmodels_writer"), logins(RM),
                                      logins("pgmodels_reader"))
    for login in (writer, manager, reader):
        _refused(lambda: governance.protect(login.uri, "*", login.user, alias="champion"))
        _refused(lambda: governance.set_four_eyes(login.uri, "*", True))
        _refused(lambda: governance.grant_write_rights(login.uri, login.user, "x-*"))
    # not even with every right on the table (sql/roles.sql grants writers all tables)
    db.sql(f"GRANT ALL ON pgm_protections, pgm_write_rights, pgm_four_eyes, pgm_approvals TO {writer.user}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
        writer.sql(f"INSERT INTO pgm_protections (name_pattern, kind, value, role) VALUES ('*', 'stage', 'Production', '{writer.user}')")
    assert db.sql("SELECT count(*) FROM pgm_protections") == [(0,)]

    governance.protect(owner.uri, "*", RM, stage="Production")
    assert [r.describe() for r in governance.protections(writer.uri)] == ["*\t--stage Production\t--role pgmodels_release_manager"]
    # in SQL, as docs/governance.md shows it
    owner.sql("INSERT INTO pgm_protections (name_pattern, kind, value, role) VALUES ('churn', 'alias', 'champion', %s)"
              " ON CONFLICT (name_pattern, kind, value) DO UPDATE SET role = EXCLUDED.role", (RM,))
    assert len(governance.protections(owner.uri)) == 2

    with pytest.raises(MlflowException) as e:
        governance.protect(owner.uri, "churn", "no_such_role", alias="champion")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST" and "no_such_role" in e.value.message
    for bad in ({"stage": "None"}, {"stage": "Prod"}, {}, {"alias": "a", "stage": "Staging"}):
        with pytest.raises(MlflowException) as e:
            governance.protect(owner.uri, "churn", RM, **bad)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE", bad


def test_command_line(db, logins, capsys):
    owner = logins("pgmodels_owner")
    assert cli.main(["protect", "churn", "--alias", "champion", "--role", RM, "--uri", owner.uri]) == 0
    assert cli.main(["protect", "*", "--stage", "Production", "--role", RM, "--uri", owner.uri]) == 0
    capsys.readouterr()
    assert cli.main(["protect", "--list", "--uri", owner.uri]) == 0
    assert capsys.readouterr().out.splitlines() == [f"*\t--stage Production\t--role {RM}",
                                                    f"churn\t--alias champion\t--role {RM}"]
    assert cli.main(["unprotect", "churn", "--alias", "champion", "--uri", owner.uri]) == 0
    assert cli.main(["four-eyes", "churn", "on", "--uri", owner.uri]) == 0
    assert cli.main(["write-rights", "pgmodels_writer", "--models", "team-a-*", "--uri", owner.uri]) == 0
    capsys.readouterr()
    assert cli.main(["four-eyes", "--uri", owner.uri]) == 0
    assert cli.main(["write-rights", "--list", "--uri", owner.uri]) == 0
    assert capsys.readouterr().out.splitlines() == ["churn", "pgmodels_writer\tteam-a-*"]
    assert db.sql("SELECT name_pattern, kind, value FROM pgm_protections") == [("*", "stage", "Production")]

    # who changed the rules, in the history of the model they are for
    assert cli.main(["history", "churn", "--uri", owner.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == ["four_eyes_set", "protection_removed", "protection_set"]
    assert f"kind=alias role={RM} value=champion" in lines[1] and f"db: {owner.user}" in lines[1]

    writer = logins("pgmodels_writer")
    assert cli.main(["protect", "x", "--alias", "a", "--role", RM, "--uri", writer.uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot protect") and "only an owner of the store" in err and "pw-" not in err


# ---------------------------------------------------------------------------------- four eyes
def test_four_eyes_a_second_user_approves_before_promotion(db, logins, tmp_path, capsys, monkeypatch):
    owner, alice, bob, manager = (logins("pgmodels_owner"), logins("pgmodels_writer"), logins("pgmodels_writer"),
                                  logins(RM))
    _versions(alice.client, "churn", 2, tmp_path)
    db.sql("UPDATE pgm_registered_models SET description = NULL")  # (the superuser may write anything)
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    MlflowClient(db.uri, db.uri).create_webhook("tags", "https://127.0.0.1:9/hook", events=[TAG_SET])
    for stage_or_alias in ({"alias": "champion"}, {"stage": "Production"}):
        governance.protect(owner.uri, "churn", RM, **stage_or_alias)
    assert governance.set_four_eyes(owner.uri, "churn", True) is True
    before = _registry(db)

    m = manager.client
    _refused(lambda: m.set_registered_model_alias("churn", "champion", "1"), "four-eyes", "approve 'churn' 1")
    _refused(lambda: m.transition_model_version_stage("churn", "1", "Production"), "four-eyes")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="four-eyes"):
        manager.sql("INSERT INTO pgm_aliases (name, alias, version) VALUES ('churn', 'champion', 2)")
    # no approving one's own version, no forging an approval, no passing for someone else
    _refused(lambda: governance.approve(alice.uri, "churn", 1), "approving your own version is refused", alice.user)
    _refused(lambda: alice.client.set_model_version_tag("churn", "1", "pgmodels.approved_by", bob.user),
             "approvals only")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="approving your own"):
        alice.sql("INSERT INTO pgm_approvals (name, version, approved_by) VALUES ('churn', 1, %s)", (bob.user,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="registered_by"):
        alice.sql("UPDATE models SET registered_by = %s WHERE name = 'churn'", (bob.user,))
    assert _registry(db) == before

    assert governance.approve(bob.uri, "churn", 1) == [bob.user]
    assert alice.client.get_model_version("churn", "1").tags["pgmodels.approved_by"] == bob.user
    m.set_registered_model_alias("churn", "champion", "1")
    m.transition_model_version_stage("churn", "1", "Production")
    _refused(lambda: m.set_registered_model_alias("churn", "champion", "2"), "version 2 is not approved")
    # approving is not the promotion: a writer still may not move the champion
    assert cli.main(["approve", "churn", "2", "--uri", bob.uri]) == 0
    _refused(lambda: alice.client.set_registered_model_alias("churn", "champion", "2"), RM)
    m.set_registered_model_alias("churn", "champion", "2")

    # the approval in the history and to webhooks (a version tag: MLflow's model_version_tag.set)
    capsys.readouterr()
    assert cli.main(["history", "churn", "--version", "1", "--json", "--uri", db.uri]) == 0
    changes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    approval = next(c for c in changes if c["action"] == "model_version_tag_set")
    assert approval["new"] == {"key": "pgmodels.approved_by", "value": bob.user} and approval["db_user"] == bob.user
    assert db.sql("SELECT d.event, h.version FROM pgm_webhook_deliveries d JOIN pgm_history h ON h.id = d.history_id"
                  " ORDER BY d.id") == [("model_version_tag.set", 1), ("model_version_tag.set", 2)]

    # off: the roles still hold, approvals are not needed any more
    assert governance.set_four_eyes(owner.uri, "churn", False) is True
    mv = manager.client.create_model_version("churn", sample.saved(tmp_path / "v3"))
    m.set_registered_model_alias("churn", "champion", mv.version)


# ---------------------------------------------------------------------------------- write rights
def test_write_rights_limit_a_team_to_its_models(db, logins, tmp_path):
    owner, other = logins("pgmodels_owner"), logins("pgmodels_writer")
    team = f"team_a_{db.name}"
    db.sql(f"CREATE ROLE {team} NOLOGIN")
    db.sql(f"CREATE ROLE alice_{db.name} LOGIN PASSWORD 'pw-alice-s3cret' IN ROLE pgmodels_writer, {team}")
    alice = Login(f"alice_{db.name}", db.tcp_uri(f"alice_{db.name}", "pw-alice-s3cret"))
    _versions(other.client, "team-b-fraud", 1, tmp_path)
    governance.grant_write_rights(owner.uri, team, "team-a-*")
    assert governance.write_rights(alice.uri) == [(team, "team-a-*")]

    a = alice.client
    _versions(a, "team-a-churn", 1, tmp_path)
    a.set_registered_model_alias("team-a-churn", "champion", "1")
    a.set_registered_model_tag("team-a-churn", "team", "a")
    before = _registry(db)
    for what, call in {
        "create": lambda: a.create_registered_model("team-b-new"),
        "register": lambda: a.create_model_version("team-b-fraud", sample.saved(tmp_path / "x")),
        "tag": lambda: a.set_registered_model_tag("team-b-fraud", "owner", "alice"),
        "tag a version": lambda: a.set_model_version_tag("team-b-fraud", "1", "k", "v"),
        "stage": lambda: a.transition_model_version_stage("team-b-fraud", "1", "Staging"),
        "alias": lambda: a.set_registered_model_alias("team-b-fraud", "champion", "1"),
        "describe": lambda: a.update_registered_model("team-b-fraud", "mine now"),
        "rename into": lambda: a.rename_registered_model("team-a-churn", "team-b-churn"),
        "delete": lambda: a.delete_registered_model("team-b-fraud"),
    }.items():
        _refused(call, "team-a-* (role team_a_", "team-b-")
    assert helpers.save_model_to_db(sample.regressor(1.0), "team-b-fraud", "default", "unspecified",
                                    uri=alice.uri) == (False, None)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may write only the models"):
        alice.sql("UPDATE models SET description = 'x' WHERE name = 'team-b-fraud'")
    assert _registry(db) == before
    # reading stays as it is; writers in no listed role are not limited
    assert a.get_model_version("team-b-fraud", "1").current_stage == "None"
    other.client.set_registered_model_tag("team-b-fraud", "team", "b")

    assert governance.revoke_write_rights(owner.uri, team) == 1
    a.set_registered_model_tag("team-b-fraud", "seen-by", "alice")


# ---------------------------------------------------------------------------------- mlflow server
@pytest.mark.slow
def test_through_mlflow_server_and_rule_changes_need_no_restart(db, logins, tmp_path):
    owner, writer = logins("pgmodels_owner"), logins("pgmodels_writer")
    _versions(writer.client, "churn", 2, tmp_path)
    writer.client.set_registered_model_alias("churn", "champion", "1")
    governance.protect(owner.uri, "churn", RM, alias="champion")
    governance.protect(owner.uri, "*", RM, stage="Production")
    before = _registry(db)

    with mlflow_server(tmp_path / "server", writer.uri) as server:  # the server logs in as a writer
        remote = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        _refused(lambda: remote.set_registered_model_alias("churn", "champion", "2"), "champion", RM)
        _refused(lambda: remote.transition_model_version_stage("churn", "2", "Production"), "Production", RM)
        _refused(lambda: remote.delete_registered_model_alias("churn", "champion"), "champion")
        assert _registry(db) == before
        remote.set_registered_model_alias("churn", "canary", "2")  # not protected

        # the rules are read at each write: a change holds for the running server at once
        governance.unprotect(owner.uri, "churn", alias="champion")
        remote.set_registered_model_alias("churn", "champion", "2")
        governance.protect(owner.uri, "churn", RM, alias="champion")
        _refused(lambda: remote.set_registered_model_alias("churn", "champion", "1"), "champion")
        assert int(remote.get_model_version_by_alias("churn", "champion").version) == 2
    # refusals are answers (403), not server errors
    assert not [line for line in server.failures() if "Traceback" in line]


@pytest.mark.slow
def test_with_the_basic_auth_app_both_layers_hold(db, logins, tmp_path, monkeypatch):
    """The auth app decides per MLflow user (its registered-model permissions); the database's rules
    hold for the server's database role whatever the app allows, its admin included."""
    owner, writer = logins("pgmodels_owner"), logins("pgmodels_writer")
    _versions(writer.client, "churn", 2, tmp_path)
    _versions(writer.client, "fraud", 1, tmp_path)
    governance.protect(owner.uri, "*", RM, alias="champion")
    admin_password = "admin-pw-s3cret-long-enough"

    def as_user(user: str, password: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        return MlflowClient(tracking_uri=server.url, registry_uri=server.url)

    with mlflow_server(tmp_path / "server", writer.uri, app_name="basic-auth",
                       env={"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key"}) as server:
        from mlflow.server.auth.client import AuthServiceClient

        as_user("admin", admin_password)
        auth = AuthServiceClient(server.url)
        auth.create_user("carol", "carol-pw-s3cret-long")
        auth.grant_user_permission("carol", "registered_model", "churn", "EDIT")
        before = _registry(db)

        carol = as_user("carol", "carol-pw-s3cret-long")
        _refused(lambda: carol.set_registered_model_alias("fraud", "canary", "1"))  # the app: READ only
        _refused(lambda: carol.set_registered_model_alias("churn", "champion", "2"), "champion", RM)  # the database
        admin = as_user("admin", admin_password)
        _refused(lambda: admin.set_registered_model_alias("churn", "champion", "2"), "champion", RM)
        assert _registry(db) == before

        carol = as_user("carol", "carol-pw-s3cret-long")
        carol.set_registered_model_alias("churn", "canary", "2")
    assert db.sql("SELECT mlflow_user, db_user FROM pgm_history WHERE action = 'alias_set'"
                  " AND new ->> 'alias' = 'canary'") == [("carol", writer.user)]
