"""How the embedded store hands a filter to the engine: with the combined facet keys where they shorten
its walk, and, for a fused query, resolved to the ids it matches where that beats filtering each channel.

Both decisions read the engine's estimates (value counts of the payload indexes, no posting list walked),
passed in as ``estimate``: an engine filter -> the points it may match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import qdrant_edge as qe

from . import edge_config as edge
from . import facet_keys
from . import store_codec as codec
from .facet_keys import FacetKey
from .store import Condition, Filter

Estimate = Callable[[Any], int]


def narrowed(flt: Filter | None, combined: Sequence[str], estimate: Estimate | None) -> Filter | None:
    """``flt`` with the combined keys of the facets it names (facet_keys.py). For a search (``estimate``
    given), only where they leave few enough points for the engine to scan them (edge.KEYED_MAX): a
    search on the graph tests them at every step, which costs more than they save. A count always walks."""
    keyed = facet_keys.narrowed(flt, combined)
    if keyed is flt or flt is None or estimate is None:
        return keyed
    return keyed if _shortest(keyed.must[len(flt.must) :], estimate) <= edge.KEYED_MAX else flt


def resolved(flt: Filter | None, estimate: Estimate, matching: Callable[[Any, int], list[Any]]) -> Any:
    """The engine's filter for ``flt``; for a filter that matches few points out of long posting lists,
    the ids of those points (``matching(condition, limit)``: the point ids of up to ``limit`` matches).
    The engine finds a filter's matches again in each channel's search by walking the shortest posting
    list among its conditions, about 0.1 us a point: at 2M items 22 ms per search for a category,
    colour, pattern and price that 2,360 items share, four times in a 4-channel union. Found once, they
    cost about 2.5 us each to carry as ids.

    A shortest list of edge.KEYED_MAX points at most (a combined key's, most often) is left to the
    engine, which scans those points in each channel, even with a condition left to test on each: at 2M
    items, on disk, 2.4 ms a 512-d channel for a key of 5,000 and a price, against 20 ms for the scroll
    that finds their 2,360 matches once. The engine's estimate of the whole filter would not tell: it
    takes its conditions as independent, and a key's are not (a key for 2,500 points, a filter
    estimated at 6)."""
    condition = engine_filter(flt, estimate)
    if condition is None or not flt or not flt.must:
        return condition
    matches = estimate(condition)
    if matches > edge.RESOLVED_MAX:
        return condition
    shortest = _shortest(flt.must, estimate)
    if shortest <= edge.KEYED_MAX or shortest < edge.RESOLVED_WALK * max(matches, 1):
        return condition
    ids = matching(condition, edge.RESOLVED_MAX + 1)
    if len(ids) > edge.RESOLVED_MAX:
        return condition
    return qe.Filter(must=[qe.HasIdCondition(set(ids))])


def _shortest(conditions: Sequence[Any], estimate: Estimate) -> int:
    """The shortest posting list among ``conditions``: the points the engine walks to test the rest."""
    return min(estimate(codec.to_filter(Filter(must=(c,)), edge.MODELS)) for c in conditions)


def engine_filter(flt: Filter | None, estimate: Estimate) -> Any:
    """``flt`` as the engine's filter, each combined key in it standing for the conditions it covers.

    The engine tests every point it reads against every condition of a filter: at 2M items a search among
    a key's 5,000 points took 3.6 ms with its category, colour and pattern tested again on each point,
    0.55 ms with the key alone. So a point holding one of the key's exact keys is not tested on them; one
    holding its wildcard is, and where no point holds the wildcard (its estimate, a count kept by the
    index, is 0) that test is left out as well (1.5 ms with it)."""
    keys = [c for c in flt.must if isinstance(c, FacetKey)] if flt else []
    if not flt or not keys:
        return codec.to_filter(flt, edge.MODELS)
    covered = {id(c) for key in keys for c in key.covers}
    rest = [
        codec.to_condition(edge.MODELS, c) for c in flt.must if id(c) not in covered and not isinstance(c, FacetKey)
    ]
    must_not = [codec.to_condition(edge.MODELS, c) for c in flt.must_not]
    return qe.Filter(must=rest + [_standing_in(key, estimate) for key in keys], must_not=must_not or None)


def _standing_in(key: FacetKey, estimate: Estimate) -> Any:
    exact = codec.to_condition(edge.MODELS, Condition(key.key, "in", key.exact))
    wildcard = codec.to_condition(edge.MODELS, Condition(key.key, "eq", key.wildcard))
    if estimate(qe.Filter(must=[wildcard])) == 0:
        return exact
    tested = [wildcard, *(codec.to_condition(edge.MODELS, c) for c in key.covers)]
    return qe.Filter(should=[qe.Filter(must=[exact]), qe.Filter(must=tested)])
