"""Settings read from the environment (``MLFLOW_PGMODELS_*``), each declared once below with its
form, default and meaning; and modes of MLflow the store refuses.

A setting is read with its ``get()`` (``POOL_MAX_SIZE.get()``): an unset or blank variable gives
the default, a value of another form is INVALID_PARAMETER_VALUE naming the variable and the form it
takes. :data:`ALL` lists the settings in declaration order; README's settings table is
:func:`markdown_table` (``python -m mlflow_pgmodels._settings`` prints it; tests/test_docs.py
checks README against it).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INVALID_STATE

T = TypeVar("T")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """The form a setting takes: ``parse`` turns its (stripped, non-blank) text into a value, or
    returns None when the text is not of that ``form``; ``show`` writes a value as the docs do."""

    form: str
    parse: Callable[[str], T | None]
    show: Callable[[T], str] = str
    secret: bool = False  # the text may hold a password: never quoted in a message


def _number(kind: type, minimum: float, above: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text.replace("_", ""))  # underscores may group digits: 10_000_000
        except ValueError:
            return None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            return None
        return value
    return parse


def _show_bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if value and value % size == 0:
            return f"{value // size:,} {unit}"
    return f"{value:,}"


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_DURATION = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta | None:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a timedelta; None for text of another form."""
    match = _DURATION.fullmatch(str(text))
    return dt.timedelta(**{_UNITS[match[2]]: int(match[1])}) if match else None


COUNT = Kind("a positive whole number", _number(int, 0, above=True), lambda v: f"{v:,}")
BYTES = Kind("a positive whole number of bytes", _number(int, 0, above=True), _show_bytes)
BYTES_OR_ZERO = Kind("a whole number of bytes, 0 or more", _number(int, 0, above=False), _show_bytes)
SECONDS = Kind("a positive number of seconds", _number(float, 0, above=True), lambda v: f"{v:g}")
PORT = Kind("a TCP port (1 to 65535)", lambda t: p if (p := _number(int, 1, False)(t)) and p <= 65535 else None)
FLAG = Kind("on or off (1/0, true/false, yes/no, on/off)", lambda t: _FLAGS.get(t.lower()),
            lambda v: "on" if v else "off")
PATH = Kind("a path", lambda t: t)
STORE_URI = Kind("a pgmodels:// URI", lambda t: t if t.startswith("pgmodels://") else None, secret=True)
DURATION = Kind("a whole number and a unit: s, m, h, d or w (e.g. 30d)",
                lambda t: t if parse_duration(t) is not None else None)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One ``MLFLOW_PGMODELS_*`` environment variable: its ``name``, ``kind`` (form), ``default``
    (None: unset) and a one-line ``doc``; ``shown`` writes the default where ``kind`` cannot."""

    name: str
    kind: Kind[T]
    default: T | None
    doc: str
    shown: str | None = None

    def get(self) -> T | None:
        """The value set in the environment now, else the default; INVALID_PARAMETER_VALUE naming
        the variable when it is set to something of another form."""
        text = os.environ.get(self.name, "").strip()
        if not text:
            return self.default
        value = self.kind.parse(text)
        if value is None:
            quoted = f"{self.name} (value not shown: it may hold a password)" if self.kind.secret \
                else f"{self.name}={text!r}"
            raise MlflowException(f"{quoted} is not {self.kind.form} (default {self.shown_default})",
                                  error_code=INVALID_PARAMETER_VALUE)
        return value

    @property
    def shown_default(self) -> str:
        """The default as README's settings table writes it."""
        if self.shown is not None:
            return self.shown
        return "unset" if self.default is None else self.kind.show(self.default)


_declared: list[Setting] = []


def _declare(name: str, kind: Kind[T], default: T | None, doc: str, shown: str | None = None) -> Setting[T]:
    setting = Setting(name, kind, default, doc, shown)
    _declared.append(setting)
    return setting


# connections (_pg/db.py, _pg/schema.py)
# 8 per process: a default `mlflow server` (4 workers) then needs 4 × (8 + MLflow's 5 + 10) = 92
# connections with the tracking half, inside PostgreSQL's default max_connections of 100.
POOL_MAX_SIZE = _declare("MLFLOW_PGMODELS_POOL_MAX_SIZE", COUNT, 8,
                         "connections each process opens at most per URI (on demand)")
