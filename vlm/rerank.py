"""The ``vlm`` re-ranker: a VLM scores each candidate 0-10 against the query; the score is blended in.

Candidates go out in chunks (``LOOKALIKE_VLM_RERANK_CHUNK`` per request, with their images), and
the chunks run concurrently, so a re-rank takes about as long as one request, not one per
candidate. Whatever does not come back in time, or comes back unreadable, keeps its retrieval
score; if nothing usable comes back the retrieval order stands. Every outcome is logged and
recorded in the hit's explanation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from PIL import Image

from indexer import ImageError, ImagePolicy, Settings, WeightsMissing
from indexer.images import load_image
from search import Hit, Query, RerankError
from search.rerank import retrieval_relevance

from .core import VLM, Message, VLMError, VLMReply, VLMTimeout
from .factory import vlm_from_settings
from .parsing import Judgement, parse_scores
from .settings import VLMSettings

log = logging.getLogger(__name__)

RERANK_SYSTEM = (
    "You judge how well catalog products match a shopper's search. Score every candidate from 0 "
    "(unrelated) to 10 (exactly what was asked for), using its image and details. Reply with JSON "
    'only, no other text: {"scores": [{"id": "<candidate id>", "score": <0-10>, "reason": "<at most '
    '12 words>"}]}'
)
MAX_TITLE_CHARS = 120

Lookup = Callable[[str], Hit | None]


class VLMReranker:
    name = "vlm"

    def __init__(
        self, vlm: VLM, settings: VLMSettings, policy: ImagePolicy | None = None, lookup: Lookup | None = None
    ):
        self.vlm = vlm
        self.settings = settings
        self.policy = policy or ImagePolicy.from_settings(settings)
        self.lookup = lookup  # item id -> Hit, for "more like this" queries
        self._loader = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vlm-images")

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        started = time.perf_counter()
        budget = self.settings.vlm_rerank_budget_s
        reference = self._reference(query)
        per_call = max(1, min(self.settings.vlm_rerank_chunk, self.vlm.max_images - (reference is not None)))
        images = list(self._loader.map(self._image, hits))
        chunks = [list(range(i, min(i + per_call, len(hits)))) for i in range(0, len(hits), per_call)]
        conversations = [self._conversation(query, reference, [(hits[i], images[i]) for i in c]) for c in chunks]
        remaining = max(0.0, budget - (time.perf_counter() - started))
        replies = self.vlm.generate_many(conversations, self.settings.vlm_rerank_max_tokens, budget_s=remaining)
        judged: dict[str, Judgement] = {}
        outcome: dict[str, str] = {}
        for chunk, reply in zip(chunks, replies, strict=True):
            ids = [hits[i].id for i in chunk]
            status = self._read(reply, ids, judged)
            for item_id in ids:
                outcome[item_id] = "scored" if item_id in judged else status
        elapsed = time.perf_counter() - started
        if not judged:
            log.warning(
                "vlm re-rank of %d candidates gave no usable scores (%s); keeping retrieval order",
                len(hits),
                ", ".join(sorted(set(outcome.values()))),
            )
            return [_explain(h, {"method": "vlm", "fallback": outcome[h.id]}) for h in hits]
        log.info("vlm re-ranked %d/%d candidates in %.2fs (%d requests)", len(judged), len(hits), elapsed, len(chunks))
        weight = self.settings.vlm_rerank_weight
        out = []
        for hit in hits:
            judgement = judged.get(hit.id)
            retrieval = retrieval_relevance(hit)
            if judgement is None:
                # Unjudged, it keeps its retrieval relevance: the scale the judged ones are blended on.
                info = {"method": "vlm", "fallback": outcome[hit.id], "before": round(hit.score, 6)}
                out.append(_explain(replace(hit, score=retrieval), info, "vlm re-rank"))
                continue
            info = {
                "method": "vlm",
                "vlm_score": judgement.score,
                "reason": judgement.reason,
                "weight": weight,
                "before": round(hit.score, 6),
            }
            out.append(_explain(replace(hit, score=blend(retrieval, judgement.score, weight)), info, "vlm re-rank"))
        out.sort(key=lambda h: -h.score)
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _read(self, reply: VLMReply | VLMError, ids: list[str], judged: dict[str, Judgement]) -> str:
        if isinstance(reply, VLMError):
            log.warning("vlm re-rank request failed: %s", reply)
            return "timeout" if isinstance(reply, VLMTimeout) else f"error: {reply}"
        scores = parse_scores(reply.text, ids)
        if not scores:
            log.warning("vlm re-rank reply is not usable JSON scores; keeping retrieval order: %r", reply.text[:200])
            return "invalid reply"
        judged.update(scores)
        if len(scores) < len(ids):
            log.info("vlm re-rank reply scored %d of %d candidates", len(scores), len(ids))
        return "not scored"

    def _reference(self, query: Query) -> Image.Image | None:
        if query.image is not None:
            return query.image
        if query.like is not None and self.lookup is not None:
            hit = self.lookup(query.like)
            return self._image(hit) if hit is not None else None
        return None

    def _image(self, hit: Hit) -> Image.Image | None:
        source = hit.payload.get("image")
        if not source:
            return None
        try:
            return load_image(str(source), self.policy)[0]
        except ImageError as exc:
            log.warning("candidate %s: image not sent to the VLM: %s", hit.id, exc)
            return None

    def _conversation(
        self, query: Query, reference: Image.Image | None, candidates: list[tuple[Hit, Image.Image | None]]
    ) -> list[Message]:
        parts: list[str | Image.Image] = []
        if query.text:
            parts.append(f"Search: {query.text}")
        if reference is not None:
            change = " changed as the search says" if query.text else ""
            parts += [f"Reference image (the shopper wants products like this{change}):", reference]
        if query.negative:
            parts.append(f"Not wanted: {query.negative}")
        for hit, image in candidates:
            title = str(hit.payload.get("title") or "")[:MAX_TITLE_CHARS]
            parts.append(f"Candidate [{hit.id}]: {title}" + ("" if image is not None else " (no image)"))
            if image is not None:
                parts.append(image)
        ids = ", ".join(h.id for h, _ in candidates)
        parts.append(f"Score all {len(candidates)} candidates ({ids}). JSON only.")
        return [Message.system(RERANK_SYSTEM), Message.user(*parts)]


def blend(retrieval: float, vlm_score: float, weight: float) -> float:
    """Retrieval relevance (0-1) and a VLM score (0-10) on one 0-1 scale."""
    return (1 - weight) * retrieval + weight * vlm_score / 10.0


def _explain(hit: Hit, info: dict, ranked_by: str | None = None) -> Hit:
    explanation = {**hit.explanation, "rerank": info}
    if ranked_by:
        explanation["ranked_by"] = ranked_by
    return replace(hit, explanation=explanation)


def vlm_reranker(settings: Settings, lookup: Lookup | None = None) -> Callable[[], VLMReranker]:
    """A re-ranker factory for ``SearchEngine(rerankers={"vlm": ...})``; the VLM is made once, on first use.

    Raises ``RerankError`` naming LOOKALIKE_VLM when no VLM is configured.
    """
    made: list[VLMReranker] = []
    lock = threading.Lock()

    def factory() -> VLMReranker:
        with lock:
            if not made:
                vlm_settings = (
                    settings if isinstance(settings, VLMSettings) else VLMSettings(data_dir=settings.data_dir)
                )
                try:
                    vlm = vlm_from_settings(vlm_settings, "--rerank vlm", vlm_settings.torch_device())
                except WeightsMissing:
                    raise  # not a bad query: the server lacks a model (the API answers 503)
                except VLMError as exc:
                    raise RerankError(str(exc)) from None
                made.append(VLMReranker(vlm, vlm_settings, lookup=lookup))
            return made[0]

    return factory
