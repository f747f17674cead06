"""Delivering MLflow webhooks for every change recorded in ``pgm_history``.

A deferred trigger (sql/pgmodels_webhooks.sql) writes one ``pgm_webhook_deliveries`` row per
change and subscribed webhook when the change commits. Dispatchers claim those rows one at a
time with ``FOR UPDATE SKIP LOCKED`` (so several processes never send the same row twice),
send them signed as MLflow does, and record the outcome; failures are retried with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from datetime import datetime, timezone

import psycopg
import requests
from cryptography.fernet import InvalidToken
from mlflow.entities.webhook import Webhook, WebhookEvent, WebhookStatus
from mlflow.environment_variables import (
    MLFLOW_WEBHOOK_REQUEST_TIMEOUT,
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY,
)
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY, PROMPT_TEXT_TAG_KEY, PROMPT_TYPE_TAG_KEY
from mlflow.protos.databricks_pb2 import INVALID_STATE
from mlflow.webhooks import types as payloads
from mlflow.webhooks.constants import (
    WEBHOOK_DELIVERY_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
)

from mlflow_pgmodels._mlflow import (
    encrypted_string_type,
    generate_hmac_signature,
    validate_webhook_url,
    webhook_http_adapter,
)
from mlflow_pgmodels.db import behind_transaction_pooler, connection
from mlflow_pgmodels.schema import ensure_schema
from mlflow_pgmodels.settings import positive_number
from mlflow_pgmodels.uri import download_uri, redact, to_conninfo

_logger = logging.getLogger(__name__)

CHANNEL = "pgmodels_webhook_deliveries"
# Receiver answers worth another try, as MLflow's own delivery retries them.
RETRY_STATUS = {429, 500, 502, 503, 504}
_DEFAULT_TAGS = {"event": "default", "model_type": "unspecified"}


def max_attempts() -> int:
    """Attempts per delivery before it is recorded as failed (MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS)."""
    return int(positive_number("MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS", 12))


def backoff_seconds(attempts: int) -> float:
    """Wait before attempt ``attempts + 1``: doubling from MLFLOW_PGMODELS_WEBHOOK_BACKOFF seconds
    (default 1) up to 300 s, plus up to a second of jitter (as MLflow's urllib3 retries)."""
    base = positive_number("MLFLOW_PGMODELS_WEBHOOK_BACKOFF", 1.0, float)
    return min(base * 2 ** max(attempts - 1, 0), 300.0) + random.uniform(0, min(base, 1.0))


# ---------------------------------------------------------------------------------- secrets
_secret_type = None
_secret_lock = threading.Lock()


def _secrets():
    """MLflow's own EncryptedString (Fernet, key MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY)."""
    global _secret_type
    with _secret_lock:
        if _secret_type is None:
            if not MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY.get():
                _logger.warning(
                    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is not set: webhook secrets are encrypted "
                    "with a key of this process only (as MLflow does), so no other process can sign "
                    "with them. Set it to a Fernet key in every process that uses the store.")
            _secret_type = encrypted_string_type()
        return _secret_type


def encrypt_secret(secret: str | None) -> str | None:
    """The secret as stored in ``pgm_webhooks.secret``."""
    return _secrets().process_bind_param(secret, None)


def decrypt_secret(stored: str | None, webhook_id: str) -> str | None:
    """The secret of a stored token; an MlflowException when the key does not match."""
    try:
        return _secrets().process_result_value(stored, None)
    except InvalidToken:
        raise MlflowException(
            f"The secret of webhook {webhook_id} cannot be decrypted: it was stored with another "
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY. Set the same key in every process that uses the "
            "store, or set a new secret with update_webhook.", INVALID_STATE) from None


# ---------------------------------------------------------------------------------- webhooks
WEBHOOK_COLUMNS = """w.webhook_id, w.name, w.url, w.description, w.status, w.secret,
    w.creation_timestamp, w.last_updated_timestamp,
    (SELECT json_agg(json_build_array(e.entity, e.action) ORDER BY e.position, e.entity, e.action)
       FROM pgm_webhook_events e WHERE e.webhook_id = w.webhook_id)"""


def to_webhook(row: tuple) -> Webhook:
    """A Webhook entity from the columns of WEBHOOK_COLUMNS."""
    webhook_id, name, url, description, status, secret, created, updated, events = row
    return Webhook(
        webhook_id=webhook_id, name=name, url=url,
        events=[WebhookEvent(entity, action) for entity, action in events or []],
        creation_timestamp=created, last_updated_timestamp=updated, description=description,
        status=WebhookStatus(status), secret=decrypt_secret(secret, webhook_id),
    )


# ---------------------------------------------------------------------------------- payloads
def _tags_set_with(conn: psycopg.Connection, h: dict, action: str, version: int | None) -> dict:
    """Tags written in the same transaction as a creation (they travel in its payload)."""
    rows = conn.execute(
        "SELECT new FROM pgm_history WHERE txid = %s::xid8 AND name = %s AND action = %s "
        "AND version IS NOT DISTINCT FROM %s ORDER BY id",
        (h["txid"], h["name"], action, version)).fetchall()
    return {new["key"]: new["value"] for (new,) in rows}


def build_payload(conn: psycopg.Connection, event: str, h: dict) -> tuple[str, str, dict]:
    """(entity, action, data) of the webhook request for one history row, as MLflow builds them."""
    name, old, new = h["name"], h["old"] or {}, h["new"] or {}
    version = None if h["version"] is None else str(h["version"])
    entity, _, action = event.partition(".")
    if entity == "pgmodels":  # a change MLflow has no event for
        data = {"name": name, "version": version, "change": action, "old": h["old"], "new": h["new"],
                "db_user": h["db_user"], "mlflow_user": h["mlflow_user"]}
        kind = "model_version" if version is not None else "registered_model"
        return kind, "deleted" if action.endswith("_deleted") else "updated", data
    if event in ("registered_model.created", "prompt.created"):
        tags = {**(new.get("tags") or {}), **_tags_set_with(conn, h, "registered_model_tag_set", None)}
        if event == "prompt.created":
            tags = {k: v for k, v in tags.items() if k not in (IS_PROMPT_TAG_KEY, PROMPT_TYPE_TAG_KEY)}
            return entity, action, payloads.PromptCreatedPayload(
                name=name, tags=tags, description=new.get("description"))
        return entity, action, payloads.RegisteredModelCreatedPayload(
            name=name, tags=tags, description=new.get("description"))
    if event in ("model_version.created", "prompt_version.created"):
        tags = {k: new[k] for k in _DEFAULT_TAGS if new.get(k) not in (None, _DEFAULT_TAGS[k])}
        tags.update(_tags_set_with(conn, h, "model_version_tag_set", h["version"]))
        description = new.get("description") or None
        if event == "prompt_version.created":
            template = tags.pop(PROMPT_TEXT_TAG_KEY, None)
            tags.pop(IS_PROMPT_TAG_KEY, None)
            tags.pop(PROMPT_TYPE_TAG_KEY, None)
            return entity, action, payloads.PromptVersionCreatedPayload(
                name=name, version=version, template=template, tags=tags, description=description)
        return entity, action, payloads.ModelVersionCreatedPayload(
            name=name, version=version, source=new.get("source") or download_uri(name, version),
            run_id=new.get("run_id") or None, tags=tags, description=description)
    if entity in ("model_version_tag", "prompt_version_tag", "prompt_tag"):
        data = {"name": name}
        if entity != "prompt_tag":
            data["version"] = version
        data["key"] = (new or old)["key"]
        if action == "set":
            data["value"] = new["value"]
        return entity, action, data
    if entity in ("model_version_alias", "prompt_alias"):
        data = {"name": name, "alias": (new or old)["alias"]}
        if action == "created":
            data["version"] = str(new["version"])
        return entity, action, data
    raise ValueError(f"no payload for event {event!r}")


# ---------------------------------------------------------------------------------- sending
def new_session() -> requests.Session:
    """A requests session with MLflow's connect-time SSRF check (where MLflow has one) and no retries of its own."""
    session = requests.Session()
    session.trust_env = False  # a proxy would make the checked peer the proxy (as in MLflow)
    adapter = webhook_http_adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def send(webhook: Webhook, entity: str, action: str, data: dict, at: datetime, delivery_id: str,
         session: requests.Session) -> requests.Response:
    """POST one event as MLflow's delivery does: same body, headers and HMAC signature."""
    validate_webhook_url(webhook.url)
    body = json.dumps({"entity": entity, "action": action,
                       "timestamp": at.astimezone(timezone.utc).isoformat(), "data": data})
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", WEBHOOK_DELIVERY_ID_HEADER: delivery_id,
               WEBHOOK_TIMESTAMP_HEADER: timestamp}
    if webhook.secret:
        headers[WEBHOOK_SIGNATURE_HEADER] = generate_hmac_signature(
            webhook.secret, delivery_id, timestamp, body)
    return session.post(webhook.url, data=body.encode("utf-8"), headers=headers,
                        timeout=MLFLOW_WEBHOOK_REQUEST_TIMEOUT.get())


