"""``mlflow-pgmodels du / prune / keep``: what the store costs, and retention (docs/lifecycle.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mlflow_pgmodels._lifecycle import prune, space
from mlflow_pgmodels._pg.route import resolve_uri
from mlflow_pgmodels._pg.uri import URI_HELP


def _du(args: argparse.Namespace) -> int:
    usage = space.usage(resolve_uri(args.uri), args.name)
    if args.json:
        print(json.dumps(usage.to_json(), default=str))
    else:
        print("\n".join(space.describe(usage, versions=args.name is not None)))
    return 0


def _prune_versions(args: argparse.Namespace, uri: str) -> int:
    rules = prune.Rules(name=args.name, keep_last=args.keep_last, archived_only=args.archived_only,
                        older_than=prune.duration(args.older_than) if args.older_than else None,
                        allow_empty=args.allow_empty)
    planned = prune.plan(uri, rules)
    if args.dry_run:
        print("\n".join(planned.lines()) + ("\n" if planned.count() else "")
              + f"would delete {planned.count()} versions of {len(planned.versions)} models, "
                f"freeing {space.human(planned.freed_bytes)}")
        return 0
    outcome = prune.execute(uri, planned)
    for name, versions in outcome.deleted.items():
        for v in versions:
            print(f"{name} v{v}\t{space.human(planned.bytes.get((name, v), 0))}")
    for name, versions in outcome.kept.items():
        print(f"kept {name} v{', v'.join(map(str, versions))}: changed since the plan (now protected, or a "
              "change left it the model's last version)")
    for name, message in outcome.failed.items():
        print(f"failed {name}: {message}")
    deleted = [(name, v) for name, versions in outcome.deleted.items() for v in versions]
    freed = planned.freed_bytes if len(deleted) == planned.count() else sum(planned.bytes.get(d, 0) for d in deleted)
    print(f"deleted {len(deleted)} versions of {len(outcome.deleted)} models, freeing {space.human(freed)}"
          + ("; PostgreSQL reuses the space after (auto)vacuum: `VACUUM (ANALYZE) models, pgm_blob_pieces` "
             "makes it reusable now (docs/lifecycle.md)" if deleted else ""))
    return 1 if outcome.failed else 0


def _prune(args: argparse.Namespace) -> int:
    uri = resolve_uri(args.uri)
    verb = "would delete" if args.dry_run else "deleted"
    status = 0
    if args.keep_last is not None or args.older_than or args.archived_only or not (
            args.deliveries_older_than or args.history_older_than):
        status = _prune_versions(args, uri)
    deliveries = args.deliveries_older_than or prune.delivery_retention()
    if deliveries:
        count = prune.prune_deliveries(uri, prune.duration(deliveries), args.dry_run)
        print(f"{verb} {count} finished webhook deliveries older than {deliveries}")
    if args.history_older_than:
        count = prune.prune_history(uri, prune.duration(args.history_older_than), args.dry_run)
        print(f"{verb} {count} history rows older than {args.history_older_than}")
    return status


def _keep(args: argparse.Namespace) -> int:
    name, version = prune.keep(resolve_uri(args.uri), args.model_uri, args.reason, off=args.off)
    print(f"{'no keep marker on' if args.off else 'keeping'} {name} v{version}"
          + ("" if args.off else f" ({prune.KEEP_TAG} = {args.reason!r}): no prune removes it"))
    return 0


def add_parser(sub: Any) -> None:
    """The du, prune and keep subcommands of mlflow-pgmodels."""
    du = sub.add_parser(
        "du", help="bytes on disk per registered model, version and experiment, and the database total",
        description="Bytes on disk, as PostgreSQL counts them (TOAST included): per registered model and version "
                    "(own bytes, and files shared with other versions or artifacts, counted once), per experiment "
                    "(run artifacts, LoggedModels), the history and webhook delivery tables, the database.")
    du.add_argument("name", nargs="?", help="only this registered model (or pattern, 'churn*'), with its versions")
    du.add_argument("--json", action="store_true", help="one JSON object, every version included")
    du.add_argument("--uri", help=URI_HELP)
    du.set_defaults(func=_du)

    p = sub.add_parser(
        "prune", help="delete old model versions by rules (never aliased, Staging/Production, latest or kept ones)",
        description="Delete the model versions all the given rules pick. Never deleted: a version with an alias, "
                    f"in Staging or Production, the latest active one, or tagged {prune.KEEP_TAG} "
                    "(`mlflow-pgmodels keep`). Deletes go through the registry store: history and webhooks see "
                    "them. Run artifacts of deleted runs: `mlflow gc` removes them (docs/lifecycle.md).")
    p.add_argument("--name", default="*", help="registered model name or pattern ('churn*'); default: every model")
    p.add_argument("--keep-last", type=int, metavar="N", help="keep the N highest version numbers of each model")
    p.add_argument("--older-than", metavar="DURATION", help="only versions created longer ago (30d, 12h, 2w)")
    p.add_argument("--archived-only", action="store_true", help="only archived versions")
    p.add_argument("--allow-empty", action="store_true",
                   help="let a model lose every version (refused otherwise)")
    p.add_argument("--dry-run", action="store_true", help="print what would go and the bytes freed; change nothing")
    p.add_argument("--deliveries-older-than", metavar="DURATION",
                   help=f"also delete finished webhook deliveries older than this (default: "
                        f"${prune.DELIVERY_RETENTION_ENV} when set)")
    p.add_argument("--history-older-than", metavar="DURATION",
                   help="also delete change history older than this (owner of the tables only)")
    p.add_argument("--uri", help=URI_HELP)
    p.set_defaults(func=_prune)

    k = sub.add_parser("keep", help=f"mark a version in use (tag {prune.KEEP_TAG}): no prune removes it")
    k.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    k.add_argument("--reason", default="true", help="who uses it (the tag's value), e.g. 'churn-api prod'")
    k.add_argument("--off", action="store_true", help="remove the marker")
    k.add_argument("--uri", help=URI_HELP)
    k.set_defaults(func=_keep)
