"""The re-rank stage: a Reranker protocol, the offline ``clip`` attribute check, and a time budget.

``clip`` checks the attributes a query states ("red striped dress" -> colour red, pattern striped,
category dress) zero-shot against each candidate's image vector, using the index's tag vocabulary,
and blends the mean probability of the stated labels into the score. ``vlm`` asks a vision-language
model and is provided by the vlm package.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Protocol

import numpy as np

from .composed import find_attribute, label_probs
from .query import Hit, Query

log = logging.getLogger(__name__)

LabelSets = Sequence[tuple[str, tuple[str, ...], np.ndarray]]


class RerankError(RuntimeError):
    """A re-ranker that cannot run (not configured, or failed)."""


class Reranker(Protocol):
    name: str

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]:
        """Return the same hits, re-scored and re-ordered."""


class NoReranker:
    name = "none"

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]:
        return hits


class ClipReranker:
    """Zero-shot check of the query's stated attributes; cheap and offline."""

    name = "clip"

    def __init__(self, label_sets: LabelSets, scale: float, blend: float = 0.5):
        self.label_sets = list(label_sets)
        self.scale = scale
        self.blend = blend

    def stated(self, text: str) -> list:
        found = []
        for label_set in self.label_sets:
            attribute = find_attribute(text, [label_set])
            if attribute is not None:
                found.append(attribute)
        return found

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]:
        attributes = self.stated(query.text or "") if self.label_sets else []
        if not attributes or not hits:
            return hits
        images = np.stack([h.vectors["image"] for h in hits])
        per_attr = {a.name: label_probs(images, a, self.scale) for a in attributes}
        out = []
        for i, hit in enumerate(hits):
            checks = {name: round(float(p[i]), 4) for name, p in per_attr.items()}
            agreement = float(np.mean(list(checks.values())))
            score = (1 - self.blend) * retrieval_relevance(hit) + self.blend * agreement
            explanation = {
                **hit.explanation,
                "rerank": {
                    "method": "clip",
                    "stated": {a.name: a.labels[a.target] for a in attributes},
                    "probabilities": checks,
                    "before": round(hit.score, 6),
                },
                "ranked_by": "clip re-rank",
            }
            out.append(replace(hit, score=score, explanation=explanation))
        out.sort(key=lambda h: -h.score)
        return out


_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rerank")


def rerank_with_budget(reranker: Reranker, query: Query, hits: list[Hit], top_n: int, budget_s: float) -> list[Hit]:
    """Re-rank the top ``top_n`` within ``budget_s``; on timeout or error keep the retrieval order."""
    if isinstance(reranker, NoReranker) or not hits:
        return hits
    head, tail = hits[:top_n], hits[top_n:]
    started = time.perf_counter()
    future = _pool.submit(reranker.rerank, query, list(head))
    try:
        ranked = future.result(timeout=budget_s)
    except FutureTimeout:
        log.warning("re-ranker %s exceeded its %.1fs budget; keeping retrieval order", reranker.name, budget_s)
        return _mark(hits, reranker.name, "timeout")
    except Exception as exc:
        log.warning("re-ranker %s failed (%s); keeping retrieval order", reranker.name, exc)
        return _mark(hits, reranker.name, f"error: {exc}")
    log.info("re-ranked %d hits with %s in %.3fs", len(head), reranker.name, time.perf_counter() - started)
    return ranked + _below(tail, ranked, reranker.name, top_n)


def retrieval_relevance(hit: Hit) -> float:
    """The 0-1 retrieval figure a re-ranker blends with: the calibrated relevance, else the score."""
    return hit.score if hit.relevance is None else hit.relevance


def _below(tail: list[Hit], ranked: list[Hit], name: str, top_n: int) -> list[Hit]:
    """Hits past the re-ranked head keep their order, on the re-ranker's scale and never above the head,
    so the whole list stays ordered by its scores."""
    floor = min((h.score for h in ranked), default=math.inf)
    out = []
    for hit in tail:
        floor = min(floor, retrieval_relevance(hit))
        note = {"method": name, "not_reranked": f"past the top {top_n}", "before": round(hit.score, 6)}
        out.append(replace(hit, score=floor, explanation={**hit.explanation, "rerank": note}))
    return out


def _mark(hits: list[Hit], name: str, status: str) -> list[Hit]:
    return [replace(h, explanation={**h.explanation, "rerank": {"method": name, "fallback": status}}) for h in hits]


RerankerFactory = Callable[[], Reranker]
