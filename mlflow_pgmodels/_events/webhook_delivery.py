"""Delivering MLflow webhooks for every change recorded in ``pgm_history``.

A deferred trigger (sql/pgmodels_webhooks.sql) writes one ``pgm_webhook_deliveries`` row per
change and subscribed webhook when the change commits. Dispatchers claim those rows one at a
time with ``FOR UPDATE SKIP LOCKED`` (so several processes never send the same row twice),
send them signed as MLflow does, and record the outcome; failures are retried with backoff.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
import requests
import requests.adapters
from psycopg.rows import dict_row
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
from mlflow_pgmodels._pg.db import behind_transaction_pooler, connection
from mlflow_pgmodels._pg.schema import SEED_COLUMN_DEFAULTS, ensure_schema
from mlflow_pgmodels import _settings
from mlflow_pgmodels._pg.uri import download_uri, redact, to_conninfo

_logger = logging.getLogger(__name__)

CHANNEL = "pgmodels_webhook_deliveries"
# Receiver answers worth another try, as MLflow's own delivery retries them.
RETRY_STATUS = {429, 500, 502, 503, 504}
_DEFAULT_TAGS = SEED_COLUMN_DEFAULTS


def max_attempts() -> int:
    """Attempts per delivery before it is recorded as failed (MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS)."""
    return _settings.WEBHOOK_MAX_ATTEMPTS.get()


def backoff_seconds(attempts: int) -> float:
    """Wait before attempt ``attempts + 1``: doubling from MLFLOW_PGMODELS_WEBHOOK_BACKOFF seconds
    (default 1) up to 300 s, plus up to a second of jitter (as MLflow's urllib3 retries)."""
    base = _settings.WEBHOOK_BACKOFF.get()
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
       FROM pgm_webhook_events e WHERE e.webhook_id = w.webhook_id) AS events"""


def to_webhook(row: Mapping[str, Any]) -> Webhook:
    """A Webhook entity from a row of WEBHOOK_COLUMNS read by name (``psycopg.rows.dict_row``)."""
    return Webhook(
        webhook_id=row["webhook_id"], name=row["name"], url=row["url"],
        events=[WebhookEvent(entity, action) for entity, action in row["events"] or []],
        creation_timestamp=row["creation_timestamp"], last_updated_timestamp=row["last_updated_timestamp"],
        description=row["description"], status=WebhookStatus(row["status"]),
        secret=decrypt_secret(row["secret"], row["webhook_id"]),
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
    _with_deadlines(adapter)
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
    timeout = request_timeout()
    with _Deadline(timeout) as deadline:
        try:
            return session.post(webhook.url, data=body.encode("utf-8"), headers=headers, timeout=timeout)
        except requests.RequestException as e:
            if deadline.expired:
                raise requests.Timeout(
                    f"no complete answer within {timeout:g} s (MLFLOW_WEBHOOK_REQUEST_TIMEOUT, the time "
                    "allowed for the whole request)") from e
            raise


def request_timeout() -> float:
    """Seconds one webhook request may take in all, connecting to the last byte of the answer
    (MLFLOW_WEBHOOK_REQUEST_TIMEOUT): a receiver that trickles its answer is cut off then."""
    return float(MLFLOW_WEBHOOK_REQUEST_TIMEOUT.get())


_deadlines = threading.local()  # the _Deadline of the request this thread is sending, if any


class _Deadline:
    """Cuts off the connections of one request once its time is up.

    requests' own timeout bounds each read, not the request: a receiver answering a byte at a
    time would hold it for ever. The connections of the session register their sockets here
    (``_with_deadlines``), and a timer shuts them down at the deadline, which ends the request
    with a connection error.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        _deadlines.current = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _deadlines.current = None

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


def _watched(sock: socket.socket | None) -> None:
    deadline = getattr(_deadlines, "current", None)
    if deadline is not None:
        deadline.watch(sock)


