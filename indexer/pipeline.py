"""The batched, incremental, kill-safe indexing pipeline: the local engine and the stages every engine runs.

catalog items -> bounded prefetch pool (read, hash, decode, preprocess) -> batched encoders -> store upsert

The stages are plain functions (:func:`open_index`, :func:`prepare_item`, :func:`encode_batch`,
:func:`build_records`, :class:`RunLog`, :func:`finish_index`), so another engine (``engine_ray``) runs
the same steps under the same incremental rule and reports the same way.

Each stored item carries a content hash over its image bytes, its text and payload, and the model ids.
An item whose hash is already stored is skipped before decoding, so a re-run only reads and hashes.
A product with several photos has each photo hashed too (see photos.py): a changed product re-embeds
only the photos whose bytes changed, and one bad photo is reported while the rest are indexed.
Every upserted batch is committed, so a killed run loses at most the batch in flight, and the
re-run picks up exactly the items that are not stored yet.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from . import bulk
from .catalog import Catalog, CatalogItem
from .encoders import Encoder
from .images import ImagePolicy
from .lexical import LEXICAL, LexicalEncoder, fill_lexical
from .photos import PHOTOS, PhotoFailure, fill_reused, has_all_photos
from .prepare import Failed, ItemPrep, Prepared, Ready, Skipped, prepare_item
from .store import HASH_KEY, ID_KEY, PHOTOS_KEY, ProgressFn, Record, StoreLayout, StoreSchema, VectorStore
from .tags import Tagger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 64
    workers: int = 4
    prefetch_batches: int = 3
    prune: bool = False
    optimize_threshold: int = 20_000
    vectors_on_disk: bool = False


@dataclass
class Models:
    """The encoders an index is built with; their ids define the store schema."""

    clip: Encoder
    text: Encoder
    tagger: Tagger | None = None
    lexical: LexicalEncoder | None = field(default_factory=LexicalEncoder)

    def schema(self, photos: bool = False) -> StoreSchema:
        """The store's schema; with ``photos``, every photo of a product is kept (the ``photos`` multivector)."""
        vectors = {"image": self.clip.dim, "text": self.clip.dim, "semantic": self.text.dim}
        models = {"image": self.clip.model_id, "text": self.clip.model_id, "semantic": self.text.model_id}
        if photos:
            vectors[PHOTOS], models[PHOTOS] = self.clip.dim, self.clip.model_id
        return StoreSchema(
            vectors=vectors,
            models=models,
            sparse={LEXICAL: self.lexical.model_id} if self.lexical else {},
            multi={PHOTOS: "filled"} if photos else {},
        )

    def key(self) -> str:
        # The lexical vector is left out: it is refilled from stored payloads, never by re-embedding.
        tags = self.tagger.vocab.digest() if self.tagger else "-"
        return f"{self.clip.model_id}|{self.text.model_id}|{tags}"


@dataclass
class IndexReport:
    total: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    photos_failed: int = 0
    photos_embedded: int = 0  # photos through the image model (a changed product's unchanged photos are reused)
    pruned: int = 0
    lexical_filled: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0
    optimized: bool = False
    errors_path: str | None = None
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def embedded(self) -> int:
        return self.new + self.updated

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        filled = f", lexical vectors added to {self.lexical_filled} stored items" if self.lexical_filled else ""
        photos = f", {self.photos_failed} photos left out (their products indexed)" if self.photos_failed else ""
        return (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.failed} failed, {self.pruned} pruned in {self.seconds:.1f}s "
            f"({self.images_per_s:.1f} images/s){filled}{photos}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "embedded": self.embedded, "images_per_s": round(self.images_per_s, 2)}


@dataclass
class Vectors:
    """One batch's vectors, row i for item i (``photos``: item i's photo rows), and its zero-shot tags."""

    image: np.ndarray
    text: np.ndarray
    semantic: np.ndarray
    tags: list[dict[str, Any]]
    photos: list[np.ndarray] = field(default_factory=list)


