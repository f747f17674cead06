"""``mlflow-pgmodels migrate``: file-era ``.joblib`` models into the store, as MLflow versions.

Each file matching the pattern becomes a new version of its name in MLflow's format, tagged
with its event and model type, and with the SHA-256 and path of the file it came from. A file
whose content was already imported under the same name, event and type is skipped, so the
command can be run again after adding files. Files on disk are only read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from mlflow_pgmodels import _settings

SHA256_TAG = "mlflow_pgmodels.source_sha256"
PATH_TAG = "mlflow_pgmodels.source_path"
PLACEHOLDERS = ("name", "event", "model_type")
# Tried first for {model_type}, so that "churn_classifier_binary" splits as churn + classifier_binary.
KNOWN_MODEL_TYPES = ("classifier_binary", "classifier", "regression", "vectorizer")


@dataclass(frozen=True)
class Candidate:
    path: str       # relative to the directory, with "/"
    name: str
    event: str
    model_type: str


def compile_pattern(pattern: str, known_types: bool = True) -> re.Pattern:
    """The regex for a PATTERN: ``{name}`` etc. match one path segment part, ``*`` any part."""
    if "{name}" not in pattern:
        raise MlflowException.invalid_parameter_value(
            f"--pattern {pattern!r} has no {{name}} placeholder: it must say where the model name is, "
            "e.g. '{event}/{name}_{model_type}.joblib'")
    out, seen = [], set()
    for token in re.split(r"(\{\w+\}|\*)", pattern):
        if token == "*":
            out.append("[^/]*")
        elif token.startswith("{") and token.endswith("}"):
            key = token[1:-1]
            if key not in PLACEHOLDERS:
                raise MlflowException.invalid_parameter_value(
                    f"Unknown placeholder {token} in --pattern; use {{name}}, {{event}} and {{model_type}}")
            if key in seen:
                out.append(f"(?P={key})")
                continue
            seen.add(key)
            body = "[^/]+?"
            if key == "model_type" and known_types:
                body = "|".join(re.escape(t) for t in KNOWN_MODEL_TYPES)
            out.append(f"(?P<{key}>{body})")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z")


def find_candidates(directory: str, pattern: str, event: str | None, model_type: str | None) -> list[Candidate]:
    """Files under ``directory`` matching ``pattern``, in natural path order (v2 before v10)."""
    from mlflow_pgmodels._registry.column_tags import DEFAULT_EVENT, DEFAULT_MODEL_TYPE

    if not os.path.isdir(directory):
        raise MlflowException.invalid_parameter_value(f"{directory!r} is not a directory")
    regexes = [compile_pattern(pattern), compile_pattern(pattern, known_types=False)]
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for filename in files:
            rel = os.path.relpath(os.path.join(root, filename), directory).replace(os.sep, "/")
            match = next((m for m in (r.match(rel) for r in regexes) if m), None)
            if match is None:
                continue
            values = match.groupdict()
            found.append(Candidate(rel, values["name"], values.get("event") or event or DEFAULT_EVENT,
                                   values.get("model_type") or model_type or DEFAULT_MODEL_TYPE))
    return sorted(found, key=lambda c: _natural_key(c.path))


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imported_digests(uri: str) -> dict[tuple[str, str, str, str], int]:
    """(name, event, model_type, file SHA-256) -> version, for every version imported from a file."""
    from mlflow_pgmodels._pg.db import connection

    with connection(uri, "read imported versions") as conn:
        if conn.execute("SELECT to_regclass('pgm_model_version_tags')").fetchone()[0] is None:
            return {}  # a database the store has not been used on yet
        rows = conn.execute(
            "SELECT m.name, m.event, m.model_type, t.value, m.version FROM pgm_model_version_tags t"
            " JOIN models m ON m.name = t.name AND m.version = t.version WHERE t.key = %s", (SHA256_TAG,)).fetchall()
    return {(name, event, model_type, digest): version for name, event, model_type, digest, version in rows}


class BadFile(Exception):
    """A file that cannot be imported; the message says why."""


def load_model_file(path: str):
    """The object in a joblib file; refuses files that do not hold a model (no predict/transform)."""
    import joblib

    try:
        model = joblib.load(path)
    except OSError as e:
        raise BadFile(f"cannot be read ({e.strerror or e})") from None
    except Exception as e:  # unpickling raises anything at all on damaged bytes
        raise BadFile(f"is not a readable joblib file ({type(e).__name__}: {e})") from None
    if not (callable(getattr(model, "predict", None)) or callable(getattr(model, "transform", None))):
        raise BadFile(f"not a model: it holds a {type(model).__name__}, which has no predict or transform")
    return model


def migrate(directory: str, pattern: str, uri: str, event: str | None = None, model_type: str | None = None,
            dry_run: bool = False, out=None) -> dict[str, int]:
    """Import every matching file not imported yet; returns counts of imported / skipped / failed."""
    from mlflow_pgmodels._pg.uri import redact
    from mlflow_pgmodels._registry.store import PgModelsRegistryStore
    from mlflow_pgmodels.helpers import register

    out = out or sys.stdout
    candidates = find_candidates(directory, pattern, event, model_type)
    store = None if dry_run else PgModelsRegistryStore(uri)  # a dry run creates no tables either
    done = imported_digests(uri)
    counts = {"imported": 0, "skipped": 0, "failed": 0}
    verb = "would import" if dry_run else "imported"
    with _bar(len(candidates)) as bar:
        for c in candidates:
            path = os.path.join(directory, c.path)
            label = f"{c.path} -> {c.name} (event {c.event}, model_type {c.model_type})"
            try:
                digest = file_sha256(path)
                key = (c.name, c.event, c.model_type, digest)
                if key in done:
                    counts["skipped"] += 1
                    bar.write(f"skipped  {label}: already imported as version {done[key]}", file=out)
                    continue
                model = load_model_file(path)
                if dry_run:
                    version = "?"
                else:
                    version = register(store, model, c.name, c.event, c.model_type,
                                       tags={SHA256_TAG: digest, PATH_TAG: c.path}).version
                done[key] = version
                counts["imported"] += 1
                bar.write(f"{verb} {label}: version {version}", file=out)
            except Exception as e:  # a bad file must not stop the others
                counts["failed"] += 1
                reason = redact(getattr(e, "message", None)
                                or (str(e) if isinstance(e, BadFile) else f"{type(e).__name__}: {e}"))
                bar.write(f"FAILED   {path}: {reason}", file=out)
            finally:
                bar.update(1)
    return counts


def _bar(total: int):
    """A tqdm bar on stderr for runs that take more than two seconds (off with MLFLOW_PGMODELS_PROGRESS=0)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Migrating", unit="file", delay=2,
                disable=not _settings.PROGRESS.get())