@functools.cache
def _deadline_pool(pool_class: type) -> type:
    """``pool_class`` (a urllib3 connection pool) whose connections register their sockets with the
    deadline of the request being sent (for a new connection and a reused one alike)."""
    base = pool_class.ConnectionCls

    class DeadlineConnection(base):
        def connect(self) -> None:
            super().connect()
            _watched(self.sock)

        def request(self, *args, **kwargs):
            _watched(self.sock)
            return super().request(*args, **kwargs)

    return type(f"Deadline{pool_class.__name__}", (pool_class,), {"ConnectionCls": DeadlineConnection})


def _with_deadlines(adapter: requests.adapters.HTTPAdapter) -> None:
    manager = adapter.poolmanager
    manager.pool_classes_by_scheme = {scheme: _deadline_pool(cls)
                                      for scheme, cls in manager.pool_classes_by_scheme.items()}


# ---------------------------------------------------------------------------------- dispatching
_HISTORY_KEYS = ("at", "txid", "name", "version", "action", "old", "new", "db_user", "mlflow_user")
# prefixed: the webhook's columns have names of their own (name)
_HISTORY_COLUMNS = ", ".join(f"h.{key}{'::text' if key == 'txid' else ''} AS history_{key}" for key in _HISTORY_KEYS)
# A claim leases one due delivery: a short transaction that commits before the request is sent,
# so no transaction (and no pooled connection) stays open while a receiver answers. Not one whose
# receiver (URL) has a request in flight: a slow receiver holds up its own deliveries only. An
# expired lease (its dispatcher died) is claimed again. The attempt is counted at the claim, and
# only the holder of that attempt's lease records its outcome.
_CLAIM = """
UPDATE pgm_webhook_deliveries d
   SET attempts = d.attempts + 1, leased_until = clock_timestamp() + make_interval(secs => %(lease)s)
 WHERE d.id = (
       SELECT c.id FROM pgm_webhook_deliveries c JOIN pgm_webhooks w ON w.webhook_id = c.webhook_id
        WHERE c.status = 'pending' AND c.next_attempt_at <= clock_timestamp()
          AND (c.leased_until IS NULL OR c.leased_until < clock_timestamp())
          AND NOT EXISTS (SELECT 1 FROM pgm_webhook_deliveries b JOIN pgm_webhooks bw ON bw.webhook_id = b.webhook_id
                           WHERE b.status = 'pending' AND b.leased_until >= clock_timestamp() AND bw.url = w.url)
        ORDER BY c.next_attempt_at, c.id
        LIMIT 1
          FOR UPDATE OF c SKIP LOCKED)
RETURNING d.id"""
_CLAIMED = f"""
SELECT d.id AS delivery, d.event, d.attempts, d.delivery_id::text,
       w.status = 'ACTIVE' AND w.deleted_timestamp IS NULL AS active,
       {_HISTORY_COLUMNS},
       {WEBHOOK_COLUMNS}
  FROM pgm_webhook_deliveries d
  JOIN pgm_history h ON h.id = d.history_id
  JOIN pgm_webhooks w ON w.webhook_id = d.webhook_id
 WHERE d.id = %s"""
# When the next delivery falls due: its retry time, the end of its own lease or of its receiver's.
_NEXT_DUE = """
SELECT extract(epoch FROM min(GREATEST(d.next_attempt_at, d.leased_until, (
           SELECT max(b.leased_until) FROM pgm_webhook_deliveries b JOIN pgm_webhooks bw ON bw.webhook_id = b.webhook_id
            WHERE b.status = 'pending' AND b.leased_until >= clock_timestamp() AND bw.url = w.url)))
       - clock_timestamp())
  FROM pgm_webhook_deliveries d JOIN pgm_webhooks w ON w.webhook_id = d.webhook_id
 WHERE d.status = 'pending'"""
# Seconds a lease outlives the longest request, so that only a dead dispatcher's lease expires.
_LEASE_MARGIN = 60.0


@dataclass
class _Claim:
    """A leased delivery, ready to send: its request, or why it cannot be sent."""

    delivery: int
    attempts: int  # this attempt's number
    delivery_id: str
    active: bool
    at: datetime | None = None
    webhook: Webhook | None = None
    request: tuple[str, str, dict] | None = None  # entity, action, data
    error: Exception | None = None


