"""The lexical side of search: the BM25 channel, the index's facet vocabulary, exact code lookups.

The ranking steps are pure functions (:func:`relative_scores`, :func:`promote_codes`,
:func:`boost_scores`); :class:`LexicalSide` holds what they need from one store.

- BM25 scores have no background to calibrate against (most random pairs share no word and score
  0), so the channel's 0-1 relevance is each candidate's score relative to the best lexical match
  of the query, as Weaviate's relative score fusion does.
- A code match ranks above everything similarity found: its score is the best other score plus 1,
  plus its CLIP text cosine to the query (clipped to 0-1), so several matches of one code keep an order.
- A facet boost adds ``weight x top score x`` the share of the named facets a hit matches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from indexer import Condition, Filter, SearchRequest, StoreError, VectorStore
from indexer.lexical import LEXICAL, LexicalConfig, LexicalEncoder
from indexer.store import ID_KEY, SparseVector

from .query import Hit, SearchSettings
from .understand import MAX_FACET_VALUES, FacetMatch, Vocabulary

log = logging.getLogger(__name__)

CODE_MATCH = "code match"
ABSENT = "the index has no lexical channel (it was built before it): re-run `lookalike index` to add it"
_NUMERIC = ("integer", "float")
_DEFAULT_ENCODER = LexicalEncoder()  # tells stopwords from words when the index has no lexical channel


@dataclass(frozen=True)
class CodeMatch:
    id: str
    field: str
    value: str
    similarity: float


def relative_scores(scores: np.ndarray) -> np.ndarray:
    """BM25 scores as 0-1 relevance: relative to the best one (all 0 when nothing matched)."""
    top = float(scores.max()) if scores.size else 0.0
    return scores / top if top > 0 else np.zeros_like(scores, dtype=np.float64)


def promote_codes(hits: Sequence[Hit], matches: Sequence[CodeMatch]) -> list[Hit]:
    """Exact code matches first (best similarity first), then the other hits in their order."""
    if not matches:
        return list(hits)
    matched = {m.id for m in matches}
    rest = [h for h in hits if h.id not in matched]
    found = {h.id: h for h in hits if h.id in matched}
    base = max((h.score for h in rest), default=0.0)
    ordered = sorted(matches, key=lambda m: (-m.similarity, m.id))
    promoted = []
    for m in ordered:
        before = found.get(m.id)
        explanation = {
            **(before.explanation if before else {"query": "text"}),
            "ranked_by": CODE_MATCH,
            "code": {"field": m.field, "value": m.value, "products": len(ordered)},
        }
        score = base + 1.0 + min(max(m.similarity, 0.0), 1.0)
        payload = before.payload if before else {}
        promoted.append(Hit(m.id, score, payload, explanation, dict(before.vectors) if before else {}, 1.0))
    return promoted + rest


def boost_scores(scores: Sequence[float], matched: Sequence[float], weight: float) -> list[float]:
    """``score + weight x top x matched`` (``matched``: the share of named facets a hit has, 0-1)."""
    top = max(max(scores, default=0.0), 0.0)
    return [s + weight * top * m for s, m in zip(scores, matched, strict=True)]


class LexicalSide:
    """One store's lexical channel, facet vocabulary and code fields, as the engine uses them."""

    def __init__(self, store: VectorStore, settings: SearchSettings) -> None:
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._vocabulary: Vocabulary | None = None
        self._encoder: LexicalEncoder | None = None
        self._encoder_id: str | None = None

    def refresh(self) -> None:
        with self._lock:
            self._vocabulary = None

    def encoder(self) -> LexicalEncoder | None:
        """The query side of the stored lexical vectors; None when the index has none (or unfilled)."""
        schema = self.store.schema()
        model_id = schema.sparse.get(LEXICAL) if schema else None
        if not model_id:
            return None
        if model_id != self._encoder_id:
            try:
                encoder = LexicalEncoder(LexicalConfig.from_model_id(model_id))
            except ValueError as exc:
                log.warning("lexical channel off: %s", exc)
                return None
            self._encoder, self._encoder_id = encoder, model_id
        return self._encoder

    def searchable(self, text: str) -> bool:
        """Whether ``text`` holds a word to search for: not only stopwords and punctuation."""
        encoder = self.encoder() or _DEFAULT_ENCODER
        return any(c.isalnum() for c in text) and bool(encoder.query(text))

    def query_vector(self, text: str) -> SparseVector | None:
        encoder = self.encoder()
        return (encoder.query(text) or None) if encoder is not None else None

    def vocabulary(self, fields: Mapping[str, str]) -> Vocabulary:
        """Facet values of the index's keyword fields (not codes, not zero-shot tags), read once."""
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = self._read_vocabulary(fields)
            return self._vocabulary

    def _read_vocabulary(self, fields: Mapping[str, str]) -> Vocabulary:
        codes = set(self.settings.code_fields)
        facets = {}
        for name, kind in fields.items():
            if kind != "keyword" or name in codes or name.startswith("tag_"):
                continue
            try:
                values = self.store.facet(name, MAX_FACET_VALUES)
            except StoreError as exc:
                log.warning("no facet values for %r: %s", name, exc)
                continue
            if len(values) < MAX_FACET_VALUES:  # else an identifier, not a facet
                facets[name] = list(values)
        return Vocabulary.build(facets, price_field(fields, self.settings.price_field))

    def find_codes(self, codes: Sequence[str], fields: Mapping[str, str], flt: Filter, vector) -> list[CodeMatch]:
        """Items whose code fields hold one of ``codes`` exactly (and pass ``flt``), scored by the CLIP
        text cosine of ``vector`` to their description: one store call for all code fields."""
        wanted = [(name, _code_condition(name, fields.get(name), codes)) for name in self.settings.code_fields]
        wanted = [(name, cond) for name, cond in wanted if cond is not None]
        if not codes or not wanted:
            return []
        limit = self.settings.code_matches
        requests = [
            SearchRequest(
                "text",
                vector,
                limit,
                Filter((cond, *flt.must), flt.must_not),
                keys=[] if name == "id" else [name],
                ids=None,
            )
            for name, cond in wanted
        ]
        found: dict[str, CodeMatch] = {}
        for (name, _), points in zip(wanted, self.store.search_batch(requests), strict=True):
            for p in points:
                if p.id not in found:
                    value = p.id if name == "id" else _matched_value(p.payload.get(name), codes)
                    found[p.id] = CodeMatch(p.id, name, value, p.score)
        return sorted(found.values(), key=lambda m: (-m.similarity, m.id))[:limit]

    def facet_shares(self, ids: Sequence[str], facets: Sequence[FacetMatch]) -> list[float]:
        """For each item, the share of ``facets`` whose value it has (one payload read for all)."""
        records = {r.id: r.payload for r in self.store.retrieve(list(ids), keys=[f.field for f in facets])}
        shares = []
        for item_id in ids:
            payload = records.get(item_id, {})
            hit = sum(_has(payload.get(f.field), f.values) for f in facets)
            shares.append(hit / len(facets))
        return shares


