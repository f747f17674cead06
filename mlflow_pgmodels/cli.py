"""The ``mlflow-pgmodels`` command: schema, local cache, migration and import.

Each subcommand lives next to the code it drives; this module only wires them together.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.exceptions import MlflowException

from mlflow_pgmodels import _settings
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.uri import URI_HELP, redact


def _db(args: argparse.Namespace) -> int:
    from mlflow_pgmodels import _mlflow
    from mlflow_pgmodels._pg import mlflow_schema
    from mlflow_pgmodels._pg.db import connection
    from mlflow_pgmodels._pg.schema import SCHEMA_VERSION, schema_lock, upgrade
    from mlflow_pgmodels._pg.uri import to_sqlalchemy_url
    from mlflow_pgmodels.tracking_store import build_tracking_store

    uri = resolve_uri(args.uri)
    with connection(uri, f"{args.action} the schema") as conn:
        plan = mlflow_schema.plan(conn, registry_only=args.registry_only)
    print(f"{'would change' if args.dry_run else 'changes'} in {redact(uri)}:")
    for line in plan.describe():
        print(f"  {line}")
    if args.dry_run:
        print("nothing changed (--dry-run)" if plan.changes_anything else "nothing to change")
        return 0
    if not args.registry_only:
        if plan.migrations:
            with connection(uri, "upgrade MLflow's tracking tables") as conn, schema_lock(conn):
                mlflow_schema.refuse_newer(conn)
                _mlflow.upgrade_mlflow_schema(to_sqlalchemy_url(uri))
                mlflow_schema.record_upgrader(conn)
        # MLflow's tables first: `mlflow db upgrade` refuses a database that has only ours
        build_tracking_store(uri, artifact_uri=os.environ.get("MLFLOW_ARTIFACT_ROOT"))
    with connection(uri, f"{args.action} the pgmodels schema") as conn:
        before = upgrade(conn)
    print(f"pgmodels schema at version {SCHEMA_VERSION} (was {before or 'absent'}) in {redact(uri)}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from mlflow_pgmodels._cache import cache

    if args.action == "ls":
        entries = cache.entries()
        for e in reversed(entries):
            used = "in use" if cache.in_use(e) else "-"
            print(f"{e.name}\tv{e.version}\t{e.kind}\t{e.size / 2**20:9.1f} MiB\t{e.digest[:12]}\t{used}\t{e.path}")
        total = sum(e.size for e in entries)
        print(f"{len(entries)} cached versions, {total / 2**20:.1f} MiB of {cache.max_bytes() / 2**20:.0f} MiB "
              f"in {cache.root()}")
    else:
        removed = cache.clear()
        kept = len(cache.entries())
        print(f"removed {removed} cached versions from {cache.root()}"
              + (f"; kept {kept} in use by running processes" if kept else ""))
    return 0


def _history(args: argparse.Namespace) -> int:
    import json

    from mlflow_pgmodels._events.history import model_history

    for change in model_history(resolve_uri(args.uri), args.name, args.version, args.since):
        print(json.dumps(change.to_json(), ensure_ascii=False) if args.json else change.describe())
    return 0


def _embedded(args: argparse.Namespace) -> int:
    from mlflow_pgmodels._pg.embedded import QUICKSTART_DATABASE, quickstart_server

    server = quickstart_server()
    running = server.running()
    if args.action == "status":
        print(f"{'running' if running else 'not running'}\ndata directory: {server.data_dir}\nport: {server.port}\n"
              f"URI: {server.socket_uri(QUICKSTART_DATABASE)}")
        return 0 if running else 3  # as pg_ctl status
    if running:
        server.stop()
    print(f"{'stopped' if running else 'not running'}: the embedded PostgreSQL in {server.data_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlflow-pgmodels",
        description="Manage an MLflow model registry kept in PostgreSQL (the `models` table).")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="create or upgrade the schema (MLflow's tables and the models table)",
                        description="Prints what it changes (MLflow's Alembic revision from/to, the pgmodels "
                                    "schema version from/to), then changes it; --dry-run only prints.")
    db.add_argument("action", choices=["init", "upgrade"], help="both are idempotent")
    db.add_argument("--uri", help=URI_HELP)
    db.add_argument("--registry-only", action="store_true",
                    help="only the pgmodels tables, not MLflow's tracking tables")
    db.add_argument("--dry-run", action="store_true",
                    help="print what would change (MLflow's migrations, the pgmodels schema version) and stop")
    db.set_defaults(func=_db)

    cache = sub.add_parser("cache", help="list or clear the local cache of downloaded versions")
    cache.add_argument("action", choices=["ls", "clear"])
    cache.set_defaults(func=_cache)

    embedded = sub.add_parser("embedded", help="the quickstart's own PostgreSQL: is it running (exit code 3 "
                                                "if not), where, and stop it")
    embedded.add_argument("action", choices=["status", "stop"])
    embedded.set_defaults(func=_embedded)

    from mlflow_pgmodels._commands import governance, import_registry, lifecycle, migrate, promote, webhooks

    migrate.add_parser(sub)
    import_registry.add_parser(sub)
    webhooks.add_parser(sub)
    governance.add_parser(sub)
    lifecycle.add_parser(sub)
    promote.add_parser(sub)

    history = sub.add_parser(
        "history", help="what changed in a registered model, when and by whom (newest first)",
        description="The changes the database recorded for a registered model and its versions, "
                    "however they were made (MLflow, the UI, plain SQL); rows under its earlier or "
                    "later names (renames) included.")
    history.add_argument("name", help="registered model name")
    history.add_argument("--version", type=int, help="only this version's changes")
    history.add_argument("--since", help="only changes from then on: an ISO 8601 or PostgreSQL time "
                                         "('2026-12-01T09:30+01:00', 'yesterday') or a duration ('2 hours')")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    history.add_argument("--uri", help=URI_HELP)
    history.set_defaults(func=_history)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; any error is one ``error: ...`` line (a traceback with MLFLOW_PGMODELS_DEBUG=1)."""
    from mlflow_pgmodels import _mlflow

    args = build_parser().parse_args(argv)
    debug = False
    try:
        debug = _settings.DEBUG.get()  # inside: a bad value is one error line too
        _mlflow.require()
        return args.func(args)
    except Exception as e:
        if debug:
            raise
        message = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
        # the URIs of this command, whose passwords the message may quote in any form
        uris = [getattr(args, "uri", None), getattr(args, "source", None), getattr(args, "to", None),
                os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")]
        print(f"error: {' '.join(redact(message, *uris).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
