"""MLflow webhooks on the pgmodels store: the API, and delivery of every change to a real receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from mlflow.entities.webhook import WebhookAction, WebhookEntity, WebhookEvent, WebhookStatus
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._events.webhook_delivery import Dispatcher
from mlflow_pgmodels._events.webhook_requests import SECRETS
from tests import sample
from tests.mlflow_server import mlflow_server

KEY = Fernet.generate_key().decode()
SECRET = "s3cret-for-hmac"
MV_CREATED = WebhookEvent(WebhookEntity.MODEL_VERSION, WebhookAction.CREATED)
RM_CREATED = WebhookEvent(WebhookEntity.REGISTERED_MODEL, WebhookAction.CREATED)
ALIAS_CREATED = WebhookEvent(WebhookEntity.MODEL_VERSION_ALIAS, WebhookAction.CREATED)
# what the receiving end of a test may wait for; a deadline, never an assertion about time
PATIENCE = 30


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, str]] = []
        self.answer = 200
        self.hang = threading.Event()  # set: requests wait until `release` is set
        self.release = threading.Event()
        self.in_flight = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                if receiver.hang.is_set():
                    receiver.in_flight.set()
                    receiver.release.wait(PATIENCE)
                if receiver.answer == 200:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.handler = Handler
        self.port = 0
        self.come_back()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def go_down(self) -> None:
        """Stop listening: connections are refused until come_back."""
        self.server.shutdown()
        self.server.server_close()

    def come_back(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]

    def wait_for(self, count: int) -> list[dict]:
        deadline = time.monotonic() + PATIENCE
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events()


def signed(headers: dict, body: str) -> bool:
    """MLflow's documented check: v1,base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>"))."""
    content = f"{headers['X-MLflow-Delivery-Id']}.{headers['X-MLflow-Timestamp']}.{body}"
    expected = base64.b64encode(hmac.new(SECRET.encode(), content.encode(), hashlib.sha256).digest()).decode()
    return hmac.compare_digest(headers.get("X-MLflow-Signature", ""), f"v1,{expected}")


@pytest.fixture
def webhook_env(monkeypatch):
    """The settings MLflow's own webhook tests use to reach a receiver on 127.0.0.1 over http."""
    env = {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": KEY, "MLFLOW_PGMODELS_WEBHOOK_BACKOFF": "0.1",
           "MLFLOW_WEBHOOK_REQUEST_TIMEOUT": "5"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    SECRETS.reset()  # pick up this key
    yield env
    SECRETS.reset()  # and forget it with the environment


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


def deliveries(db) -> list[tuple]:
    return db.sql("SELECT event, status, attempts, status_code, delivered_at IS NOT NULL "
                  "FROM pgm_webhook_deliveries ORDER BY id")


# ------------------------------------------------------------------------------------- the API
def test_webhook_api_through_mlflow_client(client, webhook_env):
    hook = client.create_webhook("deploy-hook", "https://example.org/hook", events=[MV_CREATED, RM_CREATED],
                                 description="CI", secret=SECRET)
    other = client.create_webhook("alias-hook", "https://example.org/alias", events=[ALIAS_CREATED])

    assert client.get_webhook(hook.webhook_id).events == [MV_CREATED, RM_CREATED]
    assert client.get_webhook(hook.webhook_id).secret == SECRET
    assert [w.name for w in client.list_webhooks()] == ["alias-hook", "deploy-hook"]
    assert [w.name for w in client._get_registry_client().store.list_webhooks_by_event(ALIAS_CREATED)] == ["alias-hook"]

    updated = client.update_webhook(hook.webhook_id, url="https://example.org/v2", status=WebhookStatus.DISABLED)
    assert (updated.url, updated.status, updated.description) == ("https://example.org/v2", WebhookStatus.DISABLED, "CI")
    assert updated.last_updated_timestamp > hook.last_updated_timestamp

    client.delete_webhook(other.webhook_id)
    assert [w.name for w in client.list_webhooks()] == ["deploy-hook"]
    with pytest.raises(MlflowException, match="not found") as e:
        client.get_webhook(other.webhook_id)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_secret_is_stored_encrypted_with_mlflows_key(client, db, webhook_env):
    hook = client.create_webhook("signed", "https://example.org/hook", events=[MV_CREATED], secret=SECRET)

    (stored,) = db.sql("SELECT secret FROM pgm_webhooks WHERE webhook_id = %s", (hook.webhook_id,))[0]
    assert SECRET not in stored
    assert Fernet(KEY.encode()).decrypt(stored.encode()).decode() == SECRET


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:8080/hook", "public"),
    ("http://169.254.169.254/latest/meta-data", "public"),
    ("ftp://example.org/hook", "Invalid webhook URL scheme"),
])
def test_urls_mlflow_refuses_are_refused(client, monkeypatch, url, message):
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    with pytest.raises(MlflowException, match=message) as e:
        client.create_webhook("ssrf", url, events=[MV_CREATED])
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.list_webhooks() == []


