"""Parse filter expressions (``price<50``, ``category=dress``, ``colour=red|blue``) into store filters.

Expressions are checked against the index's payload fields, so an unknown field or a value of the
wrong type is refused with the list of valid fields, before any query runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from indexer import Condition, Filter

_EXPR = re.compile(r"^\s*(?P<key>[A-Za-z_][\w.-]*)\s*(?P<op><=|>=|!=|=|<|>|:)\s*(?P<value>.*?)\s*$")
_NUMERIC = {"integer", "float"}
_RANGE_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


class FilterError(ValueError):
    """A filter expression that cannot be applied to this index."""


def parse_filters(expressions: Iterable[str], fields: Mapping[str, str]) -> Filter:
    """``fields`` maps each filterable payload field to its kind (keyword, integer, float, bool)."""
    must: list[Condition] = []
    must_not: list[Condition] = []
    for expr in expressions:
        negate, cond = parse_one(expr, fields)
        (must_not if negate else must).append(cond)
    return Filter(must=tuple(must), must_not=tuple(must_not))


def parse_one(expr: str, fields: Mapping[str, str]) -> tuple[bool, Condition]:
    m = _EXPR.match(expr or "")
    if not m or not m.group("value"):
        raise FilterError(
            f"malformed filter {expr!r}: use FIELD=VALUE, FIELD=A|B, FIELD!=VALUE or FIELD<N / <= / > / >= N"
        )
    key, op, raw = m.group("key"), m.group("op"), m.group("value")
    if key not in fields:
        valid = ", ".join(f"{k} ({v})" for k, v in sorted(fields.items())) or "none (index has no payload fields)"
        raise FilterError(f"unknown filter field {key!r}; valid fields: {valid}")
    kind = fields[key]
    if op in _RANGE_OPS:
        if kind not in _NUMERIC:
            raise FilterError(f"filter {expr!r}: {key!r} is a {kind} field; '{op}' needs a number field")
        return False, Condition(key, "range", {_RANGE_OPS[op]: _number(raw, key, expr)})
    values = [v.strip() for v in raw.split("|") if v.strip()]
    typed = [_typed(v, kind, key, expr) for v in values]
    cond = Condition(key, "eq", typed[0]) if len(typed) == 1 else Condition(key, "in", typed)
    return op == "!=", cond


def _typed(value: str, kind: str, key: str, expr: str) -> object:
    if kind in _NUMERIC:
        return _number(value, key, expr)
    if kind == "bool":
        low = value.lower()
        if low not in {"true", "false"}:
            raise FilterError(f"filter {expr!r}: {key!r} is true/false, got {value!r}")
        return low == "true"
    return value


def _number(value: str, key: str, expr: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise FilterError(f"filter {expr!r}: {key!r} is a number field, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise FilterError(f"filter {expr!r}: {value!r} is not a finite number")
    return number


def parse_weights(spec: str | None) -> dict[str, float] | None:
    """``image=0.6,text=0.4`` -> {"image": 0.6, "text": 0.4}; ``lexical=W`` weighs the BM25 channel."""
    if not spec:
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in {"image", "text", "lexical"}:
            raise FilterError(f"malformed weights {spec!r}: use image=W,text=W,lexical=W")
        try:
            out[name] = float(value)
        except ValueError:
            raise FilterError(f"malformed weights {spec!r}: {value.strip()!r} is not a number") from None
    return out