POOL_TIMEOUT = _declare("MLFLOW_PGMODELS_POOL_TIMEOUT", SECONDS, 30.0,
                        "seconds a call waits for a free connection, then `TEMPORARILY_UNAVAILABLE`")
READ_URI = _declare("MLFLOW_PGMODELS_READ_URI", STORE_URI, None,
                    "a `pgmodels://` URI for registry reads (a hot standby)")
READ_WAIT = _declare("MLFLOW_PGMODELS_READ_WAIT", SECONDS, 1.0,
                     "seconds a read waits for the standby to catch up before asking the primary")
LOCK_TIMEOUT = _declare("MLFLOW_PGMODELS_LOCK_TIMEOUT", SECONDS, 5.0,
                        "seconds a schema upgrade waits for each table lock before giving up")
# the cache and unpacking (_cache/cache.py, _storage/archive.py)
CACHE_DIR = _declare("MLFLOW_PGMODELS_CACHE_DIR", PATH, None, "the local cache of downloaded versions",
                     shown="`$XDG_CACHE_HOME/mlflow-pgmodels` (`~/.cache/mlflow-pgmodels`)")
CACHE_MAX_BYTES = _declare("MLFLOW_PGMODELS_CACHE_MAX_BYTES", BYTES_OR_ZERO, 10 * 1024**3,
                           "the cache's size limit (least recently used versions go first)")
MAX_UNPACKED_BYTES = _declare("MLFLOW_PGMODELS_MAX_UNPACKED_BYTES", BYTES, 10 * 1024**3,
                              "a version unpacking to more is refused (`DATA_LOSS`)")
MAX_ENTRIES = _declare("MLFLOW_PGMODELS_MAX_ENTRIES", COUNT, 100_000, "a version with more files is refused")
MAX_RATIO = _declare("MLFLOW_PGMODELS_MAX_RATIO", COUNT, 200,
                     "a file inflating more than this many times (past 16 MiB) is refused")
PROGRESS = _declare("MLFLOW_PGMODELS_PROGRESS", FLAG, True, "`0`: no progress bars")
# webhooks (_events/webhook_delivery.py, _lifecycle/prune.py)
WEBHOOK_DISPATCHER = _declare("MLFLOW_PGMODELS_WEBHOOK_DISPATCHER", FLAG, True,
                              "`false`: no webhook dispatcher in `mlflow server` workers")
WEBHOOK_WORKERS = _declare("MLFLOW_PGMODELS_WEBHOOK_WORKERS", COUNT, 4, "delivery threads per dispatcher")
WEBHOOK_MAX_ATTEMPTS = _declare("MLFLOW_PGMODELS_WEBHOOK_MAX_ATTEMPTS", COUNT, 12,
                                "attempts per delivery before it is `failed`")
WEBHOOK_BACKOFF = _declare("MLFLOW_PGMODELS_WEBHOOK_BACKOFF", SECONDS, 1.0,
                           "seconds before the first retry, doubling up to 300")
DELIVERY_RETENTION = _declare("MLFLOW_PGMODELS_DELIVERY_RETENTION", DURATION, None,
                              "`30d`: each `mlflow-pgmodels prune` also deletes finished webhook deliveries "
                              "older than that", shown="unset (kept)")
# commands (_pg/embedded.py, cli.py)
EMBEDDED_PORT = _declare("MLFLOW_PGMODELS_EMBEDDED_PORT", PORT, 54329, "port of the quickstart's embedded PostgreSQL")
DEBUG = _declare("MLFLOW_PGMODELS_DEBUG", FLAG, False, "`1`: `mlflow-pgmodels` prints a traceback on errors")

ALL: tuple[Setting, ...] = tuple(_declared)  # every setting, in declaration order


def markdown_table() -> str:
    """README's settings table: one row per setting of :data:`ALL`, in declaration order."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.shown_default} | {s.doc} |" for s in ALL]
    return "\n".join(rows) + "\n"


def refuse_workspaces() -> None:
    """Refuse MLflow's workspaces mode (``mlflow server --enable-workspaces``): the store has none."""
    from mlflow_pgmodels._mlflow import workspaces_enabled

    if workspaces_enabled():
        raise MlflowException(
            "The pgmodels:// store does not support MLflow workspaces: start `mlflow server` without "
            "--enable-workspaces and with MLFLOW_ENABLE_WORKSPACES unset (one database per team "
            "separates registries instead).", error_code=INVALID_STATE)


if __name__ == "__main__":
    print(markdown_table(), end="")
