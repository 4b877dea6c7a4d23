"""Several photos per product: each photo is read, hashed and decoded on its own, so one bad photo costs
only itself, and an edited product re-embeds only the photos whose bytes changed.

A store that keeps every photo has the max-sim multivector ``photos`` beside ``image`` (the main photo,
which composed queries, calibration and dedup read), and each item's ``_photos`` payload: per photo in
``images`` order, the SHA-256 of its bytes, or ``!REASON`` where it could not be used. The multivector's
rows are the usable photos, in that order, so row r is the r-th photo without a ``!``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .catalog import CatalogItem
from .images import ImageError, ImagePolicy, decode_image, fetch_bytes
from .store import PHOTOS_KEY, VectorStore

log = logging.getLogger(__name__)

PHOTOS = "photos"
FAILED = "!"


@dataclass(frozen=True)
class PhotoFailure:
    """One photo of a product that could not be used; the product is indexed without it."""

    index: int
    image: str
    reason: str
    error: str


@dataclass
class PhotoSet:
    """One product's photos, prepared: ``marks`` (the ``_photos`` payload), the pixels of the photos to
    embed, the photos whose stored vectors are reused (photo -> (stored vector, row)), those vectors once
    read (:func:`fill_reused`), and the photos that failed. ``keep_all``: the store keeps every photo."""

    marks: list[str]
    pixels: dict[int, torch.Tensor]
    reuse: dict[int, tuple[str, int]] = field(default_factory=dict)
    reused: dict[int, np.ndarray] = field(default_factory=dict)
    failures: list[PhotoFailure] = field(default_factory=list)
    keep_all: bool = False

    def rows(self) -> list[int]:
        """The photos the multivector holds, in its row order."""
        return usable(self.marks)

    def matrix(self, encoded: dict[int, np.ndarray]) -> np.ndarray:
        """The product's photo vectors, one row per usable photo (main photo first when it is usable)."""
        vectors = {**self.reused, **encoded}
        return np.stack([vectors[i] for i in self.rows()])


def usable(marks: Sequence[str]) -> list[int]:
    return [i for i, mark in enumerate(marks) if not mark.startswith(FAILED)]


def row_of_photo(marks: Sequence[str], photo: int) -> int | None:
    """The multivector row holding photo ``photo`` (an index into ``images``), or None if it failed."""
    rows = usable(marks)
    return rows.index(photo) if photo in rows else None


@dataclass(frozen=True)
class Fetched:
    """A product's photos as read: per photo its byte hash or ``!REASON``, the bytes read, the failures."""

    marks: tuple[str, ...]
    data: dict[int, bytes]
    failures: tuple[PhotoFailure, ...]


def fetch_photos(item: CatalogItem, policy: ImagePolicy) -> Fetched:
    marks, data, failures = [], {}, []
    for i, source in enumerate(item.images):
        try:
            data[i] = fetch_bytes(source, policy)
            marks.append(hashlib.sha256(data[i]).hexdigest())
        except ImageError as exc:
            failures.append(PhotoFailure(i, source, exc.reason, str(exc)))
            marks.append(FAILED + exc.reason)
    return Fetched(tuple(marks), data, tuple(failures))


def stored_failures(item: CatalogItem, fetched: Fetched, stored: Sequence[str]) -> list[PhotoFailure]:
    """An unchanged product's photos that failed when they were decoded last time (the bytes are the same,
    so they would again): reported again, without decoding them."""
    out = list(fetched.failures)
    for i, mark in enumerate(stored):
        if mark.startswith(FAILED) and i in fetched.data and i < len(item.images):
            reason = mark[len(FAILED) :]
            out.append(
                PhotoFailure(i, item.images[i], reason, f"{item.images[i]}: {reason} (unchanged since the last run)")
            )
    return out


def reuse_sources(
    marks: Sequence[str], stored: Sequence[str] | None, main_unchanged: bool
) -> dict[int, tuple[str, int]]:
    """Photo -> (stored vector, row) for the photos whose vectors the store already holds: those whose
    bytes hash as a stored photo's; in a store made before ``photos``, the main photo when the item's
    old content hash shows it unchanged (its ``image`` vector)."""
    if stored is not None:
        rows = {stored[i]: r for r, i in enumerate(usable(stored))}
        return {i: (PHOTOS, rows[m]) for i, m in enumerate(marks) if not m.startswith(FAILED) and m in rows}
    return {0: ("image", 0)} if main_unchanged and not marks[0].startswith(FAILED) else {}


def decode_photos(
    item: CatalogItem,
    fetched: Fetched,
    reuse: dict[int, tuple[str, int]],
    policy: ImagePolicy,
    prepare: Callable[[bytes, str], torch.Tensor],
) -> PhotoSet:
    """Decode and preprocess the photos not reused; one that does not decode is marked failed."""
    marks, pixels, failures = list(fetched.marks), {}, list(fetched.failures)
    for i, data in fetched.data.items():
        if i in reuse:
            continue
        try:
            pixels[i] = prepare(data, item.images[i])
        except ImageError as exc:
            failures.append(PhotoFailure(i, item.images[i], exc.reason, str(exc)))
            marks[i] = FAILED + exc.reason
    return PhotoSet(marks, pixels, reuse, failures=failures, keep_all=True)


def preprocessor(
    policy: ImagePolicy, fit: int, preprocess: Callable[[Image.Image], torch.Tensor]
) -> Callable[[bytes, str], torch.Tensor]:
    def prepare(data: bytes, source: str) -> torch.Tensor:
        return preprocess(decode_image(data, source, policy, fit=fit))

    return prepare


def fill_reused(sets: Iterable[tuple[str, PhotoSet]], store: VectorStore) -> None:
    """Read the stored vectors that (catalog id, photo set) pairs reuse, in one call."""
    wanted = [(item_id, s) for item_id, s in sets if s.reuse]
    if not wanted:
        return
    names = sorted({name for _, s in wanted for name, _ in s.reuse.values()})
    found = {r.id: r.vectors for r in store.retrieve([i for i, _ in wanted], with_vectors=names, keys=[])}
    for item_id, s in wanted:
        vectors = found.get(item_id, {})
        for i, (name, row) in s.reuse.items():
            stored: Any = vectors.get(name)
            if stored is None:
                # Deleted or rewritten by another writer since this run read the store.
                s.failures.append(PhotoFailure(i, "", "lost", f"{item_id}: its stored photo vanished; index again"))
                s.marks[i] = FAILED + "lost"
                continue
            s.reused[i] = np.asarray(stored)[row] if name == PHOTOS else np.asarray(stored)


def has_all_photos(store: VectorStore) -> bool:
    """Whether every stored item has its photos (a store made before ``photos`` fills in as it is re-indexed)."""
    return all(isinstance(r.payload.get(PHOTOS_KEY), list) for r in store.scroll(keys=[PHOTOS_KEY]))
