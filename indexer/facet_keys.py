"""Combined facet keys: one keyword for each pair and triple of a point's facet values.

A filter that names several facets (a category, a colour and a pattern) matches few items, but each of
its conditions alone matches many: the engine finds the matches by walking the shortest posting list
among its conditions, the points of one colour, and testing each. At 2M items that is 200,000 points
and ~20 ms for every channel of a search. Stored with each point, a key for each combination of its
facet values has a posting list as long as the combination's matches, so a filter that also names the
key (:func:`narrowed`) is found from that list instead.

Keys are 64-bit hashes of the field names and values. A point with many values in its facets (a list
of colours) gets a wildcard key instead of a key for every combination, and a filter's key also matches
the wildcard: the point is then tested on the conditions the key stands for (:class:`FacetKey`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .store import Condition, Filter

# The payload key under which a point's combined keys are stored (a keyword index).
KEY = "_facets"
# Combinations of this many fields. Pairs alone leave walks of the rarer pair's points (20,000 at 2M
# items for a category and a colour); triples bring them to the matches themselves.
SIZES = (2, 3)
# At most this many facet fields are combined: C(6,2) + C(6,3) = 35 keys a point.
MAX_FIELDS = 6
# A point whose values in one combination of fields make more keys than this gets the wildcard.
MAX_KEYS = 16
# A field with at least this many values in a store's first batch is an identifier (a SKU), not a facet.
MAX_DISTINCT = 100


@dataclass(frozen=True)
class FacetKey(Condition):
    """A condition on one combination's keys (its exact keys, then its wildcard), standing for ``covers``:
    the filter's conditions on the combination's facets, which a point holding an exact key meets."""

    covers: tuple[Condition, ...] = ()

    @property
    def exact(self) -> list[str]:
        return list(self.value[:-1])

    @property
    def wildcard(self) -> str:
        return str(self.value[-1])


def facet_fields(sample: Sequence[Mapping[str, Any]], keyword_fields: Sequence[str]) -> list[str]:
    """The fields to combine, read from the first payloads a store is given: keyword fields with
    strings in them and few distinct values, fewest first, at most :data:`MAX_FIELDS`."""
    distinct: dict[str, set[str]] = {}
    for name in keyword_fields:
        seen = {v for payload in sample for v in _strings(payload.get(name))}
        if seen and len(seen) < MAX_DISTINCT:
            distinct[name] = seen
    chosen = sorted(distinct, key=lambda name: (len(distinct[name]), name))[:MAX_FIELDS]
    return chosen if len(chosen) >= min(SIZES) else []


def point_keys(payload: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """The combined keys of a point with ``payload``, over ``fields`` (the store's, in its order)."""
    return list(_keys_of(tuple(fields), tuple(tuple(_strings(payload.get(name))) for name in fields)))


# Items share their facet values (a catalog of 2M has a few thousand combinations of category, colour,
# pattern, brand and stock), so the keys of each are made once (making them took ~40 us an item). A
# combination's entry is a few hundred bytes: 16k of them stay within a few MB.
@functools.lru_cache(maxsize=1 << 14)
def _keys_of(fields: tuple[str, ...], held: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    values = dict(zip(fields, held, strict=True))
    keys: list[str] = []
    for size in SIZES:
        for combo in itertools.combinations(fields, size):
            lists = [values[name] for name in combo]
            if not all(lists):
                continue  # no key: the point matches no condition on a field it lacks
            if math.prod(len(v) for v in lists) > MAX_KEYS:
                keys.append(_wildcard(combo))
            else:
                keys.extend(_key(combo, chosen) for chosen in itertools.product(*lists))
    return tuple(keys)


def narrowed(flt: Filter | None, fields: Sequence[str]) -> Filter | None:
    """``flt`` with a condition on the combined keys of the facets it names, where it names two or more
    of ``fields``; the same matches, found from shorter posting lists."""
    if flt is None or not fields:
        return flt
    named: dict[str, tuple[Condition, list[str]]] = {}
    for cond in flt.must:
        values = _condition_values(cond)
        if cond.key in fields and values and cond.key not in named:
            named[cond.key] = (cond, values)
    combos = _widest(fields, {name: values for name, (_, values) in named.items()})
    extra = tuple(_key_condition(combo, named) for combo in combos)
    return Filter(must=(*flt.must, *extra), must_not=flt.must_not) if extra else flt


def _widest(fields: Sequence[str], named: Mapping[str, list[str]]) -> list[tuple[str, ...]]:
    # Every combination of the widest size the filter fills: the engine walks whichever key's list is shortest.
    present = [name for name in fields if name in named]
    for size in sorted(SIZES, reverse=True):
        if len(present) >= size:
            combos = [
                c for c in itertools.combinations(present, size) if math.prod(len(named[n]) for n in c) <= MAX_KEYS
            ]
            if combos:
                return combos
    return []


def _key_condition(combo: tuple[str, ...], named: Mapping[str, tuple[Condition, list[str]]]) -> FacetKey:
    keys = [_key(combo, chosen) for chosen in itertools.product(*(named[name][1] for name in combo))]
    return FacetKey(KEY, "in", [*keys, _wildcard(combo)], covers=tuple(named[name][0] for name in combo))


def _condition_values(cond: Condition) -> list[str]:
    """The strings a must-condition asks a field to hold (any of them), or [] when it is no such test."""
    if cond.op == "eq" and isinstance(cond.value, str):
        return [cond.value]
    if cond.op == "in" and isinstance(cond.value, list | tuple) and cond.value:
        if all(isinstance(v, str) for v in cond.value):
            return sorted(set(cond.value))
    return []


def _strings(value: Any) -> list[str]:
    # A keyword index holds a payload's strings, alone or in a list; anything else matches no keyword.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return sorted({v for v in value if isinstance(v, str)})
    return []


@functools.lru_cache(maxsize=1 << 16)
def _key(combo: tuple[str, ...], values: tuple[str, ...]) -> str:
    text = "\x1f".join(f"{name}\x1e{value}" for name, value in zip(combo, values, strict=True))
    return _digest(text)


@functools.lru_cache(maxsize=1 << 10)
def _wildcard(combo: tuple[str, ...]) -> str:
    return _digest("\x1f".join(combo) + "\x1d*")


def _digest(text: str) -> str:
    # 64 bits in 11 characters: short in every point's payload and in the index's postings.
    return base64.urlsafe_b64encode(hashlib.blake2b(text.encode(), digest_size=8).digest()).decode().rstrip("=")