# ------------------------------------------------------------------------------------- delivery
def test_version_registered_by_a_direct_client_reaches_the_receiver_signed_once(client, db, webhook_env,
                                                                                 receiver, tmp_path):
    client.create_webhook("ci", receiver.url, events=[MV_CREATED, RM_CREATED], secret=SECRET)
    dispatcher = Dispatcher(db.uri).start()
    try:
        sample.register(client, tmp_path, tags={"team": "risk"}, description="first")
        events = receiver.wait_for(2)
    finally:
        dispatcher.stop()

    assert Dispatcher(db.uri).deliver_due() == 0  # nothing left over, nothing sent again
    assert len(receiver.received) == 2
    assert all(signed(headers, body) for headers, body in receiver.received)
    by_entity = {e["entity"]: e for e in events}
    assert by_entity["registered_model"]["data"] == {"name": "churn", "tags": {}, "description": None}
    assert by_entity["model_version"]["action"] == "created"
    assert by_entity["model_version"]["data"] == {
        "name": "churn", "version": "1", "source": client.get_model_version("churn", "1").source,
        "run_id": None, "tags": {"team": "risk"}, "description": "first"}
    assert sorted(deliveries(db)) == [("model_version.created", "delivered", 1, 200, True),
                                      ("registered_model.created", "delivered", 1, 200, True)]


def test_plain_sql_changes_reach_the_receiver(client, db, webhook_env, receiver, tmp_path):
    from mlflow_pgmodels.cli import main

    sample.register(client, tmp_path)
    tag_set = WebhookEvent(WebhookEntity.MODEL_VERSION_TAG, WebhookAction.SET)
    hook = client.create_webhook("audit", receiver.url, events=[tag_set], secret=SECRET)
    assert main(["webhooks", "all-changes", hook.webhook_id, "on", "--uri", db.uri]) == 0

    db.sql("UPDATE models SET is_active = false WHERE name = 'churn' AND version = 1")
    db.sql("UPDATE models SET event = 'fraud' WHERE name = 'churn' AND version = 1")
    assert Dispatcher(db.uri).deliver_due() == 2

    assert all(signed(headers, body) for headers, body in receiver.received)
    archived, tagged = receiver.events()
    assert (archived["entity"], archived["action"]) == ("model_version", "updated")
    assert archived["data"]["change"] == "model_version_stage_changed"
    assert archived["data"]["name"] == "churn" and archived["data"]["version"] == "1"
    assert archived["data"]["new"]["is_active"] is False and archived["data"]["old"]["is_active"] is True
    assert (tagged["entity"], tagged["action"]) == ("model_version_tag", "set")
    assert tagged["data"] == {"name": "churn", "version": "1", "key": "event", "value": "fraud"}
    assert Dispatcher(db.uri).deliver_due() == 0
    assert len(receiver.received) == 2


