"""What every part of the seam shares: the installed MLflow's version, the tested range, and
:func:`resolve`, which finds a private MLflow name by the names it has had and records what is missing."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import FEATURE_DISABLED, INVALID_STATE

_log = logging.getLogger("mlflow_pgmodels._mlflow")


# The MLflow releases this package is tested with (tests/compat_matrix.py, docs/compatibility.md):
# every minor from the first to the last, on its latest patch. pyproject.toml's floor is the first.
TESTED_RANGE = ("3.10", "3.18")


def _installed(dist: str) -> str:
    try:
        return _dist_version(dist)
    except PackageNotFoundError:
        return "not installed"


MLFLOW_VERSION = _installed("mlflow-skinny") if _installed("mlflow") == "not installed" else _installed("mlflow")


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def mlflow_at_least(release: str) -> bool:
    """Whether the installed MLflow is ``release`` (e.g. "3.3") or newer."""
    return _release(MLFLOW_VERSION) >= _release(release)


def tested() -> bool:
    """Whether the installed MLflow's minor is within :data:`TESTED_RANGE`."""
    minor = _release(MLFLOW_VERSION)[:2]
    return _release(TESTED_RANGE[0]) <= minor <= _release(TESTED_RANGE[1])


class IncompatibleMlflow(MlflowException, ImportError):
    """The installed MLflow lacks an internal this package needs (an MlflowException, and an
    ImportError for ``import`` statements)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_STATE)


def _advice() -> str:
    low, high = TESTED_RANGE
    return (f"mlflow-pgmodels is tested with MLflow {low} to {high}; the installed MLflow is "
            f"{MLFLOW_VERSION}. Install a tested MLflow (pip install \"mlflow>={low},<{_next_minor(high)}\") "
            "or upgrade mlflow-pgmodels (pip install -U mlflow-pgmodels).")


def _next_minor(release: str) -> str:
    major, minor = _release(release)[:2]
    return f"{major}.{minor + 1}"


_problems: list[str] = []


def problems() -> list[str]:
    """What the installed MLflow lacks of what this package needs (empty when it fits)."""
    return list(_problems)


@contextlib.contextmanager
def probing() -> Iterator[None]:
    """Resolve names without keeping what they lack as the installed MLflow's problems: for checking
    a name some other MLflow may have (diagnostics, the seam's own tests)."""
    kept = list(_problems)
    try:
        yield
    finally:
        _problems[:] = kept


def incompatibility(missing: list[str]) -> IncompatibleMlflow:
    """The error for ``missing`` internals: names the MLflow version, what is missing, what to do."""
    listed = "; ".join(missing)
    return IncompatibleMlflow(f"mlflow-pgmodels cannot work with MLflow {MLFLOW_VERSION}: {listed}. {_advice()}")


def require() -> None:
    """Raise :class:`IncompatibleMlflow` unless every required internal was found."""
    if _problems:
        raise incompatibility(_problems)


class _Unavailable:
    """Stands in for a name the installed MLflow lacks; calling it raises ``error``."""

    def __init__(self, what: str, error: Callable[[], MlflowException]) -> None:
        self._what = what
        self._error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error()

    def __getattr__(self, name: str) -> Any:
        raise self._error()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<not in MLflow {MLFLOW_VERSION}: {self._what}>"


def feature_disabled(feature: str, since: str) -> MlflowException:
    """FEATURE_DISABLED for ``feature`` of this store, which needs MLflow ``since`` or newer."""
    return MlflowException(
        f"{feature} on the pgmodels:// store need MLflow {since} or newer; the installed MLflow is "
        f"{MLFLOW_VERSION}. Upgrade MLflow (pip install \"mlflow>={since}\") to use them.",
        error_code=FEATURE_DISABLED)


def resolve(module: str, *names: str, params: tuple[str, ...] = (), feature: str | None = None,
            since: str | None = None) -> Any:
    """The first of ``names`` that MLflow's ``module`` has (MLflow's names for it, oldest first or
    newest first: the first found wins), checked to take ``params`` (positional names, in order).

    Missing or changed: for a required name (``feature`` None) the problem is recorded for
    :func:`require` and logged at ERROR; for an optional one (``feature`` needing MLflow ``since``)
    nothing is recorded. Either way a stand-in is returned that raises the error when used.
    """
    what = f"{module}.{' or '.join(names)}"
    found = None
    try:
        imported = importlib.import_module(module)
    except ImportError:
        problem = f"module {module} is missing (wanted {' or '.join(names)})"
    else:
        found = next((getattr(imported, n) for n in names if hasattr(imported, n)), None)
        problem = None if found is not None else f"{what} is missing"
        if found is not None and params and not _takes(found, params):
            problem = f"{what} no longer takes the arguments ({', '.join(params)})"
            found = None
    if found is not None:
        return found
    if feature is not None:
        return _Unavailable(what, lambda: feature_disabled(feature, since or TESTED_RANGE[0]))
    _problems.append(problem)
    _log.error("%s", incompatibility([problem]).message)
    return _Unavailable(what, lambda: incompatibility([problem]))


def _takes(function: Callable, params: tuple[str, ...]) -> bool:
    """Whether ``function`` can be called with ``params`` as positional arguments (their names
    only document what the package passes: MLflow renaming a parameter changes nothing)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True  # a builtin without a signature: nothing to compare
    try:
        signature.bind(*params)
    except TypeError:
        return False
    return True