def item_text(item: CatalogItem) -> str:
    return f"{item.title}. {item.description}".strip(" .") if item.description else item.title


def index_catalog(
    catalog: Catalog,
    store: VectorStore,
    models: Models,
    options: IndexOptions,
    policy: ImagePolicy,
    errors_path: Path,
    progress: ProgressFn | None = None,
    *,
    build_progress: ProgressFn | None = None,
) -> IndexReport:
    """Embed every catalog item that is not stored with the same content hash, and store it (the local engine).

    ``progress`` hears (items done, items) as items are read; ``build_progress`` the vector index build
    that ends a bulk load."""
    started = time.perf_counter()
    report = IndexReport(total=len(catalog.items), errors_path=str(errors_path))
    stored, marks = open_index(store, models, catalog, options)
    fill_missing_lexical(store, models, report)
    photos = keeps_photos(store)
    prep = ItemPrep.for_models(models, policy, photos)
    with bulk.naming_the_on_disk_option(f"the load of {catalog.path}"):
        is_bulk = begin_load(store, catalog, stored, store.schema() or models.schema(photos), options)
        done = 0
        batch: list[Ready] = []
        with RunLog.open(errors_path, report, stored) as run, ThreadPoolExecutor(max(1, options.workers)) as pool:
            prepare = functools.partial(_prepare_stored, stored=stored, marks=marks, prep=prep)
            for result, waited in _prefetch(pool, prepare, catalog.items, options):
                report.wait_seconds += waited
                if isinstance(result, Ready):
                    batch.append(result)
                    if len(batch) >= options.batch_size:
                        _flush(batch, store, models, run)
                        batch = []
                else:
                    run.record(result)
                done += 1
                if progress:
                    progress(done, report.total)
            if batch:
                _flush(batch, store, models, run)
        finish_index(store, catalog, stored, options, report, is_bulk, build_progress)
    report.seconds = time.perf_counter() - started
    return report


# -- stages -------------------------------------------------------------------------------------


def open_index(
    store: VectorStore, models: Models, catalog: Catalog, options: IndexOptions
) -> tuple[dict[str, str | None], dict[str, tuple[str, ...]]]:
    """Create or check the store's schema and payload indexes (before any point: a bulk load's
    graph is then built with them), and read what it holds, in one pass: catalog id -> content hash,
    and catalog id -> its photos' marks (see photos.py). A catalog with several photos to a product
    gets (or keeps) the ``photos`` multivector."""
    known = store.schema()
    photos = any(len(item.images) > 1 for item in catalog.items) or (known is not None and PHOTOS in known.multi)
    store.ensure_schema(models.schema(photos), StoreLayout(vectors_on_disk=options.vectors_on_disk))
    fields = {key: ("keyword" if kind == "bool" else kind) for key, kind in catalog.fields.items()}
    if models.tagger:
        fields.update(models.tagger.vocab.fields())
    for key, kind in fields.items():
        store.ensure_payload_index(key, kind)
    hashes: dict[str, str | None] = {}
    marks: dict[str, tuple[str, ...]] = {}
    for r in store.scroll(keys=[HASH_KEY, PHOTOS_KEY] if photos else [HASH_KEY]):
        hashes[r.payload[ID_KEY]] = r.payload.get(HASH_KEY)
        if isinstance(r.payload.get(PHOTOS_KEY), list):
            marks[r.payload[ID_KEY]] = tuple(r.payload[PHOTOS_KEY])
    return hashes, marks


def fill_missing_lexical(store: VectorStore, models: Models, report: IndexReport) -> None:
    """Give stored items made before the lexical channel their BM25 vectors, from their payloads."""
    if models.lexical is not None:
        report.lexical_filled = fill_lexical(store, models.lexical)


