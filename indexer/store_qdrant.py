"""``qdrant:URL``: a Qdrant server or cluster, through qdrant-client.

Choose it when the index must be shared: several API replicas or indexers reading and
writing at once, a catalog larger than one machine, or replicas for availability. On a
cluster the collection is created with replication factor 2 and two shards per peer, so
it spreads over every node and survives losing one. For one process on one machine the
embedded ``edge:`` store is simpler and faster (no network hop per query).

The same adapter runs against ``QdrantClient(":memory:")`` (see :meth:`QdrantStore.from_client`),
qdrant-client's in-process stand-in for a server, which the contract tests use.

The schema (models, vector sizes, payload indexes) lives in the collection's metadata
under the ``lookalike`` key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from . import qdrant_config as server
from . import store_codec as codec
from .qdrant_config import QdrantOptions, is_transient
from .store import (
    FieldKind,
    Filter,
    ProgressFn,
    Record,
    ScoredPoint,
    SearchRequest,
    SingleSearch,
    SparseVector,
    StoreError,
    StoreLayout,
    StoreSchema,
    Vector,
    VectorSelector,
    point_id,
)

log = logging.getLogger(__name__)

META_KEY = "lookalike"
REPLICATION_FACTOR = 2
SHARDS_PER_PEER = 2


def _sparse(vector: SparseVector) -> qm.SparseVector:
    return qm.SparseVector(indices=list(vector.indices), values=list(vector.values))


T = TypeVar("T")


class QdrantStore(SingleSearch):
    """VectorStore on one collection of a Qdrant server, cluster or in-process client."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        collection: str = "lookalike",
        options: QdrantOptions | None = None,
    ) -> None:
        options = options or QdrantOptions()
        # no version probe at construction: opening a store must not touch the network
        client = QdrantClient(url=url, api_key=api_key, timeout=options.timeout_s, check_compatibility=False)
        self._setup(client, collection, options, where=url)

    @classmethod
    def from_client(
        cls, client: QdrantClient, collection: str = "lookalike", options: QdrantOptions | None = None
    ) -> QdrantStore:
        """Wrap an existing client, e.g. ``QdrantClient(":memory:")``."""
        store = cls.__new__(cls)
        store._setup(client, collection, options or QdrantOptions(), where="client")
        return store

    def _setup(self, client: QdrantClient, collection: str, options: QdrantOptions, where: str) -> None:
        self._client = client
        self.collection = collection
        self.options = options
        self._where = f"collection {collection!r} at {where}"
        self._schema: StoreSchema | None = None
        self._indexes: dict[str, FieldKind] = {}
        self._local: bool | None = None
        self._retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(options.attempts),
            wait=wait_exponential(multiplier=options.backoff_s, max=options.backoff_max_s),
            before_sleep=lambda rs: log.warning(
                "%s: attempt %d failed (%s), retrying", self._where, rs.attempt_number, rs.outcome.exception()
            ),
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"QdrantStore({self._where})"

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------

    def schema(self) -> StoreSchema | None:
        if self._schema is None:
            self._load_meta()
        return self._schema

    def ensure_schema(self, schema: StoreSchema, layout: StoreLayout | None = None) -> None:
        if self.schema() is not None:
            assert self._schema is not None
            codec.check_schema(
                self._schema,
                schema,
                where=self._where,
                fix="index into another collection, or delete this one and re-index.",
            )
            self._add_vectors(schema)
            return
        self._call(
            self._client.create_collection,
            self.collection,
            vectors_config={
                name: qm.VectorParams(
                    size=size,
                    distance=qm.Distance.COSINE,
                    on_disk=server.on_disk(layout),
                    multivector_config=server.MAX_SIM if name in schema.multi else None,
                    hnsw_config=server.hnsw(size),
                )
                for name, size in schema.vectors.items()
            },
            sparse_vectors_config={name: server.SPARSE for name in schema.sparse} or None,
            metadata={META_KEY: codec.meta_to_json(schema, {})},
            quantization_config=server.QUANTIZED,
            hnsw_config=server.hnsw(max(schema.vectors.values(), default=1)),  # for vectors added later
            **self._layout(),
        )
        self._schema, self._indexes = schema, {}
        log.info("created %s with vectors %s", self._where, schema.vectors)

    def _add_vectors(self, schema: StoreSchema) -> None:
        """Sparse vectors and multivectors for a collection made before them."""
        sparse, multi, added = codec.additions(self._require_schema(), schema)
        if not (sparse or multi):
            return
        configs = {
            name: qm.SparseVectorNameConfig(sparse=qm.SparseVectorConfig(modifier=qm.Modifier.IDF)) for name in sparse
        }
        for name in multi:
            dense = qm.DenseVectorConfig(
                size=schema.vectors[name], distance=qm.Distance.COSINE, multivector_config=server.MAX_SIM
            )
            configs[name] = qm.DenseVectorNameConfig(dense=dense)
        for name, config in configs.items():
            self._call(self._client.create_vector_name, self.collection, vector_name=name, vector_name_config=config)
        self._write_meta(added)
        log.info("%s: added vector(s) %s", self._where, list(configs))

    def set_sparse_model(self, name: str, model_id: str) -> None:
        schema = self._require_schema()
        if name not in schema.sparse:
            raise StoreError(f"{self._where} has no sparse vector {name!r}")
        self._write_meta(replace(schema, sparse={**schema.sparse, name: model_id}))

    def set_multi_filled(self, name: str) -> None:
        schema = self._require_schema()
        if name not in schema.multi:
            raise StoreError(f"{self._where} has no multivector {name!r}")
        self._write_meta(replace(schema, multi={**schema.multi, name: "filled"}))

    def _write_meta(self, schema: StoreSchema, indexes: dict[str, FieldKind] | None = None) -> None:
        indexes = self._indexes if indexes is None else indexes
        self._call(
            self._client.update_collection,
            self.collection,
            metadata={META_KEY: codec.meta_to_json(schema, indexes)},
        )
        self._schema, self._indexes = schema, indexes

    def _layout(self) -> dict[str, int]:
        """Shards and replicas for a new collection; nothing in the in-process client."""
        if self._is_local():
            return {}
        status = self._call(self._client.cluster_status)
        peers = len(status.peers) if getattr(status, "status", "disabled") == "enabled" else 1
        # a replica on the same peer protects nothing, so one node gets factor 1
        return {"shard_number": SHARDS_PER_PEER * peers, "replication_factor": min(REPLICATION_FACTOR, peers)}

    def _params(self, params: qm.SearchParams) -> qm.SearchParams | None:
        # The in-process client always searches exactly, and warns about any search params.
        return None if self._is_local() else params

    def _is_local(self) -> bool:
        if self._local is None:
            try:
                self._client.cluster_status()
                self._local = False
            except NotImplementedError:
                self._local = True
            except Exception:
                # a real server that failed to answer; the retried call that follows reports it
                self._local = False
        return self._local

    def ensure_payload_index(self, key: str, kind: FieldKind) -> None:
        codec.check_field_kind(key, kind)
        schema = self._require_schema()
        if self._indexes.get(key) == kind:
            return
        # the in-process client keeps no payload indexes and warns on each; the kind is still recorded
        if not self._is_local():
            self._call(
                self._client.create_payload_index,
                self.collection,
                field_name=key,
                field_schema=server.INDEX_TYPES[kind],
                wait=True,
            )
        self._write_meta(schema, {**self._indexes, key: kind})

    def payload_indexes(self) -> dict[str, FieldKind]:
        self.schema()
        return dict(self._indexes)

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        points = [
            qm.PointStruct(id=p.id, vector=p.vectors, payload=p.payload)
            for p in codec.to_points(records, self._require_schema(), _sparse)
        ]
        size = self.options.batch_size
        batches = [points[i : i + size] for i in range(0, len(points), size)]

        def send(batch: list[qm.PointStruct]) -> None:
            # wait=True: once upsert returns, reads see the points, and a killed indexer resumes
            # from what the server has really applied
            self._call(self._client.upsert, self.collection, points=batch, wait=True)

        # Threads over one shared HTTP client rather than upload_points(parallel=N): that starts a
        # process pool on every call (the indexer calls once per encoder batch), retries without
        # backoff, and reports a failed worker as a bare RuntimeError.
        workers = 1 if self._is_local() else min(self.options.parallel, len(batches))
        if workers <= 1:
            for batch in batches:
                send(batch)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qdrant-upsert") as pool:
            for _ in pool.map(send, batches):
                pass

    def update_vectors(self, records: Sequence[Record]) -> None:
        if not records:
            return
        points = [
            qm.PointVectors(id=p.id, vector=p.vectors)
            for p in codec.to_points(records, self._require_schema(), _sparse, payload=False)
        ]
        self._call(self._client.update_vectors, self.collection, points=points, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._call(
            self._client.delete,
            self.collection,
            points_selector=qm.PointIdsList(points=[point_id(i) for i in ids]),
            wait=True,
        )

    def begin_bulk_load(self) -> None:
        self._require_schema()
        if not self._is_local():
            self._set_indexing_threshold(0)

    def unindexed(self) -> int:
        if self._is_local() or self.schema() is None:
            return 0
        info = self._call(self._client.get_collection, self.collection)
        points = info.points_count or 0
        if info.config.optimizer_config.indexing_threshold == 0:
            return points  # a bulk load that never reached optimize()
        return max(0, points - (info.indexed_vectors_count or 0) // len(self._require_schema().vectors))

    def optimize(self, progress: ProgressFn | None = None) -> None:
        """A server builds HNSW by itself (once a bulk load allows it again); wait, bounded, until it is done."""
        schema = self._require_schema()
        if self._is_local():
            return
        if self._set_indexing_threshold(server.INDEXING_THRESHOLD_KB):
            time.sleep(1.0)  # the server may still answer GREEN before its optimizers start
        deadline = time.monotonic() + self.options.optimize_wait_s
        while True:
            info = self._call(self._client.get_collection, self.collection)
            vectors = (info.points_count or 0) * len(schema.vectors)
            if progress is not None:
                progress(min(info.indexed_vectors_count or 0, vectors), vectors)
            if info.status == qm.CollectionStatus.GREEN:
                log.info("%s optimized: %s vectors indexed", self._where, info.indexed_vectors_count)
                if progress is not None:
                    progress(vectors, vectors)  # segments below the threshold are served without a graph
                return
            if time.monotonic() > deadline:
                log.warning(
                    "%s still optimizing after %.0f s; searches work meanwhile",
                    self._where,
                    self.options.optimize_wait_s,
                )
                return
            time.sleep(1.0)

    def _set_indexing_threshold(self, kb: int) -> bool:
        info = self._call(self._client.get_collection, self.collection)
        if info.config.optimizer_config.indexing_threshold == kb:
            return False
        self._call(
            self._client.update_collection,
            self.collection,
            optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=kb),
        )
        return True

    def close(self) -> None:
        self._client.close()

    # -- reads ----------------------------------------------------------------------------------

    def count(self, flt: Filter | None = None) -> int:
        if self.schema() is None:
            return 0
        result = self._call(
            self._client.count, self.collection, count_filter=codec.to_filter(flt, server.MODELS), exact=True
        )
        return result.count

    def retrieve(
        self, ids: Sequence[str], with_vectors: VectorSelector = False, keys: Sequence[str] | None = None
    ) -> list[Record]:
        if not ids or self.schema() is None:
            return []
        names = codec.point_names(ids)
        wanted = codec.payload_wanted(keys, named=True)
        found = self._call(
            self._client.retrieve,
            self.collection,
            ids=list(names),
            with_payload=wanted,
            with_vectors=codec.vector_selector(with_vectors),
        )
        if wanted is False:
            return codec.by_point_id(ids, names, ((r.id, r.vector) for r in found))
        return codec.in_order(ids, (codec.to_record(r.payload, r.vector) for r in found))

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[list[ScoredPoint]]:
        if not requests:
            return []
        schema = self.schema()
        batch = []
        for r in requests:
            batch.append(
                qm.QueryRequest(
                    query=codec.query_vector(schema, r.vector_name, r.vector, _sparse),
                    using=r.vector_name,
                    filter=codec.to_filter(r.filter, server.MODELS, r.ids),
                    limit=r.limit,
                    offset=r.offset,
                    with_payload=codec.payload_wanted(r.keys, named=r.ids is not None),
                    with_vector=codec.vector_selector(r.with_vectors),
                    params=self._params(server.EXACT if r.ids is not None else server.RESCORED),
                )
            )
        results = self._call(self._client.query_batch_points, self.collection, requests=batch)
        return [
            codec.to_scored_list(r, [(p.id, p.score, p.payload, p.vector) for p in result.points])
            for r, result in zip(requests, results, strict=True)
        ]

    def search_union(
        self, vectors: dict[str, Vector], limit: int, flt: Filter | None = None
    ) -> dict[str, list[ScoredPoint]]:
        if not vectors:
            return {}
        schema = self._require_schema()
        queries = {n: codec.query_vector(schema, n, v, _sparse) for n, v in vectors.items()}
        condition = codec.to_filter(flt, server.MODELS)
        prefetch = [
            qm.Prefetch(
                query=q,
                using=n,
                limit=limit,
                filter=condition,
                params=None if n in schema.sparse else self._params(server.CANDIDATES),
            )
            for n, q in queries.items()
        ]
        names = list(queries)
        batch = [
            qm.QueryRequest(
                query=queries[n],
                using=n,
                prefetch=prefetch,
                limit=limit * len(names),
                with_payload=codec.payload_wanted([]) if j == 0 else False,
                with_vector=False,
                params=self._params(server.EXACT),
            )
            for j, n in enumerate(names)
        ]
        results = self._call(self._client.query_batch_points, self.collection, requests=batch)
        return codec.union_lists(names, [[(p.id, p.score, p.payload) for p in r.points] for r in results])

    def facet(self, key: str, limit: int) -> dict[str, int]:
        if self.schema() is None:
            return {}
        found = self._call(self._client.facet, self.collection, key=key, limit=limit, exact=True)
        return {str(hit.value): int(hit.count) for hit in found.hits}

    def scroll(self, keys: Iterable[str] | None = None, batch: int = 1024) -> Iterator[Record]:
        if self.schema() is None:
            return
        wanted = codec.payload_wanted(keys)
        offset = None
        while True:
            page, offset = self._call(
                self._client.scroll,
                self.collection,
                limit=batch,
                offset=offset,
                with_payload=wanted,
                with_vectors=False,
            )
            for r in page:
                yield codec.to_record(r.payload)
            if offset is None:
                return

    # -- internals ------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, repeating transient failures; every failure becomes a StoreError."""
        try:
            # a copy per call: upserts run in threads, and a Retrying object keeps per-call state
            return self._retrying.copy()(fn, *args, **kwargs)
        except StoreError:
            raise
        except Exception as e:
            hint = f" (gave up after {self.options.attempts} attempts)" if is_transient(e) else ""
            detail = e.source if isinstance(e, ResponseHandlingException) else e
            raise StoreError(f"{self._where}: {detail}{hint}") from e

    def _load_meta(self) -> None:
        if not self._call(self._client.collection_exists, self.collection):
            return
        info = self._call(self._client.get_collection, self.collection)
        meta = (info.config.metadata or {}).get(META_KEY)
        if meta is None:
            raise StoreError(
                f"{self._where} exists but records no lookalike schema: it was made by another tool, "
                "or the server is too old to keep collection metadata. Use another collection."
            )
        self._schema, self._indexes = codec.meta_from_json(meta, self._where)

    def _require_schema(self) -> StoreSchema:
        schema = self.schema()
        if schema is None:
            raise StoreError(f"{self._where} does not exist yet: call ensure_schema first")
        return schema
