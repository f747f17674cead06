"""``mlflow-pgmodels import-registry``: copy a stock MLflow model registry into the pgmodels store.

Every registered model and version keeps its name, version number (gaps from deleted versions
included), description, tags, aliases, stage (Archived becomes ``is_active = false``), run id,
user and creation time; each version's files are read from the source's artifact store. Prompts
are not copied, nor LoggedModel ids (they belong to the source's tracking store).

Re-running copies only what is new: models, versions, registered-model tags and aliases the store
does not have yet. What it has is left as it is: from the first import on, the store is the
registry of record. A version number that the store already uses for another run is reported as a
conflict and not touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from mlflow.entities.model_registry import RegisteredModelTag
from mlflow.exceptions import MlflowException

from mlflow_pgmodels._commands._args import copy_command

_PAGE = 1000


def _pages(search: Callable[[str | None], Any]) -> Iterator[Any]:
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def import_registry(source_uri: str, uri: str, out=None) -> dict[str, int]:
    """Copy what is new in the registry at ``source_uri`` into the store at ``uri``; returns counts."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from mlflow_pgmodels._pg.db import connection
    from mlflow_pgmodels._pg.uri import redact
    from mlflow_pgmodels._registry.store import PgModelsRegistryStore

    out = out or sys.stdout
    source = MlflowClient(tracking_uri=source_uri, registry_uri=source_uri)
    store = PgModelsRegistryStore(uri)
    counts = {"models": 0, "versions": 0, "skipped": 0, "failed": 0, "aliases": 0, "tags": 0}

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    versions: dict[str, list] = {}
    for mv in _pages(lambda t: source.search_model_versions(max_results=_PAGE, page_token=t)):
        versions.setdefault(mv.name, []).append(mv)
    for rm in sorted(_pages(lambda t: source.search_registered_models(max_results=_PAGE, page_token=t)),
                     key=lambda m: m.name):
        name = rm.name
        try:
            target = store.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            target = store.create_registered_model(name, tags=rm.tags, description=rm.description)
            counts["models"] += 1
            counts["tags"] += len(rm.tags)
            say(f"{name}: registered model created")
        else:
            for key, value in rm.tags.items():
                if key not in target.tags:
                    store.set_registered_model_tag(name, RegisteredModelTag(key, value))
                    counts["tags"] += 1

        with connection(uri, f"read versions of '{name}'") as conn:
            have = dict(conn.execute("SELECT version, run_id FROM models WHERE name = %s", (name,)).fetchall())
        for mv in sorted(versions.get(name, []), key=lambda v: int(v.version)):
            number = int(mv.version)
            if number in have:
                if (have[number] or None) == (mv.run_id or None):
                    counts["skipped"] += 1
                else:
                    counts["failed"] += 1
                    say(f"CONFLICT {name} v{number}: the store already has a version {number} from another "
                        f"run ({have[number]}, not {mv.run_id}); left as it is")
                continue
            try:
                with tempfile.TemporaryDirectory(prefix="pgmodels-import-") as tmp:
                    files = mlflow.artifacts.download_artifacts(
                        artifact_uri=source.get_model_version_download_uri(name, mv.version), dst_path=tmp,
                        tracking_uri=source_uri)
                    store.import_model_version(mv, files)
            except Exception as e:  # one unreadable version must not stop the rest
                counts["failed"] += 1
                say(f"FAILED   {name} v{number}: {redact(getattr(e, 'message', None) or repr(e))}")
                continue
            counts["versions"] += 1
            have[number] = mv.run_id
            say(f"{name} v{number}: imported ({mv.current_stage})")

        target_aliases = store.get_registered_model(name).aliases
        for alias, version in rm.aliases.items():
            if alias not in target_aliases and int(version) in have:
                store.set_registered_model_alias(name, alias, version)
                counts["aliases"] += 1
                say(f"{name}@{alias}: -> v{version}")
    return counts


def _run(args: argparse.Namespace) -> int:
    from mlflow_pgmodels._pg.route import resolve_uri
    from mlflow_pgmodels._pg.uri import is_pgmodels_uri, redact

    uri = resolve_uri(args.uri)
    if is_pgmodels_uri(args.source):
        raise MlflowException.invalid_parameter_value(
            "--from is a pgmodels:// URI: give the URI of the MLflow registry to copy from "
            "(e.g. sqlite:///mlflow.db, postgresql://..., http://mlflow-server:5000)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per version is noise
    counts = import_registry(args.source, uri)
    print(f"{counts['versions']} versions imported, {counts['models']} registered models created, "
          f"{counts['aliases']} aliases and {counts['tags']} model tags set, {counts['skipped']} versions "
          f"already there, {counts['failed']} failed; from {redact(args.source)} into {redact(uri)}")
    return 1 if counts["failed"] else 0


def add_parser(subparsers) -> None:
    """The ``import-registry`` subcommand of ``mlflow-pgmodels``."""
    from mlflow_pgmodels._pg.uri import URI_HELP

    p = copy_command(
        subparsers, "import-registry", _run,
        help="copy an existing MLflow model registry into the store (re-runnable)",
        description="Copy every registered model and version of an MLflow registry (with the files "
                    "from its artifact store) into the pgmodels store, keeping names, version "
                    "numbers, descriptions, tags, aliases, stages and run ids. Re-running copies "
                    "only what is new.",
        source_metavar="REGISTRY_URI", source_required=True,
        source_help="the registry to copy: sqlite:///mlflow.db, postgresql://..., http://server:5000")
    p.add_argument("--uri", help=URI_HELP)