def begin_load(
    store: VectorStore, catalog: Catalog, stored: dict[str, str | None], schema: StoreSchema, options: IndexOptions
) -> bool:
    """Whether this run is a bulk load (see bulk.py); if so, the store defers its vector index."""
    pending = sum(1 for item in catalog.items if item.id not in stored)
    if not bulk.is_bulk(pending, options.optimize_threshold):
        return False
    bulk.warn_if_tight(len(stored) + pending, schema, options.vectors_on_disk)
    log.info("bulk load of %d new items: the vector index is built once, at the end", pending)
    store.begin_bulk_load()
    return True


def _prepare_stored(
    item: CatalogItem, stored: dict[str, str | None], marks: dict[str, tuple[str, ...]], prep: ItemPrep
) -> Prepared:
    return prepare_item(item, stored.get(item.id), prep, marks.get(item.id))


def encode_batch(batch: list[Ready], models: Models) -> Vectors:
    """Every photo to embed in the batch goes through the image model at once; reused photos are read
    from :attr:`PhotoSet.reused` (see :func:`fill_reused`)."""
    texts = [item_text(r.item) for r in batch]
    flat = [(k, i) for k, r in enumerate(batch) for i in r.photos.pixels]
    encoded: list[dict[int, np.ndarray]] = [{} for _ in batch]
    if flat:
        pixels = torch.stack([batch[k].photos.pixels[i] for k, i in flat])
        for (k, i), vector in zip(flat, models.clip.encode_pixels(pixels), strict=True):
            encoded[k][i] = vector
    photos = [r.photos.matrix(e) for r, e in zip(batch, encoded, strict=True)]
    # The first usable photo stands in as the main one when the main photo itself could not be used.
    image_vecs = np.stack([m[0] for m in photos])
    text_vecs = models.clip.encode_texts(texts)
    semantic_vecs = models.text.encode_texts(texts)
    tags = models.tagger.tag(image_vecs) if models.tagger else [{} for _ in batch]
    return Vectors(image_vecs, text_vecs, semantic_vecs, tags, photos)


def build_records(batch: list[Ready], vectors: Vectors, lexical: LexicalEncoder | None = None) -> list[Record]:
    records = [
        Record(
            id=r.item.id,
            payload={
                **{k: _keyword_bool(v) for k, v in r.item.payload.items()},
                **tag,
                "title": r.item.title,
                "description": r.item.description,
                "image": r.item.image,
                "images": list(r.item.images),
                ID_KEY: r.item.id,
                HASH_KEY: r.digest,
            },
            vectors={"image": iv, "text": tv, "semantic": sv},
        )
        for r, iv, tv, sv, tag in zip(batch, vectors.image, vectors.text, vectors.semantic, vectors.tags, strict=True)
    ]
    for r, record, rows in zip(batch, records, vectors.photos, strict=True):
        if r.photos.keep_all:
            record.vectors[PHOTOS] = rows
            record.payload[PHOTOS_KEY] = list(r.photos.marks)
    if lexical is not None:
        for record in records:
            record.vectors[LEXICAL] = lexical.document(record.payload)
    return records