# ---------------------------------------------------------------------------------- dispatching
_CLAIM = f"""
SELECT d.id, d.event, d.attempts, d.delivery_id::text, w.status = 'ACTIVE' AND w.deleted_timestamp IS NULL,
       h.at, h.txid::text, h.name, h.version, h.action, h.old, h.new, h.db_user, h.mlflow_user,
       {WEBHOOK_COLUMNS}
  FROM pgm_webhook_deliveries d
  JOIN pgm_history h ON h.id = d.history_id
  JOIN pgm_webhooks w ON w.webhook_id = d.webhook_id
 WHERE d.status = 'pending' AND d.next_attempt_at <= clock_timestamp()
 ORDER BY d.next_attempt_at, d.id
 LIMIT 1
   FOR UPDATE OF d SKIP LOCKED"""
_HISTORY_KEYS = ("at", "txid", "name", "version", "action", "old", "new", "db_user", "mlflow_user")


class Dispatcher:
    """Delivers the pending rows of ``pgm_webhook_deliveries`` of one database."""

    def __init__(self, uri: str, workers: int | None = None) -> None:
        self.uri = uri
        self.workers = workers or int(positive_number("MLFLOW_PGMODELS_WEBHOOK_WORKERS", 4))
        self._session = new_session()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def deliver_one(self) -> bool:
        """Claim, send and record one due delivery; False when none is due."""
        with connection(self.uri, "deliver webhooks") as conn, conn.transaction():
            row = conn.execute(_CLAIM).fetchone()
            if row is None:
                return False
            delivery, event, attempts, delivery_id, active = row[:5]
            history = dict(zip(_HISTORY_KEYS, row[5:14]))
            attempts += 1
            if not active:
                self._record(conn, delivery, "skipped", attempts - 1, None, "the webhook was deleted or disabled")
                return True
            try:
                webhook = to_webhook(row[14:])
                entity, action, data = build_payload(conn, event, history)
                response = send(webhook, entity, action, data, history["at"], delivery_id, self._session)
            except Exception as e:  # noqa: BLE001 - recorded on the row; only a receiver or key problem is retried
                final = not isinstance(e, (requests.RequestException, MlflowException)) or (
                    isinstance(e, MlflowException) and e.error_code == "INVALID_PARAMETER_VALUE")
                self._retry_or_fail(conn, delivery, attempts, None, _describe(e), final)
                return True
            if response.status_code < 400:
                self._record(conn, delivery, "delivered", attempts, response.status_code, None)
            else:
                self._retry_or_fail(conn, delivery, attempts, response.status_code,
                                    f"HTTP {response.status_code}: {response.text[:500]}",
                                    response.status_code not in RETRY_STATUS)
            return True

    def _retry_or_fail(self, conn, delivery: int, attempts: int, status_code: int | None, error: str,
                       final: bool) -> None:
        if final or attempts >= max_attempts():
            self._record(conn, delivery, "failed", attempts, status_code, error)
            _logger.warning("webhook delivery %s failed after %s attempts: %s", delivery, attempts, error)
            return
        conn.execute(
            "UPDATE pgm_webhook_deliveries SET attempts = %s, status_code = %s, last_error = %s, "
            "next_attempt_at = clock_timestamp() + make_interval(secs => %s) WHERE id = %s",
            (attempts, status_code, error, backoff_seconds(attempts), delivery))

    @staticmethod
    def _record(conn, delivery: int, status: str, attempts: int, status_code: int | None,
                error: str | None) -> None:
        conn.execute(
            "UPDATE pgm_webhook_deliveries SET status = %s, attempts = %s, status_code = %s, "
            "last_error = %s, delivered_at = CASE WHEN %s = 'delivered' THEN clock_timestamp() END "
            "WHERE id = %s", (status, attempts, status_code, error, status, delivery))

    def deliver_due(self) -> int:
        """Deliver (or reschedule) everything due now, in this thread; the number of rows handled."""
        handled = 0
        while not self._stop.is_set() and self.deliver_one():
            handled += 1
        return handled

    # -------------------------------------------------------------- background operation
    def start(self) -> Dispatcher:
        """Start the listener and the worker threads (daemon threads)."""
        self._threads = [threading.Thread(target=self._listen, name="pgmodels-webhooks-listen", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"pgmodels-webhooks-{i}", daemon=True)
                          for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5)
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception as e:  # noqa: BLE001 - e.g. the database is away; the thread must live on
                _logger.warning("webhook delivery paused: %s", _describe(e))
                self._stop.wait(2)

    def _listen(self) -> None:
        """Wake the workers on each NOTIFY of the trigger, and when a retry falls due."""
        while not self._stop.is_set():
            try:
                ensure_schema(self.uri)
                with psycopg.connect(to_conninfo(self.uri), autocommit=True,
                                     application_name="mlflow-pgmodels webhooks") as conn:
                    if behind_transaction_pooler(conn):
                        # no LISTEN through PgBouncer: the workers' own 5 s wake-ups still deliver
                        _logger.warning("webhook dispatcher: %s is a transaction-pooling connection pooler, "
                                        "where LISTEN does not work; delivering every 5 s instead of at "
                                        "once (a direct URI delivers at once, see docs/scaling.md)",
                                        redact(self.uri))
                        return
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # whatever was missed while not listening
                    while not self._stop.is_set():
                        due = conn.execute(
                            "SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp()) "
                            "FROM pgm_webhook_deliveries WHERE status = 'pending'").fetchone()[0]
                        if due is not None and due <= 0:
                            self._wake.set()
                        wait = 2.0 if due is None else min(max(float(due), 0.05), 2.0)
                        for _ in conn.notifies(timeout=wait, stop_after=1):
                            self._wake.set()
            except (psycopg.Error, MlflowException) as e:
                _logger.warning("webhook dispatcher lost the database, retrying: %s",
                                redact(" ".join(str(e).split())))
                self._stop.wait(2)


def _describe(e: BaseException) -> str:
    text = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
    return redact(" ".join(str(text).split()))[:1000]


_background: dict[tuple[int, str], Dispatcher] = {}
_background_lock = threading.Lock()


def start_in_background(uri: str) -> Dispatcher | None:
    """One dispatcher per process and database, unless MLFLOW_PGMODELS_WEBHOOK_DISPATCHER=false."""
    if os.environ.get("MLFLOW_PGMODELS_WEBHOOK_DISPATCHER", "true").lower() in ("0", "false", "no", "off"):
        return None
    key = (os.getpid(), uri)
    with _background_lock:
        if key not in _background:
            _background[key] = Dispatcher(uri).start()
        return _background[key]
