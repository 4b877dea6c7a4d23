"""Several photos per product at search time.

In an index that keeps every photo (the ``photos`` max-sim multivector, see indexer/photos.py) the
image channel of every query searches all of a product's photos: a product scores as its best-matching
photo, and shows once. A hit names that photo (:attr:`Hit.photo`), and "more like this" can start from
any photo of the reference item. The main-photo ``image`` vector stays what composed queries' label
means, dedup and the negative penalty read.

A maximum over several photos scores higher than one photo against the same unrelated query, so the
image channel's calibration is fitted on the same maxima (channels ``text>photos`` and ``image>photos``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from indexer.photos import PHOTOS, row_of_photo, usable
from indexer.store import PHOTOS_KEY, Record, StoreSchema

from .query import Hit, QueryError


def searches_photos(schema: StoreSchema | None, enabled: bool) -> bool:
    """Whether the image channel searches every photo: the index keeps them all, filled for every item."""
    return enabled and schema is not None and schema.filled(PHOTOS)


def stored_name(name: str, photos: bool) -> str:
    """The stored vector a channel searches."""
    return PHOTOS if photos and name == "image" else name


def calibration_channel(channel: str, photos: bool) -> str:
    """``text>image`` -> ``text>photos`` where the image channel scores the best of several photos."""
    return channel.replace(">image", f">{PHOTOS}") if photos else channel


def photo_sources(payload: dict[str, Any]) -> list[Any]:
    """A stored item's photos as the catalog named them, the main one first."""
    return payload.get("images") or [payload.get("image")]


def photo_vector(record: Record, photo: int) -> np.ndarray:
    """The vector of photo ``photo`` (an index into the item's ``images``) of a stored item."""
    images = photo_sources(record.payload)
    marks = record.payload.get(PHOTOS_KEY)
    if not 0 <= photo < len(images):
        raise QueryError(f"item {record.id!r} has {len(images)} photo(s): photo must be 0 to {len(images) - 1}")
    if photo == 0 and marks is None:
        return record.vectors["image"]
    if marks is None or PHOTOS not in record.vectors:
        raise QueryError(
            f"item {record.id!r}: photo {photo} is not indexed (this index keeps main photos only; index the "
            "catalog again to search every photo)"
        )
    row = row_of_photo(marks, photo)
    if row is None:
        raise QueryError(f"item {record.id!r}: photo {photo} could not be read when it was indexed")
    return np.asarray(record.vectors[PHOTOS])[row]


def best_row(rows: np.ndarray, query: np.ndarray) -> tuple[int, float]:
    """The row of ``rows`` (one product's photos) nearest to ``query``, and its cosine."""
    scores = np.asarray(rows) @ query
    best = int(np.argmax(scores))
    return best, float(scores[best])


def nearest_photos(points: Sequence[Any], name: str, reference: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Composed-query candidates' vectors: ``image``, the photo a candidate is scored by (with every photo
    searched, ``name`` being the multivector, its photo nearest to the reference; else its main photo),
    and all its photos, which :func:`with_best_photos` names the shown photo from once the page is known."""
    if name != PHOTOS:
        return [{"image": p.vectors[name]} for p in points]
    out = []
    for p in points:
        rows = np.asarray(p.vectors[PHOTOS])
        out.append({"image": rows[best_row(rows, reference)[0]], PHOTOS: rows})
    return out


# A hit is shown by its main photo unless another photo matches the query better by more than this
# many robust standard deviations of the channel's background. On the demo's Shopify feed (a shot, its
# mirror and a close-up) the best photo beat the main one by a median 0.002 cosine on text queries
# (0.0005 on "more like this"), with a robust sd of about 0.2: which of two near-equal views came first
# was chance, and half the results showed the mirror image. At 0.1 sd (0.02 there) a further photo is
# shown where it is clearly the better match.
SHOWN_MARGIN_SD = 0.1


def shown_margin(calibration: dict[str, Any], channel: str) -> float:
    """The cosine margin by which a further photo must beat the main one to be shown (0 uncalibrated)."""
    cal = calibration.get(channel)
    return SHOWN_MARGIN_SD * cal.scale if cal is not None else 0.0


def with_best_photos(hits: list[Hit], query: np.ndarray | None, margin: float = 0.0) -> list[Hit]:
    """Each hit with the photo that matches ``query`` (the image channel's query vector) best, where the
    hit holds its photos; the main photo where no other beats it by more than ``margin``."""
    if query is None:
        return hits
    return [_named(h, query, margin) if h.photo is None and PHOTOS in h.vectors else h for h in hits]


def _named(hit: Hit, query: np.ndarray, margin: float) -> Hit:
    scores = np.asarray(hit.vectors[PHOTOS]) @ query
    row = int(np.argmax(scores))
    main = row_of_photo(hit.payload.get(PHOTOS_KEY) or [], 0)
    if main is not None and scores[row] - scores[main] <= margin:
        row = main
    return replace(hit, photo=photo_of_row(hit.payload, row))


def photo_of_row(payload: dict[str, Any], row: int) -> int:
    """The photo (an index into ``images``) held in multivector row ``row``."""
    marks = payload.get(PHOTOS_KEY)
    return usable(marks)[row] if isinstance(marks, list) else row


def max_sim_background(
    queries: np.ndarray, photo_sets: Sequence[np.ndarray], n_pairs: int, *, seed: int = 0
) -> np.ndarray:
    """Max-sim scores of ``n_pairs`` random (query row i, item j != i) pairs: the best of item j's photos
    against query i, which is what the image channel scores an unrelated item with."""
    n = len(photo_sets)
    if n < 2 or len(queries) != n:
        raise ValueError(f"need row-aligned queries and photo sets for at least 2 items, got {len(queries)} and {n}")
    width = max(len(p) for p in photo_sets)
    padded = np.zeros((n, width, queries.shape[1]), dtype=np.float32)
    valid = np.zeros((n, width), dtype=bool)
    for j, rows in enumerate(photo_sets):
        padded[j, : len(rows)], valid[j, : len(rows)] = rows, True
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = rng.integers(0, n - 1, size=n_pairs)
    j = j + (j >= i)  # uniform over j != i, as background_scores draws
    out = np.empty(n_pairs, dtype=np.float64)
    for start in range(0, n_pairs, 8192):  # a bounded slice of (pairs, photos, d) at a time
        s = slice(start, start + 8192)
        scores = np.einsum("nd,npd->np", queries[i[s]], padded[j[s]])
        out[s] = np.where(valid[j[s]], scores, -np.inf).max(axis=1)
    return out
