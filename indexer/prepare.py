"""The read-hash-decode stage of indexing: what one catalog item becomes before its batch is encoded.

An item whose content hash (see :func:`content_hash`) is already stored is skipped before decoding, so a
re-run only reads and hashes. In a store that keeps every photo (see photos.py) each photo is read,
hashed and decoded on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .catalog import CatalogItem
from .images import ImageError, ImagePolicy, decode_image, fetch_bytes
from .photos import (
    PhotoFailure,
    PhotoSet,
    decode_photos,
    fetch_photos,
    preprocessor,
    reuse_sources,
    stored_failures,
)

if TYPE_CHECKING:
    from .pipeline import Models

log = logging.getLogger(__name__)


@dataclass
class Ready:
    item: CatalogItem
    digest: str
    photos: PhotoSet


@dataclass
class Skipped:
    item: CatalogItem
    failures: list[PhotoFailure] = field(default_factory=list)  # unchanged photos that are still bad


@dataclass
class Failed:
    item: CatalogItem
    reason: str
    error: str


Prepared = Ready | Skipped | Failed


@dataclass(frozen=True)
class ItemPrep:
    """What preparing one item needs: the image policy, the models key the hash covers, the image
    model's input side and preprocessing, whether the store keeps every photo (``photos``), and whether
    stored photo vectors may be reused (``reuse``: an engine whose encoders cannot read the store says no)."""

    policy: ImagePolicy
    models_key: str
    fit: int
    preprocess: Callable[[Image.Image], torch.Tensor]
    photos: bool = False
    reuse: bool = True

    @classmethod
    def for_models(cls, models: Models, policy: ImagePolicy, photos: bool = False) -> ItemPrep:
        return cls(policy, models.key(), models.clip.image_size, models.clip.preprocess, photos)


def content_hash(image_bytes: bytes, item: CatalogItem, models_key: str, photos: list[str] | None = None) -> str:
    """``photos``: each photo's byte hash or failure mark, where the photos are read one by one."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(image_bytes).digest())
    parts: list[Any] = [item.title, item.description, item.payload, models_key]
    if len(item.images) > 1:
        # Extra photos are stored in the payload, so they are part of the content (by their bytes too where
        # every photo is embedded); a single-photo item keeps the hash it had before items had several
        # photos, and is not embedded again.
        parts.append(list(item.images) if photos is None else [list(item.images), photos])
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def prepare_item(
    item: CatalogItem, stored_digest: str | None, prep: ItemPrep, stored_photos: tuple[str, ...] | None = None
) -> Prepared:
    """Read and hash one item; unless its hash is already stored, decode and preprocess its image (or, in
    a store that keeps every photo, its photos; ``stored_photos``: the marks stored with it, if any)."""
    try:
        if prep.photos:
            return _prepare_photos(item, stored_digest, prep, stored_photos)
        data = fetch_bytes(item.image, prep.policy)
        digest = content_hash(data, item, prep.models_key)
        if stored_digest == digest:
            return Skipped(item)
        image = decode_image(data, item.image, prep.policy, fit=prep.fit)
        return Ready(item, digest, PhotoSet([""], {0: prep.preprocess(image)}))
    except ImageError as exc:
        return Failed(item, exc.reason, str(exc))
    except Exception as exc:  # one bad item must never abort the run
        log.exception("%s: unexpected error preparing %s", item.source, item.id)
        return Failed(item, "error", f"{type(exc).__name__}: {exc}")


def _prepare_photos(
    item: CatalogItem, stored_digest: str | None, prep: ItemPrep, stored_photos: tuple[str, ...] | None
) -> Prepared:
    fetched = fetch_photos(item, prep.policy)
    main = fetched.data.get(0, b"")
    digest = content_hash(main, item, prep.models_key, list(fetched.marks))
    if stored_digest == digest and stored_photos is not None:
        return Skipped(item, stored_failures(item, fetched, stored_photos))
    main_unchanged = stored_photos is None and 0 in fetched.data and stored_digest in _old_hashes(main, item, prep)
    reuse = reuse_sources(fetched.marks, stored_photos, main_unchanged) if prep.reuse else {}
    photos = decode_photos(item, fetched, reuse, prep.policy, preprocessor(prep.policy, prep.fit, prep.preprocess))
    if not photos.rows():
        first = photos.failures[0]
        return Failed(item, first.reason, "no photo could be used: " + "; ".join(f.error for f in photos.failures))
    return Ready(item, digest, photos)


def _old_hashes(main: bytes, item: CatalogItem, prep: ItemPrep) -> set[str]:
    """The hashes of an item stored before every photo was kept, if its main photo is unchanged: as it
    is now (a store made from this catalog by an earlier version), or as it was before it gained its
    further photos."""
    return {content_hash(main, item, prep.models_key), content_hash(main, replace(item, images=()), prep.models_key)}