def test_receiver_down_for_a_while_gets_the_event_when_it_returns(client, db, webhook_env, receiver, tmp_path):
    def attempts_reach(count: int) -> tuple:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            rows = db.sql("SELECT attempts, status, last_error FROM pgm_webhook_deliveries")
            if rows and rows[0][0] >= count:
                return rows[0]
            time.sleep(0.05)
        return rows[0] if rows else None

    client.create_webhook("ci", receiver.url, events=[MV_CREATED], secret=SECRET)
    receiver.answer = 503
    dispatcher = Dispatcher(db.uri).start()
    try:
        sample.register(client, tmp_path)
        _, status, error = attempts_reach(2)  # answering 503
        assert (status, error.split(":")[0]) == ("pending", "HTTP 503")
        receiver.go_down()
        attempts, status, error = attempts_reach(4)  # refusing connections
        assert (status, error.split(":")[0]) == ("pending", "ConnectionError")
        receiver.answer = 200
        receiver.come_back()
        events = receiver.wait_for(1)
    finally:
        dispatcher.stop()

    assert [e["data"]["version"] for e in events] == ["1"]
    assert signed(*receiver.received[0])
    (status, attempts_at_end, code, delivered), = db.sql(
        "SELECT status, attempts, status_code, delivered_at IS NOT NULL FROM pgm_webhook_deliveries")
    assert (status, code, delivered) == ("delivered", 200, True) and attempts_at_end > attempts


def test_two_dispatchers_deliver_each_event_once(client, db, webhook_env, receiver, tmp_path):
    sample.register(client, tmp_path)
    client.create_webhook("ci", receiver.url, events=[WebhookEvent(WebhookEntity.MODEL_VERSION_TAG,
                                                                   WebhookAction.SET)], secret=SECRET)
    for i in range(12):
        client.set_model_version_tag("churn", "1", f"k{i}", str(i))

    dispatchers = [Dispatcher(db.uri, workers=3), Dispatcher(db.uri, workers=3)]
    threads = [threading.Thread(target=d.deliver_due) for d in dispatchers for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)

    keys = sorted(e["data"]["key"] for e in receiver.events())
    assert keys == sorted(f"k{i}" for i in range(12))
    assert len({headers["X-MLflow-Delivery-Id"] for headers, _ in receiver.received}) == 12
    assert db.sql("SELECT status, attempts, count(*) FROM pgm_webhook_deliveries GROUP BY 1, 2") == [
        ("delivered", 1, 12)]