class RunLog:
    """Counts each item's outcome into the report, and writes each failure to the errors file as it happens."""

    def __init__(self, report: IndexReport, stored: dict[str, str | None], errors: TextIO) -> None:
        self.report, self.stored, self.errors = report, stored, errors

    @classmethod
    @contextlib.contextmanager
    def open(cls, errors_path: Path, report: IndexReport, stored: dict[str, str | None]) -> Iterator[RunLog]:
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        with errors_path.open("w") as errors:
            yield cls(report, stored, errors)

    def record(self, result: Skipped | Failed) -> None:
        if isinstance(result, Skipped):
            self.report.unchanged += 1
            self.photo_failed(result.item, result.failures)
            return
        self.report.failed += 1
        self.report.failures[result.reason] = self.report.failures.get(result.reason, 0) + 1
        self.errors.write(json.dumps(error_row(result)) + "\n")
        self.errors.flush()
        log.warning("%s: %s", result.item.source, result.error)

    def photo_failed(self, item: CatalogItem, failures: list[PhotoFailure]) -> None:
        """Photos left out of a product that is indexed (or kept) with its other photos."""
        for f in failures:
            self.report.photos_failed += 1
            self.report.failures[f.reason] = self.report.failures.get(f.reason, 0) + 1
            row = {**error_row(Failed(item, f.reason, f.error)), "image": f.image or item.images[f.index]}
            self.errors.write(json.dumps({**row, "photo": f.index}) + "\n")
            log.warning("%s: photo %d: %s", item.source, f.index, f.error)
        if failures:
            self.errors.flush()

    def written(self, item_id: str, digest: str) -> None:
        """One item committed to the store."""
        if item_id in self.stored:
            self.report.updated += 1
        else:
            self.report.new += 1
        self.stored[item_id] = digest


def finish_index(
    store: VectorStore,
    catalog: Catalog,
    stored: dict[str, str | None],
    options: IndexOptions,
    report: IndexReport,
    is_bulk: bool,
    build_progress: ProgressFn | None = None,
) -> None:
    """Prune, then build the vector index after a bulk load (or one a killed bulk load left unbuilt)."""
    if options.prune:
        wanted = {item.id for item in catalog.items}
        gone = [item_id for item_id in stored if item_id not in wanted]
        if gone:
            store.delete(gone)
        report.pruned = len(gone)
    schema = store.schema()
    if schema is not None and PHOTOS in schema.multi and not schema.filled(PHOTOS) and has_all_photos(store):
        # Searches use every photo once no stored item lacks them; until then, main photos only.
        store.set_multi_filled(PHOTOS)
    threshold = options.optimize_threshold
    if is_bulk or report.embedded >= threshold or store.unindexed() >= max(threshold, 1):
        log.info("building the HNSW index after %d upserts", report.embedded)
        store.optimize(build_progress)
        report.optimized = True


def _prefetch(
    pool: ThreadPoolExecutor,
    fn: Callable[[CatalogItem], Any],
    items: list[CatalogItem],
    options: IndexOptions,
) -> Iterator[tuple[Any, float]]:
    """Yield ``fn(item)`` in catalog order while the pool works a fixed number of batches ahead.

    The window is bounded so that decoded tensors for at most ``prefetch_batches`` batches sit in
    memory: enough to keep the encoder busy, never the whole catalog.
    """
    window = max(1, options.prefetch_batches) * options.batch_size
    pending: deque[Future] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        t0 = time.perf_counter()
        result = pending.popleft().result()
        waited = time.perf_counter() - t0
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield result, waited


def _flush(batch: list[Ready], store: VectorStore, models: Models, run: RunLog) -> None:
    t0 = time.perf_counter()
    fill_reused(((r.item.id, r.photos) for r in batch), store)
    run.report.photos_embedded += sum(len(r.photos.pixels) for r in batch)
    vectors = encode_batch(batch, models)
    run.report.encode_seconds += time.perf_counter() - t0
    store.upsert(build_records(batch, vectors, models.lexical))
    for r in batch:
        run.written(r.item.id, r.digest)
        run.photo_failed(r.item, r.photos.failures)


def keeps_photos(store: VectorStore) -> bool:
    schema = store.schema()
    return schema is not None and PHOTOS in schema.multi


def _keyword_bool(value: Any) -> Any:
    # True/false fields are stored as "true"/"false" keywords: the embedded engine cannot match
    # boolean payloads (it reads True as 1), and one representation keeps both stores alike.
    return ("true" if value else "false") if isinstance(value, bool) else value


def error_row(failure: Failed) -> dict[str, Any]:
    return {
        "id": failure.item.id,
        "source": failure.item.source,
        "image": failure.item.image,
        "reason": failure.reason,
        "error": failure.error,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