class Dispatcher:
    """Delivers the pending rows of ``pgm_webhook_deliveries`` of one database."""

    def __init__(self, uri: str, workers: int | None = None) -> None:
        self.uri = uri
        self.workers = workers or _settings.WEBHOOK_WORKERS.get()
        self._session = new_session()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def deliver_one(self) -> bool:
        """Claim, send and record one due delivery; False when none is due."""
        claim = self._claim()
        if claim is None:
            return False
        if not claim.active:
            self._record(claim, "skipped", claim.attempts - 1, None, "the webhook was deleted or disabled")
            return True
        try:
            if claim.error is not None:
                raise claim.error
            response = send(claim.webhook, *claim.request, claim.at, claim.delivery_id, self._session)
        except Exception as e:  # noqa: BLE001 - recorded on the row; only a receiver or key problem is retried
            final = not isinstance(e, (requests.RequestException, MlflowException)) or (
                isinstance(e, MlflowException) and e.error_code == "INVALID_PARAMETER_VALUE")
            self._retry_or_fail(claim, None, _describe(e), final)
            return True
        if response.status_code < 400:
            self._record(claim, "delivered", claim.attempts, response.status_code, None)
        else:
            self._retry_or_fail(claim, response.status_code, f"HTTP {response.status_code}: {response.text[:500]}",
                                response.status_code not in RETRY_STATUS)
        return True

    def _claim(self) -> _Claim | None:
        """Lease the next due delivery and read what its request needs, in one short transaction."""
        with connection(self.uri, "deliver webhooks") as conn, conn.transaction():
            leased = conn.execute(_CLAIM, {"lease": request_timeout() + _LEASE_MARGIN}).fetchone()
            if leased is None:
                return None
            row = conn.cursor(row_factory=dict_row).execute(_CLAIMED, leased).fetchone()
            claim = _Claim(row["delivery"], row["attempts"], row["delivery_id"], row["active"], row["history_at"])
            if claim.active:
                try:
                    claim.webhook = to_webhook(row)
                    claim.request = build_payload(conn, row["event"], {k: row[f"history_{k}"] for k in _HISTORY_KEYS})
                except Exception as e:  # noqa: BLE001 - recorded on the row after the claim commits
                    claim.error = e
            return claim

    def _retry_or_fail(self, claim: _Claim, status_code: int | None, error: str, final: bool) -> None:
        if final or claim.attempts >= max_attempts():
            self._record(claim, "failed", claim.attempts, status_code, error)
            _logger.warning("webhook delivery %s failed after %s attempts: %s", claim.delivery, claim.attempts, error)
            return
        self._record(claim, "pending", claim.attempts, status_code, error, retry_in=backoff_seconds(claim.attempts))

    def _record(self, claim: _Claim, status: str, attempts: int, status_code: int | None, error: str | None,
                retry_in: float = 0.0) -> None:
        """End the lease with the outcome (unless the lease expired and another dispatcher took it over)."""
        with connection(self.uri, "record a webhook delivery") as conn:
            conn.execute(
                "UPDATE pgm_webhook_deliveries SET status = %(status)s, attempts = %(attempts)s,"
                " status_code = %(code)s, last_error = %(error)s, leased_until = NULL,"
                " delivered_at = CASE WHEN %(delivered)s THEN clock_timestamp() END,"
                " next_attempt_at = CASE WHEN %(retry)s"
                "   THEN clock_timestamp() + make_interval(secs => %(retry_in)s) ELSE next_attempt_at END"
                " WHERE id = %(id)s AND attempts = %(claimed)s AND status = 'pending'",
                {"status": status, "attempts": attempts, "code": status_code, "error": error,
                 "delivered": status == "delivered", "retry": status == "pending", "retry_in": retry_in,
                 "id": claim.delivery, "claimed": claim.attempts})
        self._wake.set()  # its receiver's next delivery can go now

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
                        due = conn.execute(_NEXT_DUE).fetchone()[0]
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
    if not _settings.WEBHOOK_DISPATCHER.get():
        return None
    key = (os.getpid(), uri)
    with _background_lock:
        if key not in _background:
            _background[key] = Dispatcher(uri).start()
        return _background[key]
