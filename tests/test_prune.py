"""``mlflow-pgmodels prune`` and ``keep``: retention rules that never take what is in use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._lifecycle import prune
from tests import procs, sample


def cli(db, *args: str, uri: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mlflow-pgmodels ARGS --uri URI`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", *args, "--uri", uri or db.uri],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def versions(db, name: str) -> list[int]:
    return [v for (v,) in db.sql("SELECT version FROM models WHERE name = %s ORDER BY version", (name,))]


def register(client, tmp_path, name: str, count: int) -> None:
    client.create_registered_model(name)
    path = sample.saved(tmp_path / f"model-{name}")
    for _ in range(count):
        client.create_model_version(name, source=path)


def archive(client, name: str, *numbers: int) -> None:
    for v in numbers:
        client.transition_model_version_stage(name, v, "Archived")


@pytest.fixture
def churn(client, db, tmp_path):
    """churn v1..v8: v1 @champion, v2 Production, v3 Staging, v4 kept by a deployment, v5 and v7
    archived, v6 plain, v8 the latest (active)."""
    register(client, tmp_path, "churn", 8)
    client.set_registered_model_alias("churn", "champion", 1)
    client.transition_model_version_stage("churn", 2, "Production")
    client.transition_model_version_stage("churn", 3, "Staging")
    archive(client, "churn", 5, 7)
    kept = cli(db, "keep", "models:/churn/4", "--reason", "churn-api prod")
    assert kept.returncode == 0, kept.stderr
    return client


def test_prune_never_takes_aliased_production_staging_kept_or_latest_versions(churn, db):
    dry = cli(db, "prune", "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split("\t")[0] for line in dry.stdout.splitlines()[:-1]] == ["churn v5", "churn v6", "churn v7"]
    assert "would delete 3 versions of 1 models, freeing" in dry.stdout
    assert versions(db, "churn") == [1, 2, 3, 4, 5, 6, 7, 8]  # a dry run changes nothing

    real = cli(db, "prune", "--keep-last", "1")

    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[:3] == dry.stdout.splitlines()[:3]  # exactly what the dry run listed
    assert "deleted 3 versions" in real.stdout and "VACUUM" in real.stdout
    assert versions(db, "churn") == [1, 2, 3, 4, 8]
    assert db.sql("SELECT version FROM pgm_history WHERE name = 'churn' AND action = 'model_version_deleted'"
                  " ORDER BY version") == [(5,), (6,), (7,)]
    assert cli(db, "prune", "--keep-last", "1").stdout.startswith("deleted 0 versions")


@pytest.fixture
def hook_url(monkeypatch) -> str:
    """A webhook URL MLflow accepts here (no dispatcher runs: the deliveries stay in the outbox)."""
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    return "http://127.0.0.1:9/hook"


def test_deletes_fire_webhooks(churn, db, hook_url):
    hook = churn.create_webhook("audit", hook_url, events=["model_version.created"])
    db.sql("UPDATE pgm_webhooks SET all_changes = true WHERE webhook_id = %s", (hook.webhook_id,))

    prune.execute(db.uri, prune.plan(db.uri, prune.Rules(archived_only=True)))

    assert db.sql("SELECT h.version, d.event FROM pgm_webhook_deliveries d JOIN pgm_history h ON h.id = d.history_id"
                  " ORDER BY h.version") == [(5, "pgmodels.model_version_deleted"), (7, "pgmodels.model_version_deleted")]


def test_older_than_archived_only_and_a_name_pattern_all_hold(client, db, tmp_path):
    for name in ("churn_eu", "churn_us", "fraud"):
        register(client, tmp_path, name, 4)
        archive(client, name, 1, 2, 3)
    db.sql("UPDATE models SET created_at = created_at - interval '40 days' WHERE version <= 2")

    planned = prune.plan(db.uri, prune.Rules(name="churn*", older_than=prune.duration("30d"), archived_only=True))

    assert planned.versions == {"churn_eu": [1, 2], "churn_us": [1, 2]}
    assert planned.freed_bytes >= sum(planned.bytes.values()) > 0
    outcome = prune.execute(db.uri, planned)
    assert outcome.deleted == planned.versions and not outcome.kept and not outcome.failed
    assert versions(db, "churn_eu") == versions(db, "churn_us") == [3, 4] and versions(db, "fraud") == [1, 2, 3, 4]


def test_a_rule_that_would_empty_a_model_is_refused_unless_allowed(client, db, tmp_path):
    register(client, tmp_path, "old", 2)
    archive(client, "old", 1, 2)  # no active version: nothing is "latest"

    refused = cli(db, "prune", "--archived-only")
    assert refused.returncode == 2
    assert "would delete every version of 1 model(s) (old)" in refused.stderr and "--allow-empty" in refused.stderr
    assert versions(db, "old") == [1, 2]

    allowed = cli(db, "prune", "--archived-only", "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert versions(db, "old") == [] and client.get_registered_model("old").name == "old"


@pytest.mark.parametrize("args, message", [
    ((), "prune needs a rule"),
    (("--keep-last", "0"), "keep at least 1"),
    (("--older-than", "30 days"), "Invalid duration"),
    (("--keep-last", "1", "--name", "Churn"), "There is no registered model 'Churn'"),
])
def test_bad_rules_are_refused_with_a_message(db, args, message):
    run = cli(db, "prune", *args)
    assert run.returncode == 2 and message in run.stderr


def test_a_pattern_matching_no_model_prunes_nothing(db):
    run = cli(db, "prune", "--keep-last", "3", "--name", "churn*")
    assert run.returncode == 0 and run.stdout.startswith("deleted 0 versions of 0 models")


def _alias_and_register(uri: str, workdir: str, path: str) -> None:
    """In another process: while a prune was being planned, alias a planned version and register a new one."""
    from mlflow import MlflowClient

    procs.enter(workdir, tracking_uri=uri)
    client = MlflowClient()
    client.set_registered_model_alias("race", "canary", 2)
    client.create_model_version("race", source=path)


def test_changes_committed_after_the_plan_are_seen_before_anything_goes(client, db, tmp_path):
    register(client, tmp_path, "race", 4)
    planned = prune.plan(db.uri, prune.Rules(keep_last=1))
    assert planned.versions == {"race": [1, 2, 3]}

    child = procs.context().Process(target=_alias_and_register,
                                    args=(db.uri, str(tmp_path / "child"), sample.saved(tmp_path / "again")))
    child.start()
    child.join(120)
    assert child.exitcode == 0

    outcome = prune.execute(db.uri, planned)

    assert outcome.deleted == {"race": [1, 3]} and outcome.kept == {"race": [2]}
    assert versions(db, "race") == [2, 4, 5]  # the aliased one and the new one stay


def _register_many(uri: str, workdir: str, path: str, count: int) -> None:
    from mlflow import MlflowClient

    procs.enter(workdir, tracking_uri=uri)
    for _ in range(count):
        MlflowClient().create_model_version("busy", source=path)


def test_a_prune_racing_registrations_in_another_process_never_takes_a_new_version(client, db, tmp_path):
    register(client, tmp_path, "busy", 2)
    child = procs.context().Process(target=_register_many,
                                    args=(db.uri, str(tmp_path / "child"), sample.saved(tmp_path / "src"), 15))
    child.start()
    deleted: set[int] = set()
    while child.is_alive():
        outcome = prune.execute(db.uri, prune.plan(db.uri, prune.Rules(name="busy", keep_last=2)))
        assert not outcome.failed
        deleted.update(outcome.deleted.get("busy", []))
    child.join()
    assert child.exitcode == 0

    left = versions(db, "busy")
    assert left[-1] == 17 and not deleted & set(left)  # the newest stayed; what went is gone, whole
    recorded = {v for (v,) in db.sql("SELECT version FROM pgm_history WHERE name = 'busy'"
                                     " AND action = 'model_version_deleted'")}
    assert recorded == deleted
    assert sorted(set(left) | deleted) == list(range(1, 18))


def test_old_deliveries_go_pending_ones_stay(client, db, hook_url):
    hook = client.create_webhook("h", hook_url, events=["registered_model.created"])
    client.create_registered_model("a")
    client.create_registered_model("b")
    db.sql("UPDATE pgm_webhook_deliveries SET created_at = now() - interval '40 days'")
    db.sql("UPDATE pgm_webhook_deliveries SET status = 'delivered' WHERE history_id ="
           " (SELECT min(history_id) FROM pgm_webhook_deliveries)")

    assert "deleted 0 finished webhook deliveries" in cli(db, "prune", "--deliveries-older-than", "50d").stdout
    # the setting: every prune run also takes the deliveries older than it
    run = cli(db, "prune", "--keep-last", "5", env={"MLFLOW_PGMODELS_DELIVERY_RETENTION": "30d"})

    assert run.returncode == 0, run.stderr
    assert "deleted 1 finished webhook deliveries older than 30d" in run.stdout
    assert db.sql("SELECT status FROM pgm_webhook_deliveries WHERE webhook_id = %s", (hook.webhook_id,)) == [("pending",)]


def test_history_is_pruned_only_by_the_owner(client, db):
    client.create_registered_model("audited")
    db.sql("UPDATE pgm_history SET at = at - interval '400 days'")  # the owner may
    client.update_registered_model("audited", "recent")
    user, password = db.login_role("pgmodels_writer")

    refused = cli(db, "prune", "--history-older-than", "365d", uri=db.tcp_uri(user, password))
    assert refused.returncode == 2 and "only the owner of pgm_history" in refused.stderr
    with pytest.raises(MlflowException, match="Permission denied") as e:
        prune.prune_history(db.tcp_uri(user, password), prune.duration("365d"))
    assert e.value.error_code == "PERMISSION_DENIED"

    owner = cli(db, "prune", "--history-older-than", "365d")
    assert owner.returncode == 0, owner.stderr
    assert "deleted 1 history rows" in owner.stdout
    assert db.sql("SELECT action FROM pgm_history WHERE name = 'audited'") == [("registered_model_description_changed",)]


def test_keep_by_alias_and_off(churn, db):
    assert cli(db, "keep", "models:/churn@champion").returncode == 0
    assert db.sql("SELECT version, value FROM pgm_model_version_tags WHERE key = 'pgmodels.keep' ORDER BY version") == \
        [(1, "true"), (4, "churn-api prod")]
    assert cli(db, "keep", "models:/churn/4", "--off").returncode == 0
    assert prune.plan(db.uri, prune.Rules(keep_last=1)).versions == {"churn": [4, 5, 6, 7]}
    bad = cli(db, "keep", "churn/4")
    assert bad.returncode == 2 and "models:/NAME/VERSION" in bad.stderr


def test_a_model_governance_keeps_from_the_user_is_left_whole_and_the_others_are_pruned(client, db, tmp_path):
    from mlflow_pgmodels._lifecycle import governance

    for name in ("team-a-churn", "team-b-fraud"):
        register(client, tmp_path, name, 3)
        archive(client, name, 1)
    db.login_role("pgmodels_writer")  # the groups' rights (sql/roles.sql)
    team, alice = f"team_a_{db.name}", f"alice_{db.name}"
    db.sql(f"CREATE ROLE {team} NOLOGIN")
    db.sql(f"CREATE ROLE {alice} LOGIN PASSWORD 'pw-alice-s3cret' IN ROLE pgmodels_writer, {team}")
    governance.grant_write_rights(db.uri, team, "team-a-*")  # alice may write only team-a-* models

    run = cli(db, "prune", "--archived-only", uri=db.tcp_uri(alice, "pw-alice-s3cret"))

    assert run.returncode == 1
    assert "failed team-b-fraud: Permission denied" in run.stdout and "team-a-churn v1" in run.stdout
    assert versions(db, "team-a-churn") == [2, 3] and versions(db, "team-b-fraud") == [1, 2, 3]
