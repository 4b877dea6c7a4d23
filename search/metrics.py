"""Retrieval metrics for the evaluation harness: binary relevance, one query at a time.

``ranked`` is the result list, best first; ``relevant`` the set of correct ids. An id repeated in
``ranked`` counts once, at its first position. Every metric needs at least one relevant id: a query
without any measures nothing, and averaging it in as 0 would hide a broken query generator.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

MRR = "mrr"


def _check(relevant: Collection[str], k: int | None) -> None:
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")


def _gains(ranked: Sequence[str], relevant: Collection[str], k: int | None) -> list[int]:
    """1 where a position holds a relevant id not seen earlier in the list, else 0."""
    seen: set[str] = set()
    gains = []
    for item in ranked if k is None else ranked[:k]:
        gains.append(1 if item in relevant and item not in seen else 0)
        seen.add(item)
    return gains


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant ids among the first k, over k (a list shorter than k counts its gaps as misses)."""
    _check(relevant, k)
    return sum(_gains(ranked, relevant, k)) / k


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant ids among the first k, over all relevant ids."""
    _check(relevant, k)
    return sum(_gains(ranked, relevant, k)) / len(set(relevant))


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalised discounted cumulative gain: gain 1 per relevant id at 1-based rank r, discount log2(r+1)."""
    _check(relevant, k)
    dcg = sum(g / math.log2(r + 1) for r, g in enumerate(_gains(ranked, relevant, k), start=1))
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(set(relevant))) + 1))
    return dcg / ideal


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str], k: int | None = None) -> float:
    """1 / rank of the first relevant id (within the first k if given), 0 if there is none."""
    _check(relevant, k)
    for rank, gain in enumerate(_gains(ranked, relevant, k), start=1):
        if gain:
            return 1.0 / rank
    return 0.0


def query_metrics(ranked: Sequence[str], relevant: Collection[str], ks: Iterable[int] = (10,)) -> dict[str, float]:
    """Every metric for one query: ``p@k``, ``r@k``, ``ndcg@k`` for each k; ``mrr`` over the whole list."""
    relevant = set(relevant)
    out: dict[str, float] = {}
    for k in ks:
        out[f"p@{k}"] = precision_at_k(ranked, relevant, k)
        out[f"r@{k}"] = recall_at_k(ranked, relevant, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, relevant, k)
    out[MRR] = reciprocal_rank(ranked, relevant)
    return out


def summarise(per_query_results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the queries, plus ``n``, their number. Every query needs the same metrics."""
    if not per_query_results:
        return {"n": 0}
    names = sorted(per_query_results[0])
    sums = dict.fromkeys(names, 0.0)
    for index, result in enumerate(per_query_results):
        if sorted(result) != names:
            raise ValueError(f"query {index} has metrics {sorted(result)}, but query 0 has {names}")
        for name in names:
            value = float(result[name])
            if not math.isfinite(value):
                raise ValueError(f"query {index}: metric {name!r} is not a finite number: {result[name]!r}")
            sums[name] += value
    summary: dict[str, float] = {name: sums[name] / len(per_query_results) for name in names}
    summary["n"] = len(per_query_results)
    return summary
