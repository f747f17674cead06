"""PostgreSQL errors turned into MlflowExceptions with MLflow's error codes and no secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
)
from psycopg import errors as pg_errors

from mlflow_pgmodels._pg.uri import redact

# How the governance triggers (sql/pgmodels_governance.sql) start their messages.
GOVERNANCE_PREFIX = "pgmodels governance: "


@contextlib.contextmanager
def translate_errors(what: str, uri: str | None = None) -> Iterator[None]:
    """Turn psycopg errors into MlflowExceptions with MLflow error codes and no secrets."""
    try:
        yield
    except MlflowException:
        raise
    except pg_errors.InsufficientPrivilege as e:
        if e.diag.message_primary and e.diag.message_primary.startswith(GOVERNANCE_PREFIX):
            # a rule of sql/pgmodels_governance.sql: its message names the rule and the role it needs
            raise MlflowException(
                f"Permission denied: {redact(e.diag.message_primary.removeprefix(GOVERNANCE_PREFIX))}. "
                "Nothing was changed (see docs/governance.md).",
                error_code=PERMISSION_DENIED,
            ) from None
        raise MlflowException(
            f"Permission denied: the database role cannot {what} ({_clean(e)}). "
            "Connect with a role that has the rights for it (see sql/roles.sql).",
            error_code=PERMISSION_DENIED,
        ) from None
    except pg_errors.UniqueViolation as e:
        raise MlflowException(f"Cannot {what}: it already exists ({_clean(e)})",
                              error_code=RESOURCE_ALREADY_EXISTS) from None
    except (pg_errors.DataError, pg_errors.IntegrityError, psycopg.DataError) as e:
        raise MlflowException(f"Cannot {what}: invalid value ({_clean(e)})",
                              error_code=INVALID_PARAMETER_VALUE) from None
    except pg_errors.ReadOnlySqlTransaction as e:
        # a standby, or a primary being demoted: during a failover, until the URI reaches the new primary
        raise MlflowException(
            f"Cannot {what}: the database server is read-only now ({_clean(e)}): a standby, or a failover "
            "is under way. Writes need the primary: list it in the URI with target_session_attrs=read-write "
            "(pgmodels://host1,host2/db?target_session_attrs=read-write); the call can be retried.",
            error_code=TEMPORARILY_UNAVAILABLE,
        ) from None
    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as e:
        # (class 40, not subclasses of TransactionRollback in psycopg.) MLflow's own store says
        # TEMPORARILY_UNAVAILABLE with "deadlock" in the message, and retries on exactly that.
        raise MlflowException(
            f"Cannot {what}: the change collided with a concurrent change of the same data "
            f"(deadlock or serialization failure: {_clean(e)}) and was rolled back; nothing was "
            "changed and the call can be retried.",
            error_code=TEMPORARILY_UNAVAILABLE,
        ) from None
    except pg_errors.ProgramLimitExceeded as e:
        # an OperationalError in psycopg's classes, but about the value, not the connection
        raise MlflowException(f"Cannot {what}: a value is too large for the database ({_clean(e)})",
                              error_code=INVALID_PARAMETER_VALUE) from None
    except psycopg.OperationalError as e:
        where = f" at {redact(uri)}" if uri else ""
        raise MlflowException(
            f"Cannot {what}: the model database{where} is not reachable or the connection was "
            f"lost ({_clean(e)}). Check that PostgreSQL is running and the URI is right; "
            "the call can be retried.",
            error_code=TEMPORARILY_UNAVAILABLE,
        ) from None
    except psycopg.Error as e:
        raise MlflowException(f"Cannot {what}: database error ({_clean(e)})",
                              error_code=INTERNAL_ERROR) from None


def _clean(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()))