def _run(args: argparse.Namespace) -> int:
    from mlflow_pgmodels._pg.route import resolve_uri
    from mlflow_pgmodels._pg.uri import redact

    uri = resolve_uri(args.uri)
    counts = migrate(args.directory, args.pattern, uri, args.event, args.model_type, args.dry_run)
    total = sum(counts.values())
    what = "would be imported" if args.dry_run else "imported"
    print(f"{counts['imported']} {what}, {counts['skipped']} skipped (already imported), "
          f"{counts['failed']} failed, of {total} files matching {args.pattern!r} in {args.directory} "
          f"({redact(uri)})")
    if total == 0:
        print(f"No file under {args.directory} matches {args.pattern!r} (paths are relative to the directory, "
              "e.g. 'cpi/price_regression.joblib' for '{event}/{name}_{model_type}.joblib')", file=sys.stderr)
    return 1 if counts["failed"] else 0


def add_parser(subparsers) -> None:
    """The ``migrate`` subcommand of ``mlflow-pgmodels``."""
    from mlflow_pgmodels._pg.uri import URI_HELP

    p = subparsers.add_parser(
        "migrate", help="import .joblib model files as new MLflow versions (idempotent)",
        description="Import file-era .joblib models: each matching file becomes a new version of its "
                    "name, in MLflow's format. Files already imported (same content, name, event and "
                    "type) are skipped; files on disk are never changed or deleted.")
    p.add_argument("directory", help="the directory holding the model files")
    p.add_argument("--pattern", required=True,
                   help="path of a file relative to DIRECTORY, with {name}, {event}, {model_type} "
                        "placeholders and * wildcards, e.g. '{event}/{name}_{model_type}.joblib'")
    p.add_argument("--event", help="the event of every file, when the pattern has no {event}")
    p.add_argument("--model-type", help="the model type of every file, when the pattern has no {model_type}")
    p.add_argument("--uri", help=URI_HELP)
    p.add_argument("--dry-run", action="store_true", help="read and check the files, import nothing")
    p.set_defaults(func=_run)
