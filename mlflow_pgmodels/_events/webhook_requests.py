"""What one webhook request holds and how it goes out: secrets, the webhook row as MLflow's entity,
payloads built from ``pgm_history`` rows, MLflow's HMAC signature, and a deadline on the whole request.

The dispatcher that decides when a request is sent is webhook_delivery.py.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import psycopg
import requests
import requests.adapters
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
from psycopg.rows import dict_row

from mlflow_pgmodels._mlflow import (
    encrypted_string_type,
    generate_hmac_signature,
    validate_webhook_url,
    webhook_http_adapter,
)
from mlflow_pgmodels._pg.schema import SEED_COLUMN_DEFAULTS
from mlflow_pgmodels._pg.uri import download_uri

_logger = logging.getLogger(__name__)

_DEFAULT_TAGS = SEED_COLUMN_DEFAULTS


# ---------------------------------------------------------------------------------- secrets
class WebhookSecrets:
    """Encrypts and decrypts ``pgm_webhooks.secret`` with MLflow's own EncryptedString (Fernet, key
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY).

    The key is read on first use and kept for the life of the object (without a key MLflow makes
    one per process, which must then stay the same); :meth:`reset` forgets it, so the next use
    reads the key again.
    """

    def __init__(self) -> None:
        self._type = None
        self._lock = threading.Lock()

    def _cipher(self):
        with self._lock:
            if self._type is None:
                if not MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY.get():
                    _logger.warning(
                        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is not set: webhook secrets are encrypted "
                        "with a key of this process only (as MLflow does), so no other process can sign "
                        "with them. Set it to a Fernet key in every process that uses the store.")
                self._type = encrypted_string_type()
            return self._type

    def reset(self) -> None:
        """Forget the key: the next encryption or decryption reads MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY again."""
        with self._lock:
            self._type = None

    def encrypt(self, secret: str | None) -> str | None:
        """The secret as stored in ``pgm_webhooks.secret``."""
        return self._cipher().process_bind_param(secret, None)

    def decrypt(self, stored: str | None, webhook_id: str) -> str | None:
        """The secret of a stored token; an MlflowException when the key does not match."""
        try:
            return self._cipher().process_result_value(stored, None)
        except InvalidToken:
            raise MlflowException(
                f"The secret of webhook {webhook_id} cannot be decrypted: it was stored with another "
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY. Set the same key in every process that uses the "
                "store, or set a new secret with update_webhook.", INVALID_STATE) from None


# This process's secrets: the store encrypts with it, the dispatchers decrypt.
SECRETS = WebhookSecrets()


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
        secret=SECRETS.decrypt(row["secret"], row["webhook_id"]),
    )


# ---------------------------------------------------------------------------------- payloads
def _tags_set_with(conn: psycopg.Connection, h: dict, action: str, version: int | None) -> dict:
    """Tags written in the same transaction as a creation (they travel in its payload)."""
    rows = conn.cursor(row_factory=dict_row).execute(
        "SELECT new FROM pgm_history WHERE txid = %s::xid8 AND name = %s AND action = %s "
        "AND version IS NOT DISTINCT FROM %s ORDER BY id",
        (h["txid"], h["name"], action, version)).fetchall()
    return {r["new"]["key"]: r["new"]["value"] for r in rows}


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
