"""The ``pgmodels://`` URI: a libpq URI behind our own scheme, and the password-free forms of it."""

from __future__ import annotations

import os
import re
import urllib.parse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

SCHEME = "pgmodels"
_PREFIX = SCHEME + "://"
# user:password@ in the authority part of any URI-looking string
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*):(?P<pw>[^@/\s]*)@")
_PASSWORD_PARAM = re.compile(r"(?P<head>[?&]password=)[^&\s]*", re.IGNORECASE)
_PASSWORD_KV = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

URI_HELP = ("pgmodels://[user[:password]@][host][:port][/dbname][?params]; default: "
            "$MLFLOW_REGISTRY_URI, then $MLFLOW_TRACKING_URI")


def resolve_uri(uri: str | None) -> str:
    """The store URI: the one given, else MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI if pgmodels://."""
    for candidate in (uri, os.environ.get("MLFLOW_REGISTRY_URI"), os.environ.get("MLFLOW_TRACKING_URI")):
        if is_pgmodels_uri(candidate):
            return candidate
    raise MlflowException.invalid_parameter_value(
        "No model database given: pass --uri pgmodels://user:password@host:5432/dbname or set "
        "MLFLOW_TRACKING_URI (or MLFLOW_REGISTRY_URI) to such a URI.")


def is_pgmodels_uri(uri: str | None) -> bool:
    """True for ``pgmodels://...`` store URIs (not for ``pgmodels:/name/1`` download URIs)."""
    return bool(uri) and uri.startswith(_PREFIX)


def to_conninfo(uri: str) -> str:
    """The libpq connection string for a ``pgmodels://`` URI (everything after the scheme)."""
    if not is_pgmodels_uri(uri):
        raise MlflowException(
            f"Not a pgmodels URI: {redact(uri)!r}. Expected pgmodels://[user[:password]@][host][:port][/dbname][?params]",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return "postgresql://" + uri[len(_PREFIX):]


def to_sqlalchemy_url(uri: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) for MLflow's SQL tracking store on the same database."""
    return "postgresql+psycopg://" + to_conninfo(uri)[len("postgresql://"):]


def redact(text: str | None) -> str:
    """``text`` with every password in a URI or conninfo replaced by ``***``."""
    if not text:
        return text or ""
    text = _USERINFO_PASSWORD.sub(lambda m: m.group("head") + ":***@", text)
    text = _PASSWORD_PARAM.sub(lambda m: m.group("head") + "***", text)
    return _PASSWORD_KV.sub(lambda m: m.group("head") + "***", text)


def download_uri(name: str, version: int | str) -> str:
    """The artifact URI of one version: ``pgmodels:/<quoted name>/<version>``; no credentials."""
    return f"{SCHEME}:/{urllib.parse.quote(name, safe='')}/{int(version)}"


def parse_download_uri(uri: str) -> tuple[str, int]:
    """``(name, version)`` from a download URI made by :func:`download_uri`."""
    rest = uri[len(SCHEME) + 1:].lstrip("/")
    quoted_name, _, version = rest.partition("/")
    version = version.strip("/")
    if not quoted_name or not version.isdigit():
        raise MlflowException(
            f"Invalid pgmodels artifact URI {uri!r}: expected pgmodels:/<model name>/<version>",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return urllib.parse.unquote(quoted_name), int(version)


def parse_model_root(uri: str) -> str | None:
    """The model name of a ``pgmodels:/<name>`` URI (the root above its versions), else None."""
    rest = uri[len(SCHEME) + 1:].strip("/")
    if rest and "/" not in rest:
        return urllib.parse.unquote(rest)
    return None
