"""Registry searches compiled to SQL: MLflow filter strings, ``order_by``, page tokens, and ``latest``.

Filters are parsed by MLflow's own search utilities; values only ever travel as parameters.
Prompts (registered models tagged ``mlflow.prompt.is_prompt = true``) are left out unless the
filter names that tag, as in MLflow's stores.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities.model_registry.model_version_stages import ALL_STAGES, STAGE_ARCHIVED
from mlflow.exceptions import MlflowException
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
from mlflow.store.model_registry import (
    SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
    SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD,
)
from mlflow.utils.search_utils import SearchModelUtils, SearchModelVersionUtils, SearchUtils
from psycopg.rows import dict_row

from mlflow_pgmodels._registry import column_tags
from mlflow_pgmodels._registry.entities import ACTIVE_SQL, MV_COLUMNS, RM_COLUMNS

ACTIVE_STAGES = [s for s in ALL_STAGES if s != STAGE_ARCHIVED]

_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "LIKE": "LIKE", "ILIKE": "ILIKE"}
_MV_ATTRIBUTES = {"name": "m.name", "version_number": "m.version", "run_id": "m.run_id", "source_path": "m.source"}
_MV_ORDER = {"name": "m.name", "version_number": "m.version",
             "creation_timestamp": "m.created_at", "last_updated_timestamp": "m.last_updated_at"}
_RM_ORDER = {"name": "r.name", "timestamp": "r.last_updated_at", "last_updated_timestamp": "r.last_updated_at",
             "creation_timestamp": "r.created_at"}
# The tag tables, correlated with the row being searched (``t`` is the tag row).
_RM_TAGS = "pgm_registered_model_tags t WHERE t.name = r.name"
_MV_TAGS = "pgm_model_version_tags t WHERE t.name = m.name AND t.version = m.version"


def is_prompt_sql(tags_from: str) -> str:
    """SQL true for a prompt; ``tags_from`` is the correlated tag table (``... t WHERE ...``).

    The one definition of "is a prompt"; takes the tag key as its one parameter.
    """
    return f"EXISTS (SELECT 1 FROM {tags_from} AND t.key = %s AND t.value = 'true')"


def is_prompt(conn, name: str) -> bool:
    """Whether the registered model ``name`` is a prompt."""
    return conn.execute(f"SELECT {is_prompt_sql('pgm_registered_model_tags t WHERE t.name = %s')}",
                        (name, IS_PROMPT_TAG_KEY)).fetchone()[0]


def registered_models_sql(filter_string: str | None, max_results: Any, order_by: list[str] | None,
                          page_token: str | None) -> tuple[str, list, int, int]:
    """``(sql, params, max_results, offset)`` of one page (plus one row, to tell if there is another)."""
    max_results = _max_results(max_results, SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
                               SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD, type_first=False)
    where, params = _where(SearchModelUtils, filter_string, {"name": "r.name"}, _RM_TAGS, {})
    order = _order_by(order_by, _parse_rm_order, _RM_ORDER, ["r.name ASC"])
    offset = SearchUtils.parse_start_offset_from_page_token(page_token)
    sql = _page_sql(RM_COLUMNS, "pgm_registered_models r", where, order)
    return sql, [*params, max_results + 1, offset], max_results, offset


def model_versions_sql(filter_string: str | None, max_results: Any, order_by: list[str] | None,
                       page_token: str | None) -> tuple[str, list, int, int]:
    """``(sql, params, max_results, offset)`` of one page (plus one row, to tell if there is another)."""
    max_results = _max_results(max_results, SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
                               SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD, type_first=True)
    where, params = _where(SearchModelVersionUtils, filter_string, _MV_ATTRIBUTES, _MV_TAGS,
                           {key: f"m.{key}" for key in column_tags.COLUMNS})
    order = _order_by(order_by or ["last_updated_timestamp DESC"], _parse_mv_order, _MV_ORDER,
                      ["m.name ASC", "m.version DESC"])
    offset = SearchUtils.parse_start_offset_from_page_token(page_token)
    sql = _page_sql(MV_COLUMNS, "models m", where, order)
    return sql, [*params, max_results + 1, offset], max_results, offset


def _page_sql(columns: str, table: str, where: str, order: str) -> str:
    """One page (``LIMIT %s OFFSET %s``) of ``table`` (``name alias``), then ``columns`` of its rows only.

    The page is cut in a subquery: otherwise PostgreSQL computes the columns' tag and alias
    subqueries for every row that OFFSET skips too (page 50 of 100 took 97 ms instead of 2).
    """
    alias = table.split()[1]
    return (f"SELECT {columns} FROM (SELECT {alias}.* FROM {table} {where} ORDER BY {order} LIMIT %s OFFSET %s)"
            f" {alias} ORDER BY {order}")


def next_page_token(rows_fetched: int, max_results: int, offset: int) -> str | None:
    if rows_fetched <= max_results:
        return None
    token = SearchUtils.create_page_token(offset + max_results)
    return token.decode() if isinstance(token, bytes) else token


def latest_by_stage(conn, names: list[str], stages: list[str], event: str | None = None,
                    model_type: str | None = None) -> list[dict[str, Any]]:
    """``MV_COLUMNS`` rows, by column name: the highest version in each of ``stages`` of each name, by name then version DESC.

    ``event`` / ``model_type`` narrow it to versions with those column tags (the helper API).
    """
    if not names:
        return []
    # One LIMIT 1 index probe per name and stage. Each stage is its own branch with the stage
    # as a parameter, so that the planner sees its value: for a stage no version is in, it
    # then takes pgm_models_latest_idx instead of walking every version of the name.
    narrow, narrow_params = "", []
    for key, value in (("event", event), ("model_type", model_type)):
        if value is not None:
            narrow += f" AND x.{key} = %s"
            narrow_params.append(value)
    branches, params = [], []
    for stage in dict.fromkeys(stages):
        if stage == STAGE_ARCHIVED:
            active, stage_params = "x.is_active IS FALSE", []
        else:
            active, stage_params = f"x.{ACTIVE_SQL} AND x.stage = %s", [stage]
        branches.append(f"""SELECT {MV_COLUMNS} FROM unnest(%s::text[]) AS n(name) CROSS JOIN LATERAL (
            SELECT * FROM models x WHERE x.name = n.name AND {active}{narrow}
            ORDER BY x.version DESC LIMIT 1) m""")
        params += [names, *stage_params, *narrow_params]
    return conn.cursor(row_factory=dict_row).execute(
        " UNION ALL ".join(branches) + " ORDER BY name, version DESC", params).fetchall()


def latest_active_version(conn, name: str, event: str | None = None, model_type: str | None = None) -> int | None:
    """What ``models:/name/latest`` means: the highest active version (of that event and type), or None."""
    rows = latest_by_stage(conn, [name], ACTIVE_STAGES, event, model_type)
    return max((row["version"] for row in rows), default=None)


# ---------------------------------------------------------------------- filters
def _where(utils, filter_string: str | None, attributes: dict[str, str], tags_from: str,
           tag_columns: dict[str, str]) -> tuple[str, list]:
    parsed = _parse_filter(utils, filter_string)
    clauses, params = [], []
    for clause in parsed:
        sql, args = _clause(clause, attributes, tags_from, tag_columns)
        clauses.append(sql)
        params += args
    if not any(c["type"] == "tag" and c["key"] == IS_PROMPT_TAG_KEY for c in parsed):
        clauses.append(f"NOT {is_prompt_sql(tags_from)}")
        params.append(IS_PROMPT_TAG_KEY)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _clause(clause: dict, columns: dict[str, str], tags_from: str, tag_columns: dict[str, str]) -> tuple[str, list]:
    """One parsed MLflow filter clause as SQL with parameters (values are never put in the SQL)."""
    kind, key, op, value = clause["type"], clause["key"], clause["comparator"].upper(), clause["value"]
    if kind == "attribute":
        column = columns.get(key)
        if column is None:
            raise MlflowException.invalid_parameter_value(f"Invalid attribute key '{key}' in filter")
        if op in ("IN", "NOT IN"):
            sql = f"{column} = ANY(%s)" if op == "IN" else f"NOT ({column} = ANY(%s))"
            return sql, [list(value)]
        if op not in _SQL_OPS:
            raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for attribute '{key}'")
        if key == "version_number":
            if op in ("LIKE", "ILIKE"):
                raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for version_number")
            return f"{column} {_SQL_OPS[op]} %s", [_version_in_filter(value)]
        return f"{column} {_SQL_OPS[op]} %s", [value]
    if kind == "tag":
        if op not in ("=", "!=", "LIKE", "ILIKE"):
            raise MlflowException.invalid_parameter_value(f"Invalid comparator '{op}' for tag '{key}'")
        if key in tag_columns:
            return f"{tag_columns[key]} {_SQL_OPS[op]} %s", [value]
        if key == IS_PROMPT_TAG_KEY and (op, value) in (("!=", "true"), ("=", "false")):
            # models without the tag are not prompts (as in MLflow's own stores)
            return f"NOT {is_prompt_sql(tags_from)}", [key]
        return f"EXISTS (SELECT 1 FROM {tags_from} AND t.key = %s AND t.value {_SQL_OPS[op]} %s)", [key, value]
    raise MlflowException.invalid_parameter_value(f"Invalid search expression type '{kind}'")


def _parse_filter(utils, filter_string: str | None) -> list[dict]:
    """MLflow's parse of a filter string; the ValueErrors its parser lets out become 400s too."""
    try:
        return utils.parse_search_filter(filter_string or "")
    except MlflowException:
        raise
    except (ValueError, TypeError, IndexError) as e:
        raise MlflowException.invalid_parameter_value(f"Invalid filter {filter_string!r}: {e}") from None


