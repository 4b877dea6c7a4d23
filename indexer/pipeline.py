"""The batched, incremental, kill-safe indexing pipeline.

catalog items -> bounded prefetch pool (read, hash, decode, preprocess) -> batched encoders -> store upsert

Each stored item carries a content hash over its image bytes, its text and payload, and the model ids.
An item whose hash is already stored is skipped before decoding, so a re-run only reads and hashes.
Every upserted batch is committed, so a killed run loses at most the batch in flight, and the
re-run picks up exactly the items that are not stored yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .catalog import Catalog, CatalogItem
from .encoders import Encoder
from .images import ImageError, ImagePolicy, decode_image, fetch_bytes
from .lexical import LEXICAL, LexicalEncoder, fill_lexical
from .store import HASH_KEY, ID_KEY, Record, StoreSchema, VectorStore
from .tags import Tagger

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 64
    workers: int = 4
    prefetch_batches: int = 3
    prune: bool = False
    optimize_threshold: int = 20_000


@dataclass
class Models:
    """The encoders an index is built with; their ids define the store schema."""

    clip: Encoder
    text: Encoder
    tagger: Tagger | None = None
    lexical: LexicalEncoder | None = field(default_factory=LexicalEncoder)

    def schema(self) -> StoreSchema:
        return StoreSchema(
            vectors={"image": self.clip.dim, "text": self.clip.dim, "semantic": self.text.dim},
            models={"image": self.clip.model_id, "text": self.clip.model_id, "semantic": self.text.model_id},
            sparse={LEXICAL: self.lexical.model_id} if self.lexical else {},
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
        return (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.failed} failed, {self.pruned} pruned in {self.seconds:.1f}s "
            f"({self.images_per_s:.1f} images/s){filled}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "embedded": self.embedded, "images_per_s": round(self.images_per_s, 2)}


@dataclass
class _Ready:
    item: CatalogItem
    digest: str
    pixels: torch.Tensor


@dataclass
class _Skipped:
    item: CatalogItem


@dataclass
class _Failed:
    item: CatalogItem
    reason: str
    error: str


def content_hash(image_bytes: bytes, item: CatalogItem, models_key: str) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(image_bytes).digest())
    h.update(json.dumps([item.title, item.description, item.payload, models_key], sort_keys=True).encode())
    return h.hexdigest()


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
) -> IndexReport:
    """Embed every catalog item that is not stored with the same content hash, and store it."""
    started = time.perf_counter()
    report = IndexReport(total=len(catalog.items), errors_path=str(errors_path))
    store.ensure_schema(models.schema())
    fields = {key: ("keyword" if kind == "bool" else kind) for key, kind in catalog.fields.items()}
    if models.tagger:
        fields.update(models.tagger.vocab.fields())
    for key, kind in fields.items():
        store.ensure_payload_index(key, kind)
    if models.lexical is not None:
        report.lexical_filled = fill_lexical(store, models.lexical)

    stored = {r.payload[ID_KEY]: r.payload.get(HASH_KEY) for r in store.scroll(keys=[HASH_KEY])}
    models_key = models.key()

    def prepare(item: CatalogItem) -> _Ready | _Skipped | _Failed:
        try:
            data = fetch_bytes(item.image, policy)
            digest = content_hash(data, item, models_key)
            if stored.get(item.id) == digest:
                return _Skipped(item)
            image = decode_image(data, item.image, policy, fit=models.clip.image_size)
            return _Ready(item, digest, models.clip.preprocess(image))
        except ImageError as exc:
            return _Failed(item, exc.reason, str(exc))
        except Exception as exc:  # one bad item must never abort the run
            log.exception("%s: unexpected error preparing %s", item.source, item.id)
            return _Failed(item, "error", f"{type(exc).__name__}: {exc}")

    errors_path.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    batch: list[_Ready] = []
    with errors_path.open("w") as errors, ThreadPoolExecutor(max(1, options.workers)) as pool:
        for result, waited in _prefetch(pool, prepare, catalog.items, options):
            report.wait_seconds += waited
            if isinstance(result, _Ready):
                batch.append(result)
                if len(batch) >= options.batch_size:
                    _flush(batch, store, models, stored, report)
                    batch = []
            elif isinstance(result, _Skipped):
                report.unchanged += 1
            else:
                report.failed += 1
                report.failures[result.reason] = report.failures.get(result.reason, 0) + 1
                errors.write(json.dumps(_error_row(result)) + "\n")
                errors.flush()
                log.warning("%s: %s", result.item.source, result.error)
            done += 1
            if progress:
                progress(done, report.total)
        if batch:
            _flush(batch, store, models, stored, report)

    if options.prune:
        wanted = {item.id for item in catalog.items}
        gone = [item_id for item_id in stored if item_id not in wanted]
        if gone:
            store.delete(gone)
        report.pruned = len(gone)
    if report.embedded >= options.optimize_threshold:
        log.info("building the HNSW index after %d upserts", report.embedded)
        store.optimize()
        report.optimized = True
    report.seconds = time.perf_counter() - started
    return report


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


def _flush(
    batch: list[_Ready],
    store: VectorStore,
    models: Models,
    stored: dict[str, str | None],
    report: IndexReport,
) -> None:
    t0 = time.perf_counter()
    texts = [item_text(r.item) for r in batch]
    image_vecs = models.clip.encode_pixels(torch.stack([r.pixels for r in batch]))
    text_vecs = models.clip.encode_texts(texts)
    semantic_vecs = models.text.encode_texts(texts)
    tags = models.tagger.tag(image_vecs) if models.tagger else [{} for _ in batch]
    report.encode_seconds += time.perf_counter() - t0
    records = [
        Record(
            id=r.item.id,
            payload={
                **{k: _keyword_bool(v) for k, v in r.item.payload.items()},
                **tag,
                "title": r.item.title,
                "description": r.item.description,
                "image": r.item.image,
                ID_KEY: r.item.id,
                HASH_KEY: r.digest,
            },
            vectors={"image": iv, "text": tv, "semantic": sv},
        )
        for r, iv, tv, sv, tag in zip(batch, image_vecs, text_vecs, semantic_vecs, tags, strict=True)
    ]
    if models.lexical is not None:
        for record in records:
            record.vectors[LEXICAL] = models.lexical.document(record.payload)
    store.upsert(records)
    for r in batch:
        if r.item.id in stored:
            report.updated += 1
        else:
            report.new += 1
        stored[r.item.id] = r.digest


def _keyword_bool(value: Any) -> Any:
    # True/false fields are stored as "true"/"false" keywords: the embedded engine cannot match
    # boolean payloads (it reads True as 1), and one representation keeps both stores alike.
    return ("true" if value else "false") if isinstance(value, bool) else value


def _error_row(failure: _Failed) -> dict[str, Any]:
    return {
        "id": failure.item.id,
        "source": failure.item.source,
        "image": failure.item.image,
        "reason": failure.reason,
        "error": failure.error,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
