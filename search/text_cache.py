"""Query texts' vectors, kept for the phrasings asked again.

Shoppers repeat themselves: the same few hundred phrasings ("black dress", a brand, a category) make most
of a shop's text queries, and encoding one through both text towers costs more on a CPU than the whole
store search. The vectors are read-only once cached, so callers can share them between threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
from prometheus_client import Counter

from indexer import Models

LOOKUPS = Counter("lookalike_query_cache_lookups", "Query texts encoded or looked up, by text tower.", ["tower"])
MISSES = Counter("lookalike_query_cache_misses", "Query texts not in the cache, encoded, by text tower.", ["tower"])
# The semantic tower's encodes, beside the CLIP tower's in the caller's thread (TextVectors.both).
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="semantic")


class TextVectors:
    """The CLIP and semantic vectors of query texts, each tower with an LRU cache of ``size`` texts (0: none).

    Hits are lookups less misses, so that counting needs no lock around the cache."""

    def __init__(self, models: Models, size: int) -> None:
        self.clip = _cached(models.clip.encode_texts, size, "clip")
        self.semantic = _cached(models.text.encode_texts, size, "semantic")

    def both(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The CLIP and semantic vectors of ``text``, the two towers encoding side by side: torch lets go
        of the GIL while it computes, so a query waits for the slower tower rather than for both in turn."""
        semantic = _pool.submit(self.semantic, text)
        return self.clip(text), semantic.result()


def _cached(encode: Callable[[list[str]], Any], size: int, tower: str) -> Callable[[str], np.ndarray]:
    lookups, misses = LOOKUPS.labels(tower), MISSES.labels(tower)

    @lru_cache(maxsize=size)
    def compute(text: str) -> np.ndarray:
        misses.inc()
        vector = np.array(encode([text])[0])
        vector.flags.writeable = False
        return vector

    def lookup(text: str) -> np.ndarray:
        lookups.inc()
        return compute(text)

    return lookup