def boost_facets(side: LexicalSide, hits: list[Hit], facets: Sequence[FacetMatch], weight: float) -> list[Hit]:
    """Hits re-scored with the facet boost, best first; the explanation says what each one matched."""
    if not hits or not facets:
        return hits
    shares = side.facet_shares([h.id for h in hits], facets)
    scores = boost_scores([h.score for h in hits], shares, weight)
    boosted = [
        replace(
            h,
            score=s,
            explanation={
                **h.explanation,
                "ranked_by": f"{h.explanation.get('ranked_by', 'retrieval')} + facet boost",
                "facet_boost": round(s - h.score, 6),
            },
        )
        for h, s in zip(hits, scores, strict=True)
    ]
    return sorted(boosted, key=lambda h: -h.score)


def price_field(fields: Mapping[str, str], configured: str | None) -> str | None:
    """The number field price words filter on: the configured one, else ``price``, else one named *price*."""
    numeric = [name for name, kind in fields.items() if kind in _NUMERIC]
    if configured:
        return configured if configured in numeric else None
    return next((n for n in numeric if n == "price"), None) or next((n for n in numeric if "price" in n), None)


def _code_condition(name: str, kind: str | None, codes: Sequence[str]) -> Condition | None:
    if name == "id":
        return Condition(ID_KEY, "in", list(codes))
    if kind == "keyword":
        return Condition(name, "in", list(codes))
    if kind == "integer":
        numbers = sorted({int(c) for c in codes if c.isdigit()})
        return Condition(name, "in", numbers) if numbers else None
    return None


def _matched_value(stored, codes: Sequence[str]) -> str:
    values = stored if isinstance(stored, list) else [stored]
    wanted = set(codes)
    return next((str(v) for v in values if str(v) in wanted), str(values[0]) if values else "")


def _has(stored, values: Sequence[str]) -> bool:
    got = stored if isinstance(stored, list) else [stored]
    return any(v in values for v in got)