def test_a_hanging_receiver_does_not_hold_up_registrations(client, db, webhook_env, receiver, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_WEBHOOK_REQUEST_TIMEOUT", str(PATIENCE))
    client.create_webhook("ci", receiver.url, events=[MV_CREATED], secret=SECRET)
    receiver.hang.set()
    dispatcher = Dispatcher(db.uri).start()
    try:
        sample.register(client, tmp_path)
        assert receiver.in_flight.wait(PATIENCE)  # version 1's delivery is now stuck in the receiver
        sample.register(client, tmp_path)  # returns although the receiver has not answered
        assert not receiver.release.is_set() and receiver.received == []
        assert int(client.get_model_version("churn", "2").version) == 2
        receiver.release.set()
        events = receiver.wait_for(2)
    finally:
        dispatcher.stop()
    assert sorted(e["data"]["version"] for e in events) == ["1", "2"]


class Trickler:
    """An HTTP endpoint on 127.0.0.1 that reads a request, then answers it one byte every 2 s, never finishing."""

    def __init__(self) -> None:
        self.requests = 0
        self.stop = threading.Event()
        trickler = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                trickler.requests += 1
                for byte in b"HTTP/1.1 200 OK\r\nX-Slowly: " + b"a" * 100_000:
                    if trickler.stop.wait(2):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the sender gave up
                        return

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()


def long_idle_transactions(db) -> list[tuple]:
    """Sessions of this database idle inside a transaction for more than 3 s (what holds back vacuum)."""
    return db.sql("SELECT pid, application_name, left(query, 200) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND state LIKE 'idle in transaction%%'"
                  " AND clock_timestamp() - state_change > interval '3 seconds'")


def test_a_trickling_receiver_delays_no_other_receiver_and_holds_no_transaction(client, db, webhook_env, receiver,
                                                                                tmp_path, monkeypatch):
    """A receiver answering a byte every 2 s (each read well within the 5 s timeout): the healthy receiver
    still gets every delivery, no session stays idle in a transaction, and the slow deliveries fail once
    the whole request has taken MLFLOW_WEBHOOK_REQUEST_TIMEOUT (5 s)."""
    monkeypatch.setenv("MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS", "1")
    slow = Trickler()
    client.create_webhook("slow", slow.url, events=[MV_CREATED], secret=SECRET)
    client.create_webhook("healthy", receiver.url, events=[MV_CREATED], secret=SECRET)
    for _ in range(4):  # as many slow deliveries as the dispatcher has workers (default 4)
        sample.register(client, tmp_path)
    dispatcher = Dispatcher(db.uri).start()
    try:
        deadline = time.monotonic() + PATIENCE
        while slow.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.requests >= 1
        sample.register(client, tmp_path)  # a new delivery for each receiver while a slow one is in flight
        events = receiver.wait_for(5)
        assert sorted(int(e["data"]["version"]) for e in events) == [1, 2, 3, 4, 5]

        idle = []
        for _ in range(20):  # while slow requests go on
            idle += long_idle_transactions(db)
            time.sleep(0.25)
        assert idle == []

        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and not db.sql(
                "SELECT 1 FROM pgm_webhook_deliveries d JOIN pgm_webhooks w USING (webhook_id)"
                " WHERE w.name = 'slow' AND d.status = 'failed'"):
            time.sleep(0.1)
        failed = db.sql("SELECT d.attempts, d.last_error FROM pgm_webhook_deliveries d JOIN pgm_webhooks w"
                        " USING (webhook_id) WHERE w.name = 'slow' AND d.status = 'failed'")
    finally:
        dispatcher.stop()
        slow.close()
    assert failed and all(attempts == 1 for attempts, _ in failed)
    assert all("no complete answer within 5 s" in error and "MLFLOW_WEBHOOK_REQUEST_TIMEOUT" in error
               for _, error in failed), failed
    assert db.sql("SELECT count(*) FROM pgm_webhook_deliveries d JOIN pgm_webhooks w USING (webhook_id)"
                  " WHERE w.name = 'healthy' AND d.status = 'delivered'") == [(5,)]


def test_a_delivery_leased_by_a_dispatcher_that_died_is_sent_once_its_lease_expires(client, db, webhook_env,
                                                                                    receiver, tmp_path):
    client.create_webhook("ci", receiver.url, events=[MV_CREATED], secret=SECRET)
    sample.register(client, tmp_path)
    # a dispatcher claimed it (attempt 1) and died before recording anything
    db.sql("UPDATE pgm_webhook_deliveries SET attempts = 1, leased_until = now() + interval '1 hour'")
    assert Dispatcher(db.uri).deliver_due() == 0  # leased: not sent twice while its lease runs
    assert receiver.received == []

    db.sql("UPDATE pgm_webhook_deliveries SET leased_until = now() - interval '1 second'")
    assert Dispatcher(db.uri).deliver_due() == 1
    assert [e["data"]["version"] for e in receiver.wait_for(1)] == ["1"]
    assert deliveries(db) == [("model_version.created", "delivered", 2, 200, True)]
    assert db.sql("SELECT leased_until FROM pgm_webhook_deliveries") == [(None,)]


@pytest.mark.slow
def test_alias_moved_through_the_rest_api_of_mlflow_server(client, db, webhook_env, receiver, tmp_path):
    sample.register(client, tmp_path)
    sample.register(client, tmp_path)
    alias_deleted = WebhookEvent(WebhookEntity.MODEL_VERSION_ALIAS, WebhookAction.DELETED)
    client.create_webhook("deploy", receiver.url, events=[ALIAS_CREATED, alias_deleted], secret=SECRET)

    with mlflow_server(tmp_path / "server", db.uri, env=webhook_env) as server:
        def rest(method: str, path: str, body: dict) -> None:
            request = urllib.request.Request(f"{server.url}/api/2.0/mlflow/{path}", method=method,
                                             data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=PATIENCE).read()

        rest("POST", "registered-models/alias", {"name": "churn", "alias": "champion", "version": "1"})
        receiver.wait_for(1)
        rest("POST", "registered-models/alias", {"name": "churn", "alias": "champion", "version": "2"})
        events = receiver.wait_for(2)
        assert server.failures() == []

    assert [(e["entity"], e["action"], e["data"]) for e in events] == [
        ("model_version_alias", "created", {"name": "churn", "alias": "champion", "version": "1"}),
        ("model_version_alias", "created", {"name": "churn", "alias": "champion", "version": "2"})]
    assert all(signed(headers, body) for headers, body in receiver.received)


def test_prompts_get_mlflows_prompt_events(client, db, webhook_env, receiver):
    import mlflow

    events = [WebhookEvent(WebhookEntity.PROMPT, WebhookAction.CREATED),
              WebhookEvent(WebhookEntity.PROMPT_VERSION, WebhookAction.CREATED),
              WebhookEvent(WebhookEntity.PROMPT_ALIAS, WebhookAction.CREATED), MV_CREATED, RM_CREATED]
    client.create_webhook("prompts", receiver.url, events=events, secret=SECRET)

    mlflow.genai.register_prompt("greeting", template="Hello {{name}}", tags={"lang": "en"})
    mlflow.genai.set_prompt_alias("greeting", alias="prod", version=1)
    Dispatcher(db.uri).deliver_due()

    got = {(e["entity"], e["action"]): e["data"] for e in receiver.events()}
    assert set(got) == {("prompt", "created"), ("prompt_version", "created"), ("prompt_alias", "created")}
    assert got[("prompt", "created")]["name"] == "greeting"
    assert got[("prompt_version", "created")]["template"] == "Hello {{name}}"
    assert got[("prompt_version", "created")]["tags"]["lang"] == "en"
    assert got[("prompt_alias", "created")] == {"name": "greeting", "alias": "prod", "version": "1"}


def test_test_webhook_sends_mlflows_example_payload_signed(client, webhook_env, receiver):
    hook = client.create_webhook("ci", receiver.url, events=[ALIAS_CREATED], secret=SECRET)

    result = client.test_webhook(hook.webhook_id)

    assert (result.success, result.response_status) == (True, 200)
    (headers, body), = receiver.received
    assert signed(headers, body)
    assert (json.loads(body)["entity"], json.loads(body)["action"]) == ("model_version_alias", "created")


def test_writer_role_runs_webhooks_and_reader_role_cannot_create_them(db, webhook_env, receiver, tmp_path):
    import mlflow

    writer_uri = db.tcp_uri(*db.login_role("pgmodels_writer"))
    reader_uri = db.tcp_uri(*db.login_role("pgmodels_reader"))
    writer = mlflow.MlflowClient(tracking_uri=db.uri, registry_uri=writer_uri)
    writer.create_webhook("ci", receiver.url, events=[MV_CREATED], secret=SECRET)
    sample.register(writer, tmp_path)
    assert Dispatcher(writer_uri).deliver_due() == 1
    assert [e["data"]["version"] for e in receiver.events()] == ["1"]

    # a predict job's role neither sees webhooks (their URLs and secrets) nor creates them
    reader = mlflow.MlflowClient(tracking_uri=db.uri, registry_uri=reader_uri)
    for refused in (lambda: reader.list_webhooks(),
                    lambda: reader.create_webhook("nope", receiver.url, events=[MV_CREATED])):
        with pytest.raises(MlflowException) as e:
            refused()
        assert e.value.error_code == "PERMISSION_DENIED"
        assert reader_uri.split(":")[2].split("@")[0] not in e.value.message  # no password in the error
def test_a_schema_4_database_gets_delivery_leases_on_first_use(db):
    """An existing database from before leases (schema version 4) is upgraded in place, its pending deliveries kept."""
    from mlflow_pgmodels._pg.schema import SCHEMA_VERSION, ensure_schema

    db.sql("ALTER TABLE pgm_webhook_deliveries DROP COLUMN leased_until")
    db.sql("UPDATE pgm_schema_info SET schema_version = 4")
    uri = f"{db.uri}&application_name=first-use"  # a URI this process has not used yet

    ensure_schema(uri)

    assert db.sql("SELECT schema_version FROM pgm_schema_info") == [(SCHEMA_VERSION,)]
    assert db.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'pgm_webhook_deliveries'"
                  " AND column_name = 'leased_until'") == [(1,)]
