"""SearchEngine: encode a query, search each named vector in the store, fuse, calibrate, re-rank."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer import (
    Condition,
    Filter,
    IndexManifest,
    Models,
    SearchRequest,
    TagVocab,
    VectorStore,
    build_models,
    open_store,
)
from indexer.lexical import LEXICAL
from indexer.store import ID_KEY, PHOTOS_KEY
from indexer.tags import label_embeddings

from .calibration import Calibration, combine
from .collapse import CollapseRules, collapse
from .composed import (
    ComposedWeights,
    TextSide,
    arithmetic_query,
    composed_scores,
    find_attribute,
    image_space_query,
    label_means,
)
from .fusion import FusedHit, fuse, penalise
from .index_calibration import CALIBRATION_FILE, load_or_fit_calibration, sample_records
from .lexical import ABSENT, LexicalSide, boost_facets, promote_codes, relative_scores
from .photos import (
    PHOTOS,
    calibration_channel,
    nearest_photos,
    photo_vector,
    searches_photos,
    shown_margin,
    stored_name,
    with_best_photos,
)
from .query import Hit, Query, QueryError, SearchResult, SearchSettings
from .rerank import ClipReranker, NoReranker, Reranker, RerankerFactory, RerankError, rerank_with_budget
from .text_cache import TextVectors
from .understand import QueryParser, Understood, understand

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_FILE", "SearchEngine", "sample_records"]

# channel -> (query modality, stored vector): a text query against image vectors is "text>image".
CHANNELS = {
    "text": {"image": "text>image", "text": "text>text", "semantic": "semantic>semantic"},
    "image": {"image": "image>image", "text": "image>text"},
    # "more like this" on a catalog item: its own stored vectors, each against its own kind.
    "item": {"image": "image>image", "text": "text>text", "semantic": "semantic>semantic"},
}


class SearchEngine:
    """Search over one index. Thread-safe for concurrent queries."""

    def __init__(
        self,
        settings: SearchSettings,
        store: VectorStore | None = None,
        models: Models | None = None,
        rerankers: dict[str, RerankerFactory] | None = None,
        parsers: dict[str, QueryParser] | None = None,
    ):
        self.settings = settings
        manifest = IndexManifest.load(settings.data_dir)
        if store is None or models is None:
            if manifest is None:
                raise QueryError(f"no index in {settings.data_dir}: run `lookalike index CATALOG` first")
        self.store = store or open_store(manifest.store, settings.server_access())
        vocab = manifest.tag_vocab() if manifest else None
        if models is None:
            models = build_models(
                manifest.clip_model, manifest.text_model, settings.torch_device(), options=settings.encoder_options()
            )
        self.models = models
        self.texts = TextVectors(models, settings.query_cache_size)
        if vocab is None and models.tagger is not None:
            vocab = models.tagger.vocab
        self.scale = float(getattr(models.clip, "logit_scale", 100.0))
        self.label_sets = [(s.name, s.labels, label_embeddings(models.clip, s)) for s in vocab.sets] if vocab else []
        self.fields = dict(self.store.payload_indexes())
        self.lexical = LexicalSide(self.store, settings)
        self._parsers: dict[str, QueryParser] = {"rules": understand, **(parsers or {})}
        self._calibration: dict[str, Calibration] | None = None
        self._means: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._rerankers: dict[str, RerankerFactory] = {
            "none": NoReranker,
            "clip": lambda: ClipReranker(self.label_sets, self.scale),
            **(rerankers or {}),
        }

    def close(self) -> None:
        self.store.close()

    def refresh(self, vocab: TagVocab | None = None) -> None:
        """Pick up what an index run changed: new payload fields, new tags, and items to recalibrate on."""
        label_sets = [(s.name, s.labels, label_embeddings(self.models.clip, s)) for s in vocab.sets] if vocab else None
        with self._lock:
            self.fields = dict(self.store.payload_indexes())
            if label_sets is not None:
                self.label_sets = label_sets
            self._calibration = None
            self._means = None
        self.lexical.refresh()

    # -- public API -----------------------------------------------------------------------------

    def search(self, query: Query) -> list[Hit]:
        return self.run(query).hits

    def run(self, query: Query) -> SearchResult:
        """The hits, what a text query's words were read as, and notes for the person asking."""
        self._check(query)
        lexical_off = query.kind == "text" and self.settings.lexical_weight > 0 and self.lexical.encoder() is None
        notes = [ABSENT] if lexical_off else []
        understood = self.understand(query)
        if understood is None:
            return SearchResult(self._search(query), None, notes)
        narrowing = understood.conditions(facets=self.settings.facet_mode == "filter")
        narrowed = replace(
            query, text=understood.text, filters=Filter((*query.filters.must, *narrowing), query.filters.must_not)
        )
        hits = self._search(narrowed, understood, query.filters)
        if not hits and narrowing:
            understood = understood.with_note(
                f"nothing matches {understood.summary()}: searched the words as typed", fell_back=True
            )
            hits = self._search(query)
        return SearchResult(hits, understood, notes)

    def understand(self, query: Query) -> Understood | None:
        """What a text query's words mean in this index (None: searched as typed, by asking or setting)."""
        if query.literal or query.kind != "text" or self.settings.query_parser == "off":
            return None
        vocabulary = self.lexical.vocabulary(self.fields)
        parser = self._parsers.get(self.settings.query_parser)
        if parser is None:
            missing = f"query parser {self.settings.query_parser!r} is not available here: read by the rules"
            return understand(query.text or "", vocabulary).with_note(missing)
        return parser(query.text or "", vocabulary)

    def _search(
        self, query: Query, understood: Understood | None = None, code_filter: Filter | None = None
    ) -> list[Hit]:
        reranker = self._reranker(query.rerank)
        flt = query.filters
        codes = []
        reference: dict[str, np.ndarray] = {}
        if query.like is not None:
            reference = self._stored_vectors(query.like, query.photo)
            flt = Filter(flt.must, (*flt.must_not, Condition(ID_KEY, "eq", query.like)))
        elif query.image is not None:
            reference = {"image": self.models.clip.encode_images([query.image])[0]}
        # The image channel's query vector: a hit shows the photo nearest to it.
        photo_query = reference.get("image")
        if query.kind == "composed":
            hits = self._composed(query, reference, flt)
        elif query.like is not None:
            hits = self._fused(query, "item", reference, flt)
        elif query.kind == "image":
            hits = self._fused(query, "image", {"image": reference["image"], "text": reference["image"]}, flt)
        else:
            text_vec, semantic = self.texts.both(query.text)
            photo_query = text_vec
            vectors = {"image": text_vec, "text": text_vec, "semantic": semantic}
            if (sparse := self.lexical.query_vector(query.text)) is not None:
                vectors[LEXICAL] = sparse
            hits = self._fused(query, "text", vectors, flt)
            if understood is not None:
                if understood.facets and self.settings.facet_mode == "boost":
                    hits = boost_facets(self.lexical, hits, understood.facets, self.settings.facet_boost)
                codes = self.lexical.find_codes(understood.codes, self.fields, code_filter or Filter(), text_vec)
        if query.negative:
            hits = self._apply_negative(hits, query.negative)
        hits = promote_codes(hits, codes)
        top_n = self.settings.rerank_top_n
        need = max(query.offset + query.k, 0 if isinstance(reranker, NoReranker) else top_n)
        rules = CollapseRules(
            self.settings.dedup_threshold if query.dedup else None, self.settings.group_field if query.group else None
        )
        hits = collapse(hits, need, self._materialise, rules)
        hits = with_best_photos(hits[:need], photo_query, self._shown_margin(query)) + hits[need:]
        hits = rerank_with_budget(reranker, query, hits, top_n, self.settings.rerank_budget_s)
        if query.min_score is not None:
            hits = [h for h in hits if h.score >= query.min_score]
        return hits[query.offset : query.offset + query.k]

    def get(self, item_id: str) -> Hit | None:
        found = self.store.retrieve([item_id])
        return Hit(found[0].id, 1.0, found[0].payload, {}) if found else None

    def similar(self, item_id: str, k: int = 10, filters: Filter | None = None, photo: int | None = None) -> list[Hit]:
        return self.search(Query(like=item_id, k=k, filters=filters or Filter(), photo=photo))

    def attribute_means(self) -> dict[str, np.ndarray]:
        """Per label set with zero-shot tags in the payload: the mean image vector of each label."""
        with self._lock:
            if self._means is None:
                self._means = {}
                if self.label_sets:
                    records = sample_records(self.store, self.settings.calibration_sample)
                    if records:
                        images = np.stack([r.vectors["image"] for r in records])
                        for name, labels, _ in self.label_sets:
                            tags = [str(r.payload.get(f"tag_{name}", "")) for r in records]
                            self._means[name] = label_means(images, tags, labels)
            return self._means

    def calibration(self) -> dict[str, Calibration]:
        """Per-channel calibration, fitted on the index and cached next to it."""
        with self._lock:
            if self._calibration is None:
                self._calibration = load_or_fit_calibration(
                    self.store, Path(self.settings.data_dir), self.settings.calibration_sample
                )
            return self._calibration

    # -- query kinds ----------------------------------------------------------------------------

    def _fused(self, query: Query, modality: str, vectors: dict[str, np.ndarray], flt: Filter) -> list[Hit]:
        weights = self._channel_weights(query, modality)
        pool = max(self.settings.candidates, query.k + query.offset)
        names = [name for name, weight in weights.items() if weight > 0 and name in vectors]
        # One store call: each channel's top `pool` and every candidate's exact score on every channel.
        # Ids and scores only: making stored vectors and payloads into Python objects costs more than
        # the searches; the page's payloads and image vectors are fetched at the end.
        photos = self._photos()
        found = self.store.search_union({stored_name(n, photos): vectors[n] for n in names}, pool, flt)
        union = {n: found[stored_name(n, photos)] for n in names}
        if not names or not union[names[0]]:
            return []
        channels = {n: [(p.id, p.score) for p in union[n][:pool]] for n in names}
        ids = [p.id for p in union[names[0]]]
        scored = {n: {p.id: p.score for p in union[n]} for n in names}
        exact = {n: np.array([scored[n].get(i, 0.0) for i in ids]) for n in names}
        relevance = {name: self._relevance(modality, name, exact[name]) for name in channels}
        method = query.fusion or self.settings.fusion
        if method == "calibrated":
            fused = fuse(method, {n: list(zip(ids, relevance[n].tolist(), strict=True)) for n in channels}, weights)
        else:
            fused = fuse(method, channels, weights)
        index = {item_id: i for i, item_id in enumerate(ids)}
        ranks = {name: {item_id: r for r, (item_id, _) in enumerate(rows, 1)} for name, rows in channels.items()}
        hits = []
        for f in fused:
            i = index[f.id]
            per_channel = {
                name: {
                    "raw": round(float(exact[name][i]), 4),
                    "rank": ranks[name].get(f.id),
                    "calibrated": round(float(relevance[name][i]), 4),
                    "weight": round(weights[name], 4),
                }
                for name in channels
            }
            # The list is ordered by the fused score, so that is the score; the calibrated relevance
            # stays beside it, on the 0-1 scale re-rankers blend with.
            rel = combine({n: float(relevance[n][i]) for n in channels}, weights)
            explanation = {
                "query": modality,
                "ranked_by": method,
                "fusion": method,
                "fused": round(f.score, 6),
                "relevance": round(rel, 4),
                "channels": per_channel,
            }
            hits.append(Hit(f.id, f.score, {}, explanation, relevance=rel))
        return hits

    def _relevance(self, modality: str, name: str, raw: np.ndarray) -> np.ndarray:
        """A channel's scores as 0-1 relevance: calibrated cosines; lexical: relative to its best match."""
        if name == LEXICAL:
            return relative_scores(raw)
        cal = self.calibration()
        # Too small an index to calibrate on: raw cosines, floored at 0 like a calibrated relevance.
        channel = calibration_channel(CHANNELS[modality][name], self._photos())
        return cal[channel].apply(raw) if cal else np.clip(raw, 0.0, 1.0)

    def _scores(self, vector_name: str, vector: np.ndarray, ids: list[str]) -> np.ndarray:
        """Cosine of ``vector`` to each item's stored ``vector_name`` vector, computed in the store."""
        (points,) = self.store.search_batch([SearchRequest(vector_name, vector, len(ids), ids=ids, keys=[])])
        found = {p.id: p.score for p in points}
        return np.array([found.get(i, 0.0) for i in ids])

    def _materialise(self, hits: list[Hit], upto: int) -> list[Hit]:
        """The first ``upto`` hits with their payload and image vector (fetched once, in one call)."""
        lacking = [h for h in hits[:upto] if not h.payload or "image" not in h.vectors]
        if not lacking:
            return hits
        # Composed hits already hold their image vectors: then only the payloads are fetched.
        vectors = ["image", PHOTOS] if self._photos() else ["image"]
        vectors = vectors if any("image" not in h.vectors for h in lacking) else False
        records = {r.id: r for r in self.store.retrieve([h.id for h in lacking], with_vectors=vectors)}
        out = []
        for h in hits[:upto]:
            r = records.get(h.id)
            if r is not None:
                out.append(replace(h, payload=r.payload, vectors={**h.vectors, **r.vectors}))
            elif h.payload and "image" in h.vectors:
                out.append(h)
            # else: deleted since it was found
        return out + hits[upto:]

    def _composed(self, query: Query, ref_vectors: dict[str, np.ndarray], flt: Filter) -> list[Hit]:
        reference = ref_vectors["image"]
        modifier = self.texts.clip(query.text)
        attribute = find_attribute(query.text, self.label_sets)
        arithmetic = arithmetic_query(reference, modifier, attribute)
        method = query.composed_method or self.settings.composed_method
        means = self.attribute_means().get(attribute.name) if attribute else None
        moved = image_space_query(reference, attribute, means) if method != "arithmetic" and means is not None else None
        if method == "arithmetic":
            probes = [arithmetic]
        elif moved is not None:
            # The reference moved among images finds what the cross-modal probes (arithmetic, modifier)
            # would: on the demo eval, dropping them changes no P@10, and halves the candidates.
            probes = [reference, moved]
        else:
            probes = [arithmetic, reference, modifier]
        pool = max(self.settings.composed_candidates // len(probes), query.k + query.offset)
        # The probes bring the vectors the scoring reads: one store call, and candidates found by
        # several probes cost a few repeated vectors rather than a second fetch of all of them.
        photos = self._photos()
        image = stored_name("image", photos)
        read = [image] if method == "arithmetic" else [image, "text"]
        requests = [SearchRequest(image, vec, pool, flt, with_vectors=read, keys=[]) for vec in probes]
        found = {p.id: p for points in self.store.search_batch(requests) for p in points}
        ids = list(found)
        if not ids:
            return []
        vectors = nearest_photos([found[i] for i in ids], image, reference)
        images = np.stack([v["image"] for v in vectors])
        cal = self.calibration()
        ref_raw, mod_raw = images @ reference, images @ modifier
        ref_rel = cal[calibration_channel("image>image", photos)].apply(ref_raw) if cal else ref_raw
        mod_rel = cal["text>image"].apply(mod_raw) if cal else mod_raw
        if method == "arithmetic":
            order_score = images @ arithmetic
            parts: dict[str, np.ndarray] = {"arithmetic": order_score}
        else:
            kept = [vectors for name, _, vectors in self.label_sets if attribute is None or name != attribute.name]
            text = self._text_side(ref_vectors, [found[i] for i in ids], flt)
            scores = composed_scores(
                reference, images, modifier, attribute, ComposedWeights(), self.scale, means, kept, text
            )
            order_score = scores.score
            parts = {"structure": scores.structure, "modifier": scores.modifier}
            if scores.verify is not None:
                parts["verify"] = scores.verify
        # Every candidate gets its explanation: rounded as whole arrays, which per-value round()
        # calls over a few hundred candidates made a visible part of the query.
        relevance = (0.5 * ref_rel + 0.5 * mod_rel).tolist()
        score = order_score.tolist()
        fused, ref_raw, ref_rel, mod_raw, mod_rel = (
            _rounded(v) for v in (order_score, ref_raw, ref_rel, mod_raw, mod_rel)
        )
        shown_parts = {k: _rounded(v) for k, v in parts.items()}
        asked = {attribute.name: attribute.labels[attribute.target]} if attribute else None
        hits = []
        for i in np.argsort(-order_score, kind="stable").tolist():
            explanation = {
                "query": "composed",
                "ranked_by": f"composed {method}",
                "method": method,
                "relevance": round(relevance[i], 4),
                "attribute": dict(asked) if asked else None,
                "fused": fused[i],
                "parts": {k: v[i] for k, v in shown_parts.items()},
                "channels": {
                    "image": {"raw": ref_raw[i], "calibrated": ref_rel[i]},
                    "modifier": {"raw": mod_raw[i], "calibrated": mod_rel[i]},
                },
            }
            hits.append(Hit(ids[i], score[i], {}, explanation, vectors[i], relevance[i]))
        return hits

    def _apply_negative(self, hits: list[Hit], negative: str) -> list[Hit]:
        if not hits:
            return hits
        neg = self.texts.clip(negative)
        raw = self._scores("image", neg, [h.id for h in hits])
        cal = self.calibration()
        similarity = cal["text>image"].apply(raw) if cal else raw
        # penalise works on one scale: scores are divided by the top one to meet calibrated similarity,
        # and multiplied back after, so the penalised score keeps the method's own scale (and order).
        top = max(max(h.score for h in hits), 1e-12)
        kept = penalise(
            [FusedHit(h.id, h.score / top, {}) for h in hits],
            {h.id: float(s) for h, s in zip(hits, similarity, strict=True)},
            self.settings.negative_weight,
            self.settings.negative_threshold,
        )
        by_id = {h.id: h for h in hits}
        out = []
        for f in kept:
            h = by_id[f.id]
            explanation = {
                **h.explanation,
                "ranked_by": f"{h.explanation.get('ranked_by', 'retrieval')} - negative penalty",
                "negative": {
                    "text": negative,
                    "similarity": round(f.negative or 0, 4),
                    "penalty": round(f.penalty * top, 6),
                },
            }
            relevance = None if h.relevance is None else max(h.relevance - f.penalty, 0.0)
            out.append(replace(h, score=f.score * top, explanation=explanation, relevance=relevance))
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _check(self, query: Query) -> None:
        if not (query.text and query.text.strip()) and query.image is None and query.like is None:
            raise QueryError("empty query: give text, an image, or an item id to search like")
        if query.kind == "text" and not self.lexical.searchable(query.text or ""):
            raise QueryError(
                f"nothing to search for in “{query.text.strip()[:80]}”: it holds only stopwords and punctuation; "
                "give other words, a product code, or a photo"
            )
        if query.image is not None and query.like is not None:
            raise QueryError("give either an image or an item id (like), not both")
        if query.photo is not None and query.like is None:
            raise QueryError("photo picks one of the photos of the item searched like: give like as well")
        if not 1 <= query.k <= self.settings.max_k:
            raise QueryError(f"k must be between 1 and {self.settings.max_k}, got {query.k}")
        if query.offset < 0 or query.offset + query.k > self.settings.candidates * 10:
            raise QueryError(f"offset must be between 0 and {self.settings.candidates * 10 - query.k}")
        if query.min_score is not None and not math.isfinite(query.min_score):
            raise QueryError(f"min_score must be a finite number, got {query.min_score}")
        if query.weights:
            bad = {k: v for k, v in query.weights.items() if k not in {"image", "text", LEXICAL} or not v >= 0}
            if bad or not sum(query.weights.values()) > 0:
                raise QueryError(
                    f"weights take image=W,text=W,lexical=W with W >= 0 and a positive sum, got {query.weights}"
                )

    def _reranker(self, name: str) -> Reranker:
        factory = self._rerankers.get(name)
        if factory is None:
            raise QueryError(f"unknown re-ranker {name!r}; choose one of {sorted(self._rerankers) + ['vlm']}")
        try:
            return factory()
        except RerankError as exc:
            raise QueryError(str(exc)) from exc

    def _channel_weights(self, query: Query, modality: str) -> dict[str, float]:
        w = {
            "image": self.settings.image_weight,
            "text": self.settings.text_weight,
            LEXICAL: self.settings.lexical_weight,
            **(query.weights or {}),
        }
        if modality == "image":
            return {"image": w["image"], "text": w["text"]}
        share = self.settings.semantic_share
        out = {"image": w["image"], "text": w["text"] * (1 - share), "semantic": w["text"] * share}
        return {**out, LEXICAL: w[LEXICAL]} if modality == "text" else out

    def _stored_vectors(self, item_id: str, photo: int | None = None) -> dict[str, np.ndarray]:
        """The item's stored vectors; with ``photo``, that photo's vector as its image vector."""
        keys = [] if photo is None else ["image", "images", PHOTOS_KEY]
        found = self.store.retrieve([item_id], with_vectors=True, keys=keys)
        if not found:
            raise QueryError(f"unknown item id {item_id!r}")
        vectors = dict(found[0].vectors)
        vectors.pop(PHOTOS, None)
        if photo is not None:
            vectors["image"] = photo_vector(found[0], photo)
        return vectors

    def _photos(self) -> bool:
        return searches_photos(self.store.schema(), self.settings.all_photos)

    def _shown_margin(self, query: Query) -> float:
        return shown_margin(self.calibration(), "text>photos" if query.kind == "text" else "image>photos")

    def _text_side(self, reference: dict[str, np.ndarray], candidates: list, flt: Filter) -> TextSide | None:
        """The reference's description vector (its own, else its nearest images' mean) and the candidates'."""
        texts = np.stack([p.vectors["text"] for p in candidates])
        if "text" in reference:
            return TextSide(reference["text"], texts)
        n = self.settings.composed_neighbours
        request = SearchRequest("image", reference["image"], n, flt, with_vectors=["text"], keys=[])
        near = self.store.search_batch([request])[0] if n else []
        if not near:
            return None
        # Weighted like a zero-shot softmax, so an upload that is (nearly) a catalog photo takes that
        # item's own description, while a new photo gets the blend of its neighbours'.
        sims = np.array([p.score for p in near]) * self.scale
        w = np.exp(sims - sims.max())
        mean = (w / w.sum()) @ np.stack([p.vectors["text"] for p in near])
        return TextSide(mean / max(float(np.linalg.norm(mean)), 1e-12), texts, borrowed=True)


def _rounded(values: np.ndarray) -> list[float]:
    """Explanation figures: 4 decimals, as Python floats."""
    return np.round(values, 4).tolist()
