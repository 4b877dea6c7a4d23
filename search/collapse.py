"""One entry per product on a result page: the variants of an item group, and one photo listed twice.

A feed lists each variant of a product (each colour, each size) as its own item, tied together by an item
group id (Google Merchant Center's ``item_group_id``). A shopper wants the product once: a group is shown
by its best-ranked variant, the one the query's own score put highest (so "red dress" shows the red
variant of a dress made in five colours), and the others are named in its explanation. Near-identical
photos of distinct items are collapsed after that, by image cosine (:func:`search.fusion.mmr_dedup`).

Products asked for by name (a code in the query) are never collapsed: asking for a group's code lists
every variant.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .fusion import mmr_dedup
from .lexical import CODE_MATCH
from .query import Hit

Fetch = Callable[[list[Hit], int], list[Hit]]  # (hits, upto) -> hits, the first upto with payload and image


@dataclass(frozen=True)
class CollapseRules:
    """``dedup_threshold``: image cosine above which a photo counts as listed twice (None: keep them);
    ``group_field``: the payload field naming an item's group (None: every variant listed)."""

    dedup_threshold: float | None = None
    group_field: str | None = None

    def __bool__(self) -> bool:
        return self.dedup_threshold is not None or self.group_field is not None


def first_of_groups(groups: Sequence[Hashable | None], keep: Collection[int] = ()) -> dict[int, int]:
    """For the group keys of a ranked list: each position whose group appeared higher up -> that position.

    Positions without a group stand alone; positions in ``keep`` are never collapsed (they still open
    their group for the positions below)."""
    first: dict[Hashable, int] = {}
    later: dict[int, int] = {}
    for i, group in enumerate(groups):
        if group is None:
            continue
        if group in first and i not in keep:
            later[i] = first[group]
        else:
            first.setdefault(group, i)
    return later


def group_key(payload: dict[str, Any], field: str) -> str | None:
    value = payload.get(field)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return None


def collapse(hits: list[Hit], need: int, fetch: Fetch, rules: CollapseRules) -> list[Hit]:
    """The hits with groups and duplicates collapsed, until ``need`` entries are known (or all are seen).

    A prefix is collapsed as it would be within the whole list, so the prefix grows (and its payloads
    and image vectors are fetched) only while collapsing leaves the page short."""
    if not rules:
        return fetch(hits, need)
    size = need
    while True:
        hits = fetch(hits, size)
        head = hits[:size]
        if len(head) < 2:
            return hits
        kept, variants, duplicates = _collapse_head(head, rules)
        if len(kept) >= need or size >= len(hits):
            break
        size *= 2
    return [_annotated(head, i, variants, duplicates) for i in kept]


def _collapse_head(head: list[Hit], rules: CollapseRules) -> tuple[list[int], dict[int, int], dict[int, int]]:
    named = {i for i, h in enumerate(head) if h.explanation.get("ranked_by") == CODE_MATCH}
    variants = {}
    if rules.group_field is not None:
        variants = first_of_groups([group_key(h.payload, rules.group_field) for h in head], keep=named)
    rest = [i for i in range(len(head)) if i not in variants]
    duplicates: dict[int, int] = {}
    if rules.dedup_threshold is None or len(rest) < 2:
        return rest, variants, duplicates
    vectors = np.stack([head[i].vectors["image"] for i in rest])
    keep = [k for k, i in enumerate(rest) if i in named]
    dedup = mmr_dedup([head[i].id for i in rest], vectors, rules.dedup_threshold, keep=keep)
    duplicates = {rest[a]: rest[b] for a, b in dedup.duplicate_of.items()}
    return [rest[k] for k in dedup.kept], variants, duplicates


def _annotated(head: list[Hit], i: int, variants: dict[int, int], duplicates: dict[int, int]) -> Hit:
    # A group's best variant may itself be a photo listed twice: its variants then go with what it duplicates.
    shown = {j: duplicates.get(first, first) for j, first in variants.items()}
    extra = {}
    if names := [head[j].id for j, of in shown.items() if of == i]:
        extra["variants"] = names
    if names := [head[j].id for j, of in duplicates.items() if of == i]:
        extra["duplicates"] = names
    return replace(head[i], explanation={**head[i].explanation, **extra}) if extra else head[i]
