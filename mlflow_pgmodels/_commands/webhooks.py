"""``mlflow-pgmodels webhooks``: run a dispatcher, list deliveries, queue failed ones again."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_pgmodels._events.webhook_delivery import CHANNEL, Dispatcher
from mlflow_pgmodels._pg.db import connection
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.schema import ensure_schema
from mlflow_pgmodels._pg.uri import URI_HELP, redact


def _run(args: argparse.Namespace) -> int:
    uri = resolve_uri(args.uri)
    dispatcher = Dispatcher(uri, workers=args.workers)
    if args.once:
        ensure_schema(uri)
        print(f"{dispatcher.deliver_due()} deliveries handled")
        return 0
    print(f"delivering webhooks of {redact(uri)} with {dispatcher.workers} workers (Ctrl-C stops)", flush=True)
    dispatcher.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dispatcher.stop()
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    uri = resolve_uri(args.uri)
    ensure_schema(uri)
    where, params = ("WHERE d.status = %s", [args.status]) if args.status else ("", [])
    with connection(uri, "read webhook deliveries") as conn:
        rows = conn.execute(
            f"SELECT d.id, d.created_at, w.name, d.event, h.name, h.version, d.status, d.attempts, "
            f"d.status_code, d.delivered_at, d.last_error FROM pgm_webhook_deliveries d "
            f"JOIN pgm_webhooks w USING (webhook_id) JOIN pgm_history h ON h.id = d.history_id "
            f"{where} ORDER BY d.id DESC LIMIT %s", (*params, args.limit)).fetchall()
    for (id_, created, webhook, event, name, version, status, attempts, code, delivered, error) in rows:
        print("\t".join(str(x) for x in (
            id_, created.isoformat(), webhook, event, name if version is None else f"{name}/{version}",
            status, f"attempts={attempts}", f"http={code or '-'}",
            delivered.isoformat() if delivered else "-", error or "")))
    return 0


def _execute(args: argparse.Namespace, what: str, statement: str, params: tuple) -> int:
    """Run one statement on the database of ``--uri``, wake the dispatchers; the rows it changed."""
    uri = resolve_uri(args.uri)
    ensure_schema(uri)
    with connection(uri, what) as conn:
        count = conn.execute(statement, params).rowcount
        conn.execute(f"NOTIFY {CHANNEL}")
    return count


def _redeliver(args: argparse.Namespace) -> int:
    count = _execute(args, "requeue webhook deliveries",
                     "UPDATE pgm_webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = "
                     "clock_timestamp() WHERE status = 'failed' AND (%s::bigint IS NULL OR id = %s)",
                     (args.id, args.id))
    print(f"{count} failed deliveries queued again")
    return 0


def _all_changes(args: argparse.Namespace) -> int:
    count = _execute(args, "update a webhook",
                     "UPDATE pgm_webhooks SET all_changes = %s WHERE webhook_id = %s AND deleted_timestamp IS NULL",
                     (args.state == "on", args.webhook_id))
    if not count:
        raise MlflowException(f"Webhook with ID {args.webhook_id} not found.", RESOURCE_DOES_NOT_EXIST)
    print(f"webhook {args.webhook_id}: changes without an MLflow event are "
          f"{'' if args.state == 'on' else 'not '}delivered")
    return 0


def add_parser(sub: Any) -> None:
    """The ``webhooks`` subcommand of mlflow-pgmodels."""
    parser = sub.add_parser("webhooks", help="deliver MLflow webhooks for every change, and inspect deliveries")
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="run a dispatcher (any number may run at once)")
    run.add_argument("--workers", type=int, help="parallel deliveries (default 4)")
    run.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    run.set_defaults(func=_run)
    ls = actions.add_parser("deliveries", help="recent deliveries and their outcome, newest first")
    ls.add_argument("--status", choices=["pending", "delivered", "failed", "skipped"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=_deliveries)
    again = actions.add_parser("redeliver", help="queue failed deliveries again")
    again.add_argument("--id", type=int, help="only this delivery")
    again.set_defaults(func=_redeliver)
    every = actions.add_parser("all-changes", help="also deliver changes MLflow has no webhook event for "
                               "(stage, description, rename, deletion) to a webhook")
    every.add_argument("webhook_id")
    every.add_argument("state", choices=["on", "off"])
    every.set_defaults(func=_all_changes)
    for p in (run, ls, again, every):
        p.add_argument("--uri", help=URI_HELP)
