"""vary: product image + edit text -> N variants -> scores -> the nearest real products of each."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from indexer import Condition, Filter
from indexer.store import ID_KEY
from search import Hit, Query, SearchEngine

from .cache import VariantCache, cache_key
from .generator import Generated, Generator, VaryRequest, image_digest

log = logging.getLogger(__name__)


@dataclass
class VariantResult:
    index: int
    seed: int | None
    image: Image.Image = field(repr=False)
    path: Path | None  # where the cache keeps it
    flagged: bool  # withheld by the safety checker: not scored, not searched
    clip_text: float | None  # cosine between the variant and the edit text (the index's CLIP)
    source_similarity: float | None  # cosine between the variant and the source image: 1 = no change
    lookalikes: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "path": str(self.path) if self.path else None,
            "size": list(self.image.size),
            "flagged": self.flagged,
            "clip_text": _round(self.clip_text),
            "source_similarity": _round(self.source_similarity),
            "lookalikes": [h.to_dict() for h in self.lookalikes],
        }


@dataclass
class VaryResult:
    text: str
    settings: dict[str, Any]
    cached: bool
    seconds: float
    variants: list[VariantResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            "variants": [v.to_dict() for v in self.variants],
        }


def vary(
    generator: Generator,
    request: VaryRequest,
    engine: SearchEngine | None = None,
    cache: VariantCache | None = None,
    k: int = 5,
    exclude_id: str | None = None,
) -> VaryResult:
    """Generate (or fetch from the cache) the variants of ``request``, then score and search each one.

    Without an engine the variants come back unscored and without lookalikes. ``exclude_id`` keeps the source
    product itself out of its variants' lookalikes.
    """
    start = time.perf_counter()
    description = generator.describe(request)  # also refuses requests over the caps
    key = cache_key(image_digest(request.image), description)
    found = cache.get(key) if cache else None
    if found is not None:
        log.info("variants served from the cache (%s)", key[:12])
        generated = [g for g, _ in found]
        paths: list[Path | None] = [p for _, p in found]
    else:
        generated = generator.generate(request)
        paths = list(cache.put(key, generated, description)) if cache else [None] * len(generated)
    variants = _score_and_search(generated, paths, request, engine, k, exclude_id)
    return VaryResult(request.text, description, found is not None, time.perf_counter() - start, variants)


def _score_and_search(
    generated: list[Generated],
    paths: list[Path | None],
    request: VaryRequest,
    engine: SearchEngine | None,
    k: int,
    exclude_id: str | None,
) -> list[VariantResult]:
    shown = [i for i, g in enumerate(generated) if not g.flagged]
    clip_text: dict[int, float] = {}
    source_sim: dict[int, float] = {}
    lookalikes: dict[int, list[Hit]] = {}
    if engine is not None and shown:
        clip = engine.models.clip
        vectors = clip.encode_images([generated[i].image for i in shown])
        text_vec = clip.encode_texts([request.text])[0]
        source_vec = clip.encode_images([request.image.convert("RGB")])[0]
        flt = Filter(must_not=(Condition(ID_KEY, "eq", exclude_id),)) if exclude_id else Filter()
        for row, i in enumerate(shown):
            clip_text[i] = float(vectors[row] @ text_vec)
            source_sim[i] = float(vectors[row] @ source_vec)
            lookalikes[i] = engine.search(Query(image=generated[i].image, text=request.text, k=k, filters=flt))
    return [
        VariantResult(
            index=i,
            seed=g.seed,
            image=g.image,
            path=paths[i],
            flagged=g.flagged,
            clip_text=clip_text.get(i),
            source_similarity=source_sim.get(i),
            lookalikes=lookalikes.get(i, []),
        )
        for i, g in enumerate(generated)
    ]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
