"""Composing the column lists of INSERT and SET with ``psycopg.sql``: names as identifiers, values as parameters.

A value is a plain Python value (sent as a parameter) or an :class:`Expr`, SQL computed by the
server (``now()``, a column of the row being copied) with parameters of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql


@dataclass(frozen=True)
class Expr:
    """A value computed in SQL; ``params`` fill its placeholders, in order."""

    sql: sql.Composable
    params: tuple = ()


NOW = Expr(sql.SQL("now()"))


def column(name: str) -> Expr:
    """The value of column ``name`` of the row being read (``INSERT ... SELECT``)."""
    return Expr(sql.Identifier(name))


def value(v: Any) -> tuple[sql.Composable, list]:
    """The SQL of one value and its parameters: a placeholder for a plain value, the expression for an Expr."""
    if isinstance(v, Expr):
        return v.sql, list(v.params)
    return sql.Placeholder(), [v]


def values_list(values: Mapping[str, Any]) -> tuple[sql.Composed, sql.Composed, list]:
    """``(columns, values, params)`` for ``INSERT INTO t (columns) VALUES (values)`` or ``... SELECT values``."""
    parts, params = [], []
    for v in values.values():
        part, part_params = value(v)
        parts.append(part)
        params += part_params
    return sql.SQL(", ").join(map(sql.Identifier, values)), sql.SQL(", ").join(parts), params


def set_clause(changes: Mapping[str, Any]) -> tuple[sql.Composed, list]:
    """``col = value, ...`` for an UPDATE's SET, and its parameters in order."""
    if not changes:
        raise ValueError("an UPDATE needs at least one column to set")
    parts, params = [], []
    for name, v in changes.items():
        part, part_params = value(v)
        parts.append(sql.SQL("{} = {}").format(sql.Identifier(name), part))
        params += part_params
    return sql.SQL(", ").join(parts), params
