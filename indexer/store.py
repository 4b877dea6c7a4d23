"""VectorStore protocol, its value types and the spec-string factory.

One collection holds every product: named dense vectors (``image``, ``text``,
``semantic``), named multivectors (``photos``: one row per photo, scored by the best row), named
sparse vectors (``lexical``: BM25 term weights), the payload, and bookkeeping payload keys: ``_id``
(the catalog id), ``_hash`` (the content hash that makes re-runs incremental) and ``_photos`` (each
photo's own hash, so an edited product re-embeds only the photos that changed). Qdrant wants UUID
or integer point ids, so catalog ids are mapped to UUIDv5; the catalog id is what every caller sees.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

ID_KEY = "_id"
HASH_KEY = "_hash"
PHOTOS_KEY = "_photos"
RESERVED_KEYS = frozenset({ID_KEY, HASH_KEY, PHOTOS_KEY})
_NAMESPACE = uuid.UUID("6f1c6c1e-3b0a-5d4e-9a57-1f0f6c0b8a11")
_NAMESPACE_BYTES = _NAMESPACE.bytes

FieldKind = Literal["keyword", "float", "integer", "bool"]
ProgressFn = Callable[[int, int], None]  # (done, total)


class StoreError(RuntimeError):
    """A store cannot be opened or used as asked."""


class SchemaMismatch(StoreError):
    """The store was built with other models or vector sizes than requested."""


def point_id(item_id: str) -> str:
    """Stable Qdrant point id for a catalog id: ``str(uuid.uuid5(_NAMESPACE, item_id))``.

    Spelled out because a search maps hundreds of ids each way, and ``uuid.UUID`` objects made that a
    third of a composed query's store time."""
    b = bytearray(hashlib.sha1(_NAMESPACE_BYTES + item_id.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class SparseVector:
    """Token ids and their weights, as both Qdrant bindings take a sparse vector."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.indices)


@dataclass(frozen=True)
class StoreSchema:
    """What the collection was built with: dense vector name -> size, dense vector name -> model id,
    and sparse vector name -> the model id every stored item's values come from ("" while a vector
    added to an existing store is still being filled in). ``multi`` names the dense vectors that hold
    several rows per item (a max-sim multivector): name -> "filled" once every stored item has it,
    "" while one added to an existing store is being filled in."""

    vectors: dict[str, int]
    models: dict[str, str]
    sparse: dict[str, str] = field(default_factory=dict)
    multi: dict[str, str] = field(default_factory=dict)

    def dense(self) -> StoreSchema:
        """The part that cannot change once items are stored: a sparse vector or a multivector can be
        added to a store and filled in later."""
        keep = [name for name in self.vectors if name not in self.multi]
        return StoreSchema({n: self.vectors[n] for n in keep}, {n: self.models[n] for n in keep if n in self.models})

    def filled(self, name: str) -> bool:
        """Whether every stored item has the multivector ``name``."""
        return bool(self.multi.get(name))

    def describe_difference(self, other: StoreSchema) -> str:
        lines = []
        for name in sorted(set(self.vectors) | set(other.vectors)):
            a = (self.models.get(name), self.vectors.get(name))
            b = (other.models.get(name), other.vectors.get(name))
            if a != b:
                lines.append(f"{name}: stored {a[0]} ({a[1]}-d), requested {b[0]} ({b[1]}-d)")
        return "; ".join(lines)


Vector = np.ndarray | SparseVector


@dataclass
class Record:
    id: str
    payload: dict[str, Any]
    vectors: dict[str, Vector] = field(default_factory=dict)


@dataclass
class ScoredPoint:
    id: str
    score: float
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Condition:
    """One payload condition. ``eq``: value; ``in``: list of values; ``range``: gt/gte/lt/lte dict."""

    key: str
    op: Literal["eq", "in", "range"]
    value: Any


@dataclass(frozen=True)
class Filter:
    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.must or self.must_not)


VectorSelector = bool | Sequence[str]  # all named vectors, none, or these names


@dataclass(frozen=True)
class SearchRequest:
    """One nearest-neighbour search on a named vector, for :meth:`VectorStore.search_batch`.

    ``keys`` limits the payload returned (the catalog id always comes back; None: all of it);
    ``ids`` scores only those items, for the exact scores of known items on another vector.
    """

    vector_name: str
    vector: Vector
    limit: int
    filter: Filter | None = None
    offset: int = 0
    with_vectors: VectorSelector = False
    keys: Sequence[str] | None = None
    ids: Sequence[str] | None = None


class SingleSearch:
    """``search`` as a batch of one, for adapters that implement ``search_batch``."""

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[list[ScoredPoint]]:
        raise NotImplementedError

    def search(
        self,
        vector_name: str,
        vector: np.ndarray,
        limit: int,
        flt: Filter | None = None,
        offset: int = 0,
        with_vectors: bool = False,
    ) -> list[ScoredPoint]:
        return self.search_batch([SearchRequest(vector_name, vector, limit, flt, offset, with_vectors)])[0]


@runtime_checkable
class VectorStore(Protocol):
    """Storage of products: named dense vectors (cosine) plus payload."""

    def schema(self) -> StoreSchema | None:
        """The schema recorded at creation, or None for an empty, new store."""

    def ensure_schema(self, schema: StoreSchema, layout: StoreLayout | None = None) -> None:
        """Create the collection with ``schema`` (placed as ``layout`` says), or check that its dense vectors
        match (raise SchemaMismatch) and add the sparse vectors and multivectors it lacks, recorded as not
        filled yet. An existing collection keeps the layout it was created with."""

    def upsert(self, records: Sequence[Record]) -> None: ...

    def update_vectors(self, records: Sequence[Record]) -> None:
        """Set the vectors each record carries on its stored item; its payload and other vectors stay."""

    def set_sparse_model(self, name: str, model_id: str) -> None:
        """Record that every stored item's sparse vector ``name`` now comes from ``model_id``."""

    def set_multi_filled(self, name: str) -> None:
        """Record that every stored item has the multivector ``name``."""

    def facet(self, key: str, limit: int) -> dict[str, int]:
        """Up to ``limit`` of the most frequent values of an indexed keyword field, with their counts."""

    def retrieve(
        self, ids: Sequence[str], with_vectors: VectorSelector = False, keys: Sequence[str] | None = None
    ) -> list[Record]:
        """Records for the ids that exist, in the order asked; missing ids are skipped."""

    def delete(self, ids: Sequence[str]) -> None: ...

    def count(self, flt: Filter | None = None) -> int: ...

    def search(
        self,
        vector_name: str,
        vector: np.ndarray,
        limit: int,
        flt: Filter | None = None,
        offset: int = 0,
        with_vectors: bool = False,
    ) -> list[ScoredPoint]:
        """Nearest points by cosine similarity on one named vector, filtered in the store."""

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[list[ScoredPoint]]:
        """Several searches planned and run as one call; one result list per request, in order."""

    def search_union(
        self, vectors: dict[str, Vector], limit: int, flt: Filter | None = None
    ) -> dict[str, list[ScoredPoint]]:
        """Each named vector's (dense or sparse) ``limit`` nearest (filtered), then every point of their union scored
        exactly on every named vector: one list per name, best first, payloads holding only the
        catalog id. One call, so fusing channels needs no second round trip for missing scores."""

    def scroll(self, keys: Iterable[str] | None = None, batch: int = 1024) -> Iterator[Record]:
        """Every record without vectors; ``keys`` limits the payload returned."""

    def ensure_payload_index(self, key: str, kind: FieldKind) -> None: ...

    def payload_indexes(self) -> dict[str, FieldKind]: ...

    def optimize(self, progress: ProgressFn | None = None) -> None:
        """Build the HNSW index after a bulk load; ``progress`` hears (vectors indexed, vectors)."""

    def begin_bulk_load(self) -> None:
        """Build no vector index until :meth:`optimize`; searches meanwhile stay exact (brute force)."""

    def unindexed(self) -> int:
        """About how many points are not in the vector index yet (a killed bulk load leaves some)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreLayout:
    """Where a new collection keeps its vectors. With ``vectors_on_disk`` the float32 originals are
    memory-mapped from disk and only their int8 copies (what searches walk) stay in RAM: a quarter of
    the vector memory, for a disk read per rescored candidate."""

    vectors_on_disk: bool = False


@dataclass(frozen=True)
class ServerAccess:
    """How a ``qdrant:`` store reaches its server: the API key, the tries a request gets before the server
    counts as gone (waiting 0.5 s, then twice as long each time), and each try's time limit."""

    api_key: str | None = None
    attempts: int = 5
    timeout_s: int = 60


def open_store(spec: str, access: ServerAccess | None = None) -> VectorStore:
    """Open a store from its spec: ``edge:PATH`` (embedded) or ``qdrant:URL`` (server or cluster)."""
    kind, _, target = spec.partition(":")
    match kind:
        case "edge":
            from .store_edge import EdgeStore

            return EdgeStore(target)
        case "qdrant":
            from .store_qdrant import QdrantOptions, QdrantStore

            access = access or ServerAccess()
            options = QdrantOptions(attempts=access.attempts, timeout_s=access.timeout_s)
            return QdrantStore(target, api_key=access.api_key, options=options)
        case _:
            raise StoreError(f"unknown store spec {spec!r}: use 'edge:PATH' (embedded) or 'qdrant:http://HOST:6333'")
