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

from mlflow_pgmodels import webhook_delivery
from mlflow_pgmodels.webhook_delivery import Dispatcher
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
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
    monkeypatch.setattr(webhook_delivery, "_secret_type", None)  # pick up this key
    return env


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


def register(client, tmp_path, name: str = "churn", **kwargs):
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, sample.saved(tmp_path / f"m{time.monotonic_ns()}"), **kwargs)


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
