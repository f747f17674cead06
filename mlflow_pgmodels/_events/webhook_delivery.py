"""Delivering MLflow webhooks for every change recorded in ``pgm_history``.

A deferred trigger (sql/pgmodels_webhooks.sql) writes one ``pgm_webhook_deliveries`` row per
change and subscribed webhook when the change commits. Dispatchers claim those rows one at a
time with ``FOR UPDATE SKIP LOCKED`` (so several processes never send the same row twice),
send them signed as MLflow does (webhook_requests.py), and record the outcome; failures are
retried with backoff.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from datetime import datetime

import psycopg
import requests
from mlflow.entities.webhook import Webhook
from mlflow.exceptions import MlflowException
from psycopg.rows import dict_row

from mlflow_pgmodels import _settings
from mlflow_pgmodels._events.webhook_requests import (
    WEBHOOK_COLUMNS,
    build_payload,
    new_session,
    request_timeout,
    send,
    to_webhook,
)
from mlflow_pgmodels._pg.db import behind_transaction_pooler, connection
from mlflow_pgmodels._pg.schema import ensure_schema
from mlflow_pgmodels._pg.uri import redact, to_conninfo

_logger = logging.getLogger(__name__)

CHANNEL = "pgmodels_webhook_deliveries"
# Receiver answers worth another try, as MLflow's own delivery retries them.
RETRY_STATUS = {429, 500, 502, 503, 504}


def max_attempts() -> int:
    """Attempts per delivery before it is recorded as failed (MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS)."""
    return _settings.WEBHOOK_MAX_ATTEMPTS.get()


def backoff_seconds(attempts: int) -> float:
    """Wait before attempt ``attempts + 1``: doubling from MLFLOW_PGMODELS_WEBHOOK_BACKOFF seconds
    (default 1) up to 300 s, plus up to a second of jitter (as MLflow's urllib3 retries)."""
    base = _settings.WEBHOOK_BACKOFF.get()
    return min(base * 2 ** max(attempts - 1, 0), 300.0) + random.uniform(0, min(base, 1.0))


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
 WHERE d.id = %(id)s"""
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
            cur = conn.cursor(row_factory=dict_row)
            leased = cur.execute(_CLAIM, {"lease": request_timeout() + _LEASE_MARGIN}).fetchone()
            if leased is None:
                return None
            row = cur.execute(_CLAIMED, leased).fetchone()
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


class BackgroundDispatchers:
    """The dispatchers this process runs in the background, one per database (started by the store
    inside ``mlflow server``); they live until :meth:`close` or the end of the process.

    Keyed by process id too: a forked child starts its own (the parent's threads are not in it).
    """

    def __init__(self) -> None:
        self._running: dict[tuple[int, str], Dispatcher] = {}
        self._lock = threading.Lock()

    def start(self, uri: str) -> Dispatcher | None:
        """This process's dispatcher of ``uri``, started on first call, unless MLFLOW_PGMODELS_WEBHOOK_DISPATCHER=false."""
        if not _settings.WEBHOOK_DISPATCHER.get():
            return None
        key = (os.getpid(), uri)
        with self._lock:
            if key not in self._running:
                self._running[key] = Dispatcher(uri).start()
            return self._running[key]

    def close(self, timeout: float = 10) -> None:
        """Stop this process's dispatchers and forget them (a later :meth:`start` starts afresh)."""
        with self._lock:
            mine = [key for key in self._running if key[0] == os.getpid()]
            dispatchers = [self._running.pop(key) for key in mine]
        for dispatcher in dispatchers:
            dispatcher.stop(timeout)


BACKGROUND = BackgroundDispatchers()
