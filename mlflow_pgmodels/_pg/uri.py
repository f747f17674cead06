"""The ``pgmodels://`` URI: a libpq URI behind our own scheme, and the password-free forms of it."""

from __future__ import annotations

import re
import urllib.parse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

SCHEME = "pgmodels"
_PREFIX = SCHEME + "://"
# The artifact root inside the database: experiments get pgmodels-artifacts:/<experiment id>. It
# names no database: each client reaches the database with its own URI and credentials.
ARTIFACTS_SCHEME = "pgmodels-artifacts"
DATABASE_ARTIFACT_ROOT = ARTIFACTS_SCHEME + ":/"
# user:password@ in the authority part of any URI-looking string; up to the last @ of the word, so
# that a password with an unquoted / or @ is hidden whole
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s\[]*):(?P<pw>[^\s'\"]*)@")
_PASSWORD_PARAM = re.compile(r"(?P<head>[?&](?:ssl)?password=)[^&\s]*", re.IGNORECASE)
_PASSWORD_KV = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_SECRET_PARAMS = ("password", "sslpassword")
# libpq's enumerated connection parameters, checked here so that a typo is a URI error and not
# a "database not reachable" at the first connection
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
}

URI_HELP = ("pgmodels://[user[:password]@][host][:port][/dbname][?params]; default: "
            "$MLFLOW_REGISTRY_URI, then $MLFLOW_TRACKING_URI")


def is_pgmodels_uri(uri: str | None) -> bool:
    """True for ``pgmodels://...`` store URIs (not for ``pgmodels:/name/1`` download URIs)."""
    return bool(uri) and uri.startswith(_PREFIX)


def is_artifacts_uri(uri: str | None) -> bool:
    """True for ``pgmodels-artifacts:`` URIs (the database artifact root and what is below it)."""
    return bool(uri) and uri.startswith(ARTIFACTS_SCHEME + ":")


def to_conninfo(uri: str) -> str:
    """The libpq connection string for a ``pgmodels://`` URI (everything after the scheme).

    Raises ``INVALID_PARAMETER_VALUE`` for a URI libpq would refuse, with a message that has no password.
    """
    connection_params(uri)
    return "postgresql://" + uri[len(_PREFIX):]


def connection_params(uri: str) -> dict[str, str]:
    """The libpq parameters of a ``pgmodels://`` URI, checked (see :func:`to_conninfo`)."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    if not is_pgmodels_uri(uri):
        raise MlflowException(
            f"Not a pgmodels URI: {redact(uri)!r}. Expected {URI_HELP.split(';')[0]}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    rest = uri[len(_PREFIX):]
    at = rest.find("@")
    if at >= 0 and ("@" in rest[at + 1:] or "/" in rest[:at]):
        _invalid(uri, "it has a '/' or '@' before the host or a second '@'. Percent-encode these characters in "
                      "the user name and password: urllib.parse.quote(password, safe='') (@ is %40, / is %2F)")
    try:
        params = conninfo_to_dict("postgresql://" + rest)
    except Error as e:
        params, problem = None, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if params is None:  # raised here, not above: the driver's error, which quotes the URI, is no cause
        problem = re.sub(r' in URI: ".*$', "", redact(problem))  # the URI again, shown once already
        if "percent-encoded" in problem:
            problem = ("a '%' is not followed by two hexadecimal digits. Percent-encode the user name, password "
                       "and database name: urllib.parse.quote(password, safe='') (% is %25)")
        _invalid(uri, problem)
    _check_hosts_and_ports(uri, params)
    for key, choices in _CHOICES.items():
        if key in params and params[key] not in choices:
            _invalid(uri, f"{key}={params[key]!r} is not one of {', '.join(choices)}")
    return params


def _check_hosts_and_ports(uri: str, params: dict[str, str]) -> None:
    hosts = max(len(params.get("host", "").split(",")), len(params.get("hostaddr", "").split(",")))
    if "host" in params and "hostaddr" in params and \
            len(params["host"].split(",")) != len(params["hostaddr"].split(",")):
        _invalid(uri, "host and hostaddr list different numbers of hosts")
    ports = params.get("port", "").split(",")
    for port in ports:
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            _invalid(uri, f"the port {port!r} is not a number from 1 to 65535")
    if len(ports) not in (1, hosts):
        _invalid(uri, f"{len(ports)} ports for {hosts} hosts: give one port, or one per host "
                      "(pgmodels://h1:5432,h2:5433/db or ?host=h1,h2&port=5432,5433)")


def _invalid(uri: str, problem: str):
    message = f"Invalid pgmodels URI {_shown(uri)}: {problem}. Expected {URI_HELP.split(';')[0]}"
    raise MlflowException(_scrub(message, uri), error_code=INVALID_PARAMETER_VALUE)


def _shown(uri: str) -> str:
    """``uri`` as safe to show: no user info when it is malformed, the password replaced by ``***``."""
    rest = uri[len(_PREFIX):]
    userinfo, at, tail = rest.rpartition("@")
    if at and ("/" in userinfo or "@" in userinfo):
        return redact(f"{_PREFIX}***@{tail}")
    return redact(uri)


def _secrets(uri: str) -> list[str]:
    """Every form of the passwords in ``uri`` (raw, decoded, re-quoted), longest first."""
    if not uri or "://" not in uri:
        return []
    rest = uri.split("://", 1)[1]
    found = []
    for userinfo in (rest.partition("@")[0], rest.rpartition("@")[0]):
        if "@" in rest and ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    query = rest.partition("?")[2]
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and key.lower() in _SECRET_PARAMS:
            found.append(value)
    forms = set()
    for raw in found:
        decoded = urllib.parse.unquote(raw)
        forms.update({raw, decoded, urllib.parse.quote(decoded, safe=""), urllib.parse.quote(decoded)})
    # a very short password would turn every message into noise; the URI forms hide it anyway
    return sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)


def _scrub(text: str, *uris: str | None) -> str:
    for uri in uris:
        for secret in _secrets(uri or ""):
            text = text.replace(secret, "***")
    return text


def to_sqlalchemy_url(uri: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) for MLflow's SQL tracking store on the same database.

    Built from the parameters libpq reads, so that both halves see the same database, whatever
    the quoting, and the password stays in the URL's password field (which SQLAlchemy hides).
    """
    from sqlalchemy.engine import URL

    params = connection_params(uri)
    user, password, dbname = params.pop("user", None), params.pop("password", None), params.pop("dbname", None)
    url = URL.create("postgresql+psycopg", username=user, password=password, database=dbname, query=params)
    return url.render_as_string(hide_password=False)


def redact(text: str | None, *uris: str | None) -> str:
    """``text`` with every password in a URI or conninfo replaced by ``***``, and any form of the
    passwords of ``uris`` (when ``text`` is an error message that may quote them)."""
    if not text:
        return text or ""
    text = _scrub(text, *uris)
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
