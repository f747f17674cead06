"""``mlflow-pgmodels promote``: copy a version into another model database (promote.py)."""

from __future__ import annotations

import argparse

from mlflow_pgmodels._commands._args import copy_command
from mlflow_pgmodels._pg.uri import URI_HELP, redact


def _promote(args: argparse.Namespace) -> int:
    from mlflow_pgmodels._lifecycle.promote import LINEAGE, promote

    done = promote(args.model_uri, args.to, source_uri=args.source, name=args.name, alias=args.alias)
    mv = done.version
    tags = dict(mv.tags) if isinstance(mv.tags, dict) else {t.key: t.value for t in mv.tags}
    what = "promoted as" if done.created else "already promoted earlier as"
    print(f"{args.model_uri} {what} {mv.name} v{mv.version} in {redact(args.to)}"
          f" (sha256 {tags.get(LINEAGE + 'sha256', '')[:12]})"
          + (f"; @{done.alias} -> v{mv.version}" if done.alias else "")
          + ("" if done.recorded_at_source or not done.created else
             "; not recorded at the source (its role may only read)"))
    return 0


def add_parser(subparsers) -> None:
    """The ``promote`` subcommand of ``mlflow-pgmodels``."""
    p = copy_command(
        subparsers, "promote", _promote,
        help="copy a model version into another pgmodels database (dev -> prod), verified",
        description="Copy one registered model version (its files, streamed and checked by SHA-256, its "
                    "description and tags) into another pgmodels database as a new version there, with "
                    "its lineage as pgmodels.promoted_from.* tags. Running it again reuses the version "
                    "promoted before. Needs read access on the source and write access on the target.",
        source_metavar="SOURCE_URI", source_help="the source database; " + URI_HELP)
    p.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS")
    p.add_argument("--to", required=True, metavar="TARGET_URI", help="the target database: pgmodels://...")
    p.add_argument("--name", help="the registered model name on the target (default: the same name)")
    p.add_argument("--alias", help="point this alias of the target model at the promoted version")
