"""A small JSON filter language over document metadata, compiled to parameterised SQLite.

Grammar (MongoDB-like)::

    filter   := {field: value | {op: operand, ...}, ..., "$and": [filter, ...], "$or": [filter, ...]}
    op       := "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$nin"

Several keys in one object are ANDed. Values are JSON scalars (string, number, true/false,
null); ``$in``/``$nin`` take a list of them. Semantics, for a document whose metadata lacks
the field or holds another JSON type:

- ``$eq``/``$in`` match only a value of the same JSON type (``true`` is not ``1``; ``1`` equals ``1.0``);
- ``$ne``/``$nin`` match everything ``$eq``/``$in`` do not, a missing field included;
- ``$gt``... compare numbers with numbers and strings with strings (by code point); other types
  never match.

Field names go into SQLite as bound JSON paths and values as bound parameters: no text from
the user is ever spliced into SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from simtool.errors import SimtoolError

_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPS = ("$eq", "$ne", "$in", "$nin", *_CMP)


class FilterError(SimtoolError):
    """A malformed filter; the message says where."""


@dataclass(frozen=True)
class SqlFilter:
    """``where`` is a boolean SQL expression over the ``metadata`` column; ``params`` its bound values."""

    where: str
    params: tuple[Any, ...]


def parse_filter(filter: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A filter given as JSON text or a dict, checked; None for no filter."""
    if filter is None:
        return None
    if isinstance(filter, str):
        try:
            filter = json.loads(filter)
        except json.JSONDecodeError as e:
            raise FilterError(f"filter is not valid JSON ({e.msg} at column {e.colno})") from None
    compile_filter(filter)  # type: ignore[arg-type]
    return filter  # type: ignore[return-value]


def compile_filter(filter: dict[str, Any]) -> SqlFilter:
    params: list[Any] = []
    where = _node(filter, "filter", params)
    return SqlFilter(where, tuple(params))


def _type_sql(field: str, params: list[Any]) -> str:
    """SQL for the JSON type of ``field`` (NULL when absent); its key goes in as a bound parameter."""
    if '"' in field or "\\" in field:  # a JSON path cannot quote these: look the key up instead
        params.append(field)
        return "(SELECT type FROM json_each(metadata) WHERE key = ?)"
    params.append(f'$."{field}"')
    return "json_type(metadata, ?)"


def _value_sql(field: str, params: list[Any]) -> str:
    if '"' in field or "\\" in field:
        params.append(field)
        return "(SELECT atom FROM json_each(metadata) WHERE key = ?)"
    params.append(f'$."{field}"')
    return "json_extract(metadata, ?)"


def _node(node: Any, where: str, params: list[Any]) -> str:
    if not isinstance(node, dict):
        raise FilterError(f"{where} must be a JSON object, got {_kind(node)}")
    if not node:
        return "1"
    parts = []
    for key, value in node.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{where}.{key} must be a non-empty list of filters")
            subs = [_node(v, f"{where}.{key}[{i}]", params) for i, v in enumerate(value)]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(subs) + ")")
        elif key.startswith("$"):
            raise FilterError(f"{where}: unknown operator {key!r} (fields may not start with '$')")
        elif isinstance(value, dict):
            if not value:
                raise FilterError(f"{where}.{key}: empty operator object")
            for op, operand in value.items():
                parts.append(_condition(key, op, operand, f"{where}.{key}", params))
        else:
            parts.append(_condition(key, "$eq", value, f"{where}.{key}", params))
    return "(" + " AND ".join(parts) + ")"


def _condition(field: str, op: str, operand: Any, where: str, params: list[Any]) -> str:
    if op not in _OPS:
        raise FilterError(f"{where}: unknown operator {op!r}; expected one of {', '.join(_OPS)}")
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise FilterError(f"{where}.{op} must be a non-empty list of values")
        any_eq = "(" + " OR ".join(_equal(field, v, f"{where}.{op}", params) for v in operand) + ")"
        return any_eq if op == "$in" else f"(NOT {any_eq})"
    if op in ("$eq", "$ne"):
        eq = _equal(field, operand, f"{where}.{op}", params)
        return eq if op == "$eq" else f"(NOT {eq})"
    if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
        raise FilterError(f"{where}.{op} needs a number or a string, got {_kind(operand)}")
    types = "('text')" if isinstance(operand, str) else "('integer', 'real')"
    kind, value = _type_sql(field, params), _value_sql(field, params)
    params.append(operand)
    return f"({kind} IN {types} AND {value} {_CMP[op]} ?)"


def _equal(field: str, value: Any, where: str, params: list[Any]) -> str:
    """True exactly when the field holds ``value`` with the same JSON type; never NULL."""
    if value is None:
        return f"({_type_sql(field, params)} IS 'null')"
    if isinstance(value, bool):
        return f"({_type_sql(field, params)} IS '{'true' if value else 'false'}')"
    if isinstance(value, (int, float)):
        types = "('integer', 'real')"
    elif isinstance(value, str):
        types = "('text')"
    else:
        raise FilterError(f"{where} must be a string, number, boolean or null, got {_kind(value)}")
    kind, stored = _type_sql(field, params), _value_sql(field, params)
    params.append(value)
    return f"(coalesce({kind} IN {types} AND {stored} = ?, 0))"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def matches(filter: dict[str, Any] | None, metadata: dict[str, Any]) -> bool:
    """The same language evaluated in Python: the reference the SQL is tested against."""
    if not filter:
        return True
    for key, value in filter.items():
        if key == "$and":
            ok = all(matches(f, metadata) for f in value)
        elif key == "$or":
            ok = any(matches(f, metadata) for f in value)
        elif isinstance(value, dict):
            ok = all(_holds(metadata, key, op, operand) for op, operand in value.items())
        else:
            ok = _holds(metadata, key, "$eq", value)
        if not ok:
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def _holds(metadata: dict[str, Any], field: str, op: str, operand: Any) -> bool:
    present = field in metadata
    value = metadata.get(field)
    if op == "$eq":
        return present and _same(value, operand)
    if op == "$ne":
        return not (present and _same(value, operand))
    if op == "$in":
        return present and any(_same(value, v) for v in operand)
    if op == "$nin":
        return not (present and any(_same(value, v) for v in operand))
    numeric = isinstance(operand, (int, float))
    if not present or isinstance(value, bool):
        return False
    if numeric and not isinstance(value, (int, float)):
        return False
    if not numeric and not isinstance(value, str):
        return False
    return {"$gt": value > operand, "$gte": value >= operand, "$lt": value < operand, "$lte": value <= operand}[op]
