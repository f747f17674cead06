"""MLflow's webhook API on the pgmodels registry store (mixed into PgModelsRegistryStore).

Webhooks live in ``pgm_webhooks`` / ``pgm_webhook_events`` with MLflow's semantics, validation
and errors; secrets are encrypted as MLflow's SqlAlchemyStore encrypts them. Delivery is not done
here but by the dispatcher of :mod:`mlflow_pgmodels._events.webhook_delivery`, for every change in
``pgm_history``; inside ``mlflow server`` the store starts one in the background.
"""

from __future__ import annotations

import threading
import uuid

from mlflow.entities.webhook import Webhook, WebhookEntity, WebhookEvent, WebhookStatus, WebhookTestResult
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.search_utils import SearchUtils
from mlflow.utils.time import get_current_time_millis
from psycopg import sql
from psycopg.rows import dict_row

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels._events.webhook_delivery import BACKGROUND
from mlflow_pgmodels._events.webhook_requests import SECRETS, WEBHOOK_COLUMNS, to_webhook
from mlflow_pgmodels._mlflow import validate_webhook_events, validate_webhook_name, validate_webhook_url
from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.route import ROUTER
from mlflow_pgmodels._pg.sql_build import Expr, set_clause

_patch_lock = threading.Lock()


class WebhookStoreMixin:
    """Webhook methods of the store; ``self.store_uri`` is the ``pgmodels://`` URI."""

    def __init__(self, store_uri: str | None = None, tracking_uri: str | None = None) -> None:
        super().__init__(store_uri=store_uri, tracking_uri=tracking_uri)
        if ROUTER.in_server() and store_uri:
            # inside `mlflow server`: this process delivers, and MLflow's handlers must not
            # deliver the same registry events a second time
            _route_server_deliveries_to_history()
            BACKGROUND.start(store_uri)

    def _webhook_conn(self, what: str):
        return connection(self.store_uri, what)

    def create_webhook(self, name: str, url: str, events: list[WebhookEvent], description: str | None = None,
                       secret: str | None = None, status: WebhookStatus | None = None) -> Webhook:
        validate_webhook_name(name)
        validate_webhook_url(url)
        validate_webhook_events(events)
        webhook_id = str(uuid.uuid4())
        now = get_current_time_millis()
        with self._webhook_conn("create a webhook") as conn, conn.transaction():
            conn.execute(
                "INSERT INTO pgm_webhooks (webhook_id, name, url, description, secret, status, "
                "creation_timestamp, last_updated_timestamp) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (webhook_id, name, url, description, SECRETS.encrypt(secret),
                 (status or WebhookStatus.ACTIVE).value, now, now))
            _insert_events(conn, webhook_id, events)
            return self._webhook(conn, webhook_id)

    def get_webhook(self, webhook_id: str) -> Webhook:
        with self._webhook_conn("read a webhook") as conn:
            return self._webhook(conn, webhook_id)

    def list_webhooks(self, max_results: int | None = None, page_token: str | None = None) -> PagedList[Webhook]:
        return self._list_webhooks("", (), max_results, page_token)

    def list_webhooks_by_event(self, event: WebhookEvent, max_results: int | None = None,
                               page_token: str | None = None) -> PagedList[Webhook]:
        return self._list_webhooks(
            "AND EXISTS (SELECT 1 FROM pgm_webhook_events e WHERE e.webhook_id = w.webhook_id "
            "AND e.entity = %s AND e.action = %s)", (event.entity.value, event.action.value),
            max_results, page_token)

    def update_webhook(self, webhook_id: str, name: str | None = None, description: str | None = None,
                       url: str | None = None, events: list[WebhookEvent] | None = None,
                       secret: str | None = None, status: WebhookStatus | None = None) -> Webhook:
        with self._webhook_conn("update a webhook") as conn, conn.transaction():
            conn.execute("SELECT 1 FROM pgm_webhooks WHERE webhook_id = %s AND deleted_timestamp IS NULL "
                         "FOR UPDATE", (webhook_id,)).fetchone() or _not_found(webhook_id)
            changes = {}
            if name is not None:
                validate_webhook_name(name)
                changes["name"] = name
            if url is not None:
                validate_webhook_url(url)
                changes["url"] = url
            if events is not None:
                validate_webhook_events(events)
                conn.execute("DELETE FROM pgm_webhook_events WHERE webhook_id = %s", (webhook_id,))
                _insert_events(conn, webhook_id, events)
            if description is not None:
                changes["description"] = description
            if secret is not None:
                changes["secret"] = SECRETS.encrypt(secret)
            if status is not None:
                changes["status"] = status.value
            # the timestamp always moves forward, even within the same millisecond
            sets, params = set_clause({"last_updated_timestamp": Expr(
                sql.SQL("GREATEST(%s, coalesce(last_updated_timestamp, 0) + 1)"), (get_current_time_millis(),)),
                **changes})
            conn.execute(sql.SQL("UPDATE pgm_webhooks SET {} WHERE webhook_id = %s").format(sets), [*params, webhook_id])
            return self._webhook(conn, webhook_id)

    def delete_webhook(self, webhook_id: str) -> None:
        now = get_current_time_millis()
        with self._webhook_conn("delete a webhook") as conn:
            deleted = conn.execute(
                "UPDATE pgm_webhooks SET deleted_timestamp = %s, last_updated_timestamp = %s "
                "WHERE webhook_id = %s AND deleted_timestamp IS NULL", (now, now, webhook_id)).rowcount
        if not deleted:
            _not_found(webhook_id)

    def test_webhook(self, webhook_id: str, event: WebhookEvent | None = None) -> WebhookTestResult:
        from mlflow.webhooks.delivery import test_webhook

        return test_webhook(self.get_webhook(webhook_id), event)

    # ------------------------------------------------------------------------------ helpers
    @staticmethod
    def _webhook(conn, webhook_id: str) -> Webhook:
        row = conn.cursor(row_factory=dict_row).execute(f"SELECT {WEBHOOK_COLUMNS} FROM pgm_webhooks w "
                           "WHERE w.webhook_id = %s AND w.deleted_timestamp IS NULL", (webhook_id,)).fetchone()
        return to_webhook(row) if row else _not_found(webhook_id)

    def _list_webhooks(self, where: str, params: tuple, max_results: int | None,
                       page_token: str | None) -> PagedList[Webhook]:
        max_results = max_results or 100
        if max_results < 1 or max_results > 1000:
            raise MlflowException("max_results must be between 1 and 1000.", INVALID_PARAMETER_VALUE)
        offset = SearchUtils.parse_start_offset_from_page_token(page_token) if page_token else 0
        with self._webhook_conn("list webhooks") as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {WEBHOOK_COLUMNS} FROM pgm_webhooks w WHERE w.deleted_timestamp IS NULL {where} "
                "ORDER BY w.creation_timestamp DESC, w.webhook_id LIMIT %s OFFSET %s",
                (*params, max_results + 1, offset)).fetchall()
        token = SearchUtils.create_page_token(offset + max_results) if len(rows) > max_results else None
        return PagedList([to_webhook(r) for r in rows[:max_results]], token)


def _insert_events(conn, webhook_id: str, events: list[WebhookEvent]) -> None:
    unique = list(dict.fromkeys((e.entity.value, e.action.value) for e in events))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgm_webhook_events (webhook_id, entity, action, position) VALUES (%s, %s, %s, %s)",
            [(webhook_id, entity, action, i) for i, (entity, action) in enumerate(unique)])


def _not_found(webhook_id: str):
    raise MlflowException(f"Webhook with ID {webhook_id} not found.", RESOURCE_DOES_NOT_EXIST)


def _route_server_deliveries_to_history() -> None:
    """Make ``mlflow server``'s REST handlers leave registry events to the history dispatcher.

    The handlers call ``deliver_webhook`` after each registry write; on this store the same
    change is already in ``pgm_history`` and delivered from there (once, signed, retried).
    Events that are not registry changes (budget policies) still go through MLflow.
    """
    def registry_event(event, store) -> bool:
        return isinstance(store, WebhookStoreMixin) and event.entity != getattr(WebhookEntity, "BUDGET_POLICY", None)

    with _patch_lock:
        _mlflow.route_server_webhook_delivery(registry_event)