def _version_in_filter(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MlflowException.invalid_parameter_value(
            f"Invalid version_number {value!r} in filter: expected a whole number") from None


# ---------------------------------------------------------------------- order and pages
def _parse_rm_order(text: str) -> tuple[str, bool]:
    return SearchUtils.parse_order_by_for_search_registered_models(text)


def _parse_mv_order(text: str) -> tuple[str, bool]:
    kind, key, ascending = SearchModelVersionUtils.parse_order_by_for_search_model_versions(text)
    if kind != "attribute":
        raise MlflowException.invalid_parameter_value(f"Invalid order_by entity: {kind}")
    return key, ascending


def _order_by(order_by: list[str] | None, parse, columns: dict[str, str], tie_breakers: list[str]) -> str:
    """ORDER BY terms: the requested ones (a key twice is refused, as in MLflow), then MLflow's tie-breakers."""
    terms, seen = [], set()
    for text in order_by or []:
        key, ascending = parse(text)
        column = columns.get(key)
        if column is None:
            raise MlflowException.invalid_parameter_value(f"Invalid order by key '{key}' specified.")
        if column in seen:
            raise MlflowException.invalid_parameter_value(f"`order_by` contains duplicate fields: {order_by}")
        seen.add(column)
        terms.append(f"{column} {'ASC' if ascending else 'DESC'}")
    for term in tie_breakers:
        if term.split()[0] not in seen:
            seen.add(term.split()[0])
            terms.append(term)
    return ", ".join(terms)


def _max_results(value: Any, default: int, threshold: int, type_first: bool) -> int:
    """``max_results`` checked with MLflow's own messages, in its order (``type_first``: versions)."""
    if value is None:
        return default
    not_positive_int = not isinstance(value, int) or isinstance(value, bool) or value < 1
    if type_first and not_positive_int:
        raise MlflowException.invalid_parameter_value(
            f"Invalid value for max_results. It must be a positive integer, but got {value}")
    if isinstance(value, (int, float)) and value > threshold:
        raise MlflowException.invalid_parameter_value(
            "Invalid value for request parameter max_results. It must be at most "
            f"{threshold}, but got value {value}")
    if not_positive_int:
        raise MlflowException.invalid_parameter_value(
            f"Invalid value for max_results. It must be a positive integer, but got {value}")
    return value
