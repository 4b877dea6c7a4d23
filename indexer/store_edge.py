"""``edge:PATH``: the embedded store, Qdrant's engine in-process via qdrant-edge-py.

Choose it (the default) for one machine: a laptop, a single API server, a batch job.
There is no server to run, filtered searches take milliseconds at 100k+ items once
optimized, and the data is a plain directory you can copy. Leave it for ``qdrant:URL``
when several processes must read and write the same index at once (only one process
may open a path), or when the catalog outgrows one machine's memory and disk.

Layout of PATH: the shard's own files (``wal/``, ``segments/``, ``edge_config.json``)
and ``lookalike.json``, which records the models, vector sizes, payload indexes and the facet
fields whose combinations each point carries as keys (facet_keys.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from . import edge_config as edge
from . import edge_filters, edge_meta, facet_keys, files
from . import store_codec as codec
from .bulk import optimize_shard_in_child
from .store import (
    ID_KEY,
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

META_FILE = edge_meta.META_FILE
_SHARD_MARKER = "edge_config.json"
# Writes stop while this much is still free on the store's disk (see EdgeStore._check_free_space).
MIN_FREE_BYTES = 256 * 2**20


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(vector.indices), list(vector.values))


class EdgeStore(SingleSearch):
    """VectorStore on a qdrant-edge shard in the directory ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._meta_path = self.path / META_FILE
        self._schema: StoreSchema | None = None
        self._indexes: dict[str, FieldKind] = {}
        self._shard: qe.EdgeShard | None = None
        self._cold = False  # the float32 originals are on disk (StoreLayout.vectors_on_disk)
        # Point id (as an int) -> catalog id of every point, built on first need. Reading the catalog id
        # from the payload was most of a search's time (two thirds of an unfiltered 3-channel union at
        # 100k items), and one process alone may open the shard, so every write passes through here and
        # the map stays exact. Writes hold the lock across the shard update, so a build never misses one.
        self._names: dict[int, str] | None = None
        self._names_lock = threading.Lock()
        # The facet fields whose combinations every point carries as keys (facet_keys.py); None until
        # the first write into an empty store decides them, [] for a store filled before them.
        self._combined: list[str] | None = None
        if self._meta_path.exists():
            self._read_meta()
        if (self.path / _SHARD_MARKER).exists():
            if self._schema is None:
                raise StoreError(
                    f"{self.path} holds a Qdrant edge shard but no {META_FILE}: it was not made by "
                    "lookalike. Use another --data-dir."
                )
            self._shard = self._open(lambda: qe.EdgeShard.load(str(self.path)))
            self._cold = edge.cold_vectors(self.path / _SHARD_MARKER)

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r})"

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------

    def schema(self) -> StoreSchema | None:
        return self._schema

    def ensure_schema(self, schema: StoreSchema, layout: StoreLayout | None = None) -> None:
        if self._schema is not None:
            codec.check_schema(
                self._schema,
                schema,
                where=f"the store at {self.path}",
                fix="index into a new store with another --data-dir, or re-index everything into it.",
            )
        else:
            # metadata first: a crash before the shard exists leaves a store that creates it on the
            # next run, while a shard without metadata could not be told apart from a foreign one
            self._schema = schema
            self._write_meta()
        if self._shard is None:
            config = edge.shard_config(self._schema, layout)
            self._shard = self._open(lambda: qe.EdgeShard.create(str(self.path), config))
            self._cold = edge.vectors_on_disk(layout)
            for key, kind in self._indexes.items():
                self._update(qe.UpdateOperation.create_field_index(key, edge.INDEX_TYPES[kind]))
            if self._combined:
                self._index_combined()
            log.info("created store %s with vectors %s, sparse %s", self.path, schema.vectors, sorted(schema.sparse))
        self._add_vectors(schema)

    def _add_vectors(self, schema: StoreSchema) -> None:
        """A store made before: the sparse vectors and multivectors it lacks are added to the shard."""
        sparse, multi, self._schema = codec.additions(self._require_schema(), schema)
        if not (sparse or multi):
            return
        for name in sparse:
            self._update(qe.UpdateOperation.create_sparse_vector(name, modifier=qe.Modifier.Idf))
        for name in multi:
            size = schema.vectors[name]
            self._update(qe.UpdateOperation.create_dense_vector(name, size, qe.Distance.Cosine, edge.MAX_SIM))
        self._write_meta()
        log.info("store %s: added vector(s) %s", self.path, [*sparse, *multi])

    def set_sparse_model(self, name: str, model_id: str) -> None:
        schema = self._require_schema()
        if name not in schema.sparse:
            raise StoreError(f"the store at {self.path} has no sparse vector {name!r}")
        self._schema = replace(schema, sparse={**schema.sparse, name: model_id})
        self._write_meta()

    def set_multi_filled(self, name: str) -> None:
        schema = self._require_schema()
        if name not in schema.multi:
            raise StoreError(f"the store at {self.path} has no multivector {name!r}")
        self._schema = replace(schema, multi={**schema.multi, name: "filled"})
        self._write_meta()

    def ensure_payload_index(self, key: str, kind: FieldKind) -> None:
        codec.check_field_kind(key, kind)
        if self._indexes.get(key) == kind:
            return
        self._update(qe.UpdateOperation.create_field_index(key, edge.INDEX_TYPES[kind]))
        self._indexes[key] = kind
        self._write_meta()

    def payload_indexes(self) -> dict[str, FieldKind]:
        return dict(self._indexes)

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._check_free_space()
        converted = codec.to_points(records, self._require_schema(), _sparse)
        fields = self._combined_fields(converted)
        for p in converted:
            p.payload.pop(facet_keys.KEY, None)
            if fields:
                p.payload[facet_keys.KEY] = facet_keys.point_keys(p.payload, fields)
        points = [qe.Point(p.id, p.vectors, p.payload) for p in converted]
        with self._names_lock:
            # Named before they can be found: a search that meets a new point knows what it is.
            if self._names is not None:
                self._names.update((uuid.UUID(p.id).int, p.payload[ID_KEY]) for p in converted)
            # Durable on return without flush(): the engine appends the operation to its write-ahead
            # log before applying it, and the log is replayed on load. A killed process (kill -9) loses
            # nothing the OS already holds; only power loss before the OS writes back can, as with any
            # database that does not fsync each write. Segments are flushed on optimize() and close().
            self._update(qe.UpdateOperation.upsert_points(points))

    def _combined_fields(self, first: Sequence[codec.PointData]) -> list[str]:
        """The facet fields to combine: chosen from the first points written into an empty store."""
        if self._combined is None:
            if self._call(self._require_shard().info).points_count:
                self._combined = []
            else:
                keyword = [k for k, kind in self._indexes.items() if kind == "keyword"]
                self._combined = facet_keys.facet_fields([p.payload for p in first], keyword)
                if self._combined:
                    self._index_combined()
                    log.info("store %s: facet combinations of %s are stored as keys", self.path, self._combined)
            self._write_meta()  # before the points: none is written without the keys the store expects
        return self._combined

    def _index_combined(self) -> None:
        self._update(qe.UpdateOperation.create_field_index(facet_keys.KEY, edge.INDEX_TYPES["keyword"]))

    def _filter(self, flt: Filter | None, ids: Sequence[str] | None = None, searched: bool = True) -> Any:
        """``flt`` in the engine's terms, with the combined keys of the facets it names where they help
        (not among known ``ids``: the engine reads those points by id, walking no list)."""
        if ids is not None:
            return codec.to_filter(flt, edge.MODELS, ids)
        return edge_filters.engine_filter(self._narrowed(flt, searched), self._estimate)

    def _narrowed(self, flt: Filter | None, searched: bool = True) -> Filter | None:
        return edge_filters.narrowed(flt, self._combined or (), self._estimate if searched else None)

    def _estimate(self, condition: Any) -> int:
        # The engine's estimate reads only the indexes' value counts: no posting list is walked.
        return self._call(self._require_shard().count, qe.CountRequest(exact=False, filter=condition))

    def _check_free_space(self) -> None:
        # The engine maps its files into memory: a write that meets a full disk is not an error it can
        # return but a SIGBUS that kills the whole process. So writes stop while there is room left.
        free = files.free_bytes(self.path)
        if free is not None and free < MIN_FREE_BYTES:
            raise StoreError(
                f"edge store at {self.path}: the disk is nearly full ({free / 2**20:.0f} MiB free; writes stop below "
                f"{MIN_FREE_BYTES / 2**20:.0f} MiB). Free some space and run the index again: what was stored is kept."
            )

    def update_vectors(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._check_free_space()
        converted = codec.to_points(records, self._require_schema(), _sparse, payload=False)
        self._update(qe.UpdateOperation.update_vectors([qe.PointVectors(p.id, p.vectors) for p in converted]))

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        pids = [point_id(i) for i in ids]
        with self._names_lock:
            self._update(qe.UpdateOperation.delete_points(pids))
            if self._names is not None:
                for pid in pids:
                    self._names.pop(uuid.UUID(pid).int, None)

    def optimize(self, progress: ProgressFn | None = None) -> None:
        self._check_free_space()  # building the graph writes new segments
        shard = self._require_shard()
        if progress is None:
            self._call(shard.optimize)
            self._call(shard.flush)
        else:
            # Built in a child process so that this one can draw the progress bar (see bulk.py).
            vectors = self._call(shard.info).points_count * len(self._require_schema().vectors)
            self.close()
            try:
                optimize_shard_in_child(self.path, vectors, progress)
            finally:
                self._shard = self._open(lambda: qe.EdgeShard.load(str(self.path)))
        info = self._call(self._require_shard().info)
        log.info(
            "optimized %s: %d points in %d segments, %d vectors in HNSW",
            self.path,
            info.points_count,
            info.segments_count,
            info.indexed_vectors_count,
        )

    def begin_bulk_load(self) -> None:
        """Nothing to do: this engine builds no index until optimize() is called (edge.INDEXING_THRESHOLD_KB)."""

    def unindexed(self) -> int:
        if self._shard is None:
            return 0
        info = self._call(self._shard.info)
        names = len(self._require_schema().vectors)
        return max(0, info.points_count - info.indexed_vectors_count // names)

    def close(self) -> None:
        if self._shard is None:
            return
        shard, self._shard = self._shard, None
        try:
            shard.flush()
        finally:
            shard.close()

    # -- reads ----------------------------------------------------------------------------------

    def count(self, flt: Filter | None = None) -> int:
        if self._shard is None:
            return 0
        request = qe.CountRequest(exact=True, filter=self._filter(flt, searched=False))
        return self._call(self._shard.count, request)

    def retrieve(
        self, ids: Sequence[str], with_vectors: VectorSelector = False, keys: Sequence[str] | None = None
    ) -> list[Record]:
        if not ids or self._shard is None:
            return []
        names = codec.point_names(ids)
        wanted = codec.payload_wanted(keys, named=True)
        found = self._call(
            self._shard.retrieve,
            list(names),
            with_payload=_payload_selector(wanted),
            with_vector=codec.vector_selector(with_vectors),
        )
        if wanted is False:
            return codec.by_point_id(ids, names, ((r.id, r.vector) for r in found))
        return codec.in_order(ids, (codec.to_record(r.payload, r.vector) for r in found))

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[list[ScoredPoint]]:
        if not requests:
            return []
        # Every point can be named from the map, so a search wanting only the catalog id reads no payload.
        wanted = [codec.payload_wanted(r.keys, named=True) for r in requests]
        own = [self._reads_own_vector(r) for r in requests]
        batch = [
            qe.QueryRequest(
                limit=r.limit,
                offset=r.offset,
                query=qe.Query.Nearest(
                    codec.query_vector(self._schema, r.vector_name, r.vector, _sparse), using=r.vector_name
                ),
                filter=self._filter(r.filter, r.ids),
                with_payload=_payload_selector(w),
                with_vector=codec.vector_selector(r.with_vectors),
                params=self._search_params(r, o),
            )
            for r, w, o in zip(requests, wanted, own, strict=True)
        ]
        results = self._call(self._require_shard().query_batch, qe.QueryBatchRequest(batch))
        names = self._catalog_ids() if any(w is False for w in wanted) else None
        found = [
            codec.to_scored_list(r, [(h.id.int, h.score, None, h.vector) for h in hits], names)
            if w is False
            # The point id goes unread: the payload names the item.
            else codec.to_scored_list(r, [(None, h.score, h.payload, h.vector) for h in hits])
            for r, w, hits in zip(requests, wanted, results, strict=True)
        ]
        return [codec.scored_on_vectors(r, f) if o else f for r, f, o in zip(requests, found, own, strict=True)]

    def _reads_own_vector(self, r: SearchRequest) -> bool:
        """A top-k search on disk-held originals that returns the vector it searched, for one query row: its
        hits are scored on the vectors returned, not read from disk twice (once to rescore, once to return)."""
        asked = r.with_vectors is True or (not isinstance(r.with_vectors, bool) and r.vector_name in r.with_vectors)
        dense = r.vector_name not in self._require_schema().sparse and np.ndim(r.vector) == 1
        return self._cold and asked and r.ids is None and dense

    def _search_params(self, r: SearchRequest, own_vector: bool) -> Any:
        if r.ids is not None:
            # Scoring a known set of ids: scanned, or the graph search would walk (and may miss) them.
            return self._scoring(len(r.ids))
        if r.filter and (r.filter.must or r.filter.must_not):
            return edge.CANDIDATES_FILTERED if own_vector else edge.RESCORED_FILTERED
        return edge.CANDIDATES if own_vector else edge.RESCORED

    def search_union(
        self, vectors: dict[str, Vector], limit: int, flt: Filter | None = None
    ) -> dict[str, list[ScoredPoint]]:
        if not vectors:
            return {}
        queries = {
            n: qe.Query.Nearest(codec.query_vector(self._schema, n, v, _sparse), using=n) for n, v in vectors.items()
        }
        names = list(queries)
        shard = self._require_shard()
        condition = self._resolved(flt)
        # First the union, scored on the first vector: one graph search per vector, with the filter
        # (a sparse vector's is an inverted-index search, which has no quantized copies to rank on).
        sparse = self._require_schema().sparse
        candidates = edge.CANDIDATES if condition is None else edge.CANDIDATES_FILTERED
        prefetch = [
            qe.Prefetch(limit=limit, query=q, filter=condition, params=None if n in sparse else candidates)
            for n, q in queries.items()
        ]
        first = qe.QueryRequest(
            limit=limit * len(names),
            prefetches=prefetch,
            query=queries[names[0]],
            params=self._scoring(limit * len(names)),
            with_payload=False,
            with_vector=False,
        )
        union = self._call(shard.query, first)
        if not union:
            return {n: [] for n in names}
        # A hit makes a new uuid.UUID each time its id is read, and UUIDs hash in Python: each id is
        # read once, and the lists are keyed by its int.
        uuids = [h.id for h in union]
        lists = [[(u.int, h.score, None) for u, h in zip(uuids, union, strict=True)]]
        if len(names) > 1:
            # Then the same points, by point id, scored exactly on the other vectors.
            among = qe.Filter(must=[qe.HasIdCondition(set(uuids))])
            rest = [
                qe.QueryRequest(
                    limit=len(union),
                    query=queries[n],
                    filter=among,
                    with_payload=False,
                    with_vector=False,
                    params=self._scoring(len(union)),
                )
                for n in names[1:]
            ]
            results = self._call(shard.query_batch, qe.QueryBatchRequest(rest))
            lists += [[(h.id.int, h.score, None) for h in hits] for hits in results]
        return codec.union_lists(names, lists, self._catalog_ids())

    def _resolved(self, flt: Filter | None) -> Any:
        """The engine's filter for a fused query: for a filter that matches few points out of long
        posting lists, the ids of those points (edge_filters.resolved)."""
        return edge_filters.resolved(self._narrowed(flt), self._estimate, self._matching)

    def _matching(self, condition: Any, limit: int) -> list[Any]:
        request = qe.ScrollRequest(limit=limit, filter=condition, with_payload=False, with_vector=False)
        return [r.id for r in self._call(self._require_shard().scroll, request)[0]]

    def _scoring(self, points: int) -> Any:
        """How a known set of ``points`` is scored (see edge_config.SCANNED_MAX)."""
        return edge.CANDIDATES if self._cold and points <= edge.SCANNED_MAX else edge.EXACT

    def facet(self, key: str, limit: int) -> dict[str, int]:
        if self._shard is None:
            return {}
        found = self._call(self._shard.facet, qe.FacetRequest(key, limit=limit, exact=True))
        return {str(hit.value): int(hit.count) for hit in found.hits}

    def scroll(self, keys: Iterable[str] | None = None, batch: int = 1024) -> Iterator[Record]:
        if self._shard is None:
            return
        for page in self._pages(batch, _payload_selector(codec.payload_wanted(keys))):
            yield from (codec.to_record(r.payload) for r in page)

    def _pages(self, limit: int, with_payload: Any) -> Iterator[list[Any]]:
        """Every point, ``limit`` a page, without vectors."""
        offset = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=with_payload, with_vector=False)
            page, offset = self._call(self._require_shard().scroll, request)
            yield page
            if offset is None:
                return

    # -- internals ------------------------------------------------------------------------------

    def _catalog_ids(self) -> dict[int, str]:
        names = self._names
        if names is not None:
            return names
        with self._names_lock:
            if self._names is None:
                started = time.perf_counter()
                built: dict[int, str] = {}
                for page in self._pages(10_000, qe.PayloadSelector.Include([ID_KEY])):
                    built.update((r.id.int, str(r.payload.get(ID_KEY, ""))) for r in page)
                self._names = built
                log.info(
                    "%s: catalog ids of %d points read in %.2fs", self.path, len(built), time.perf_counter() - started
                )
            return self._names

    def _open(self, opener: Any) -> qe.EdgeShard:
        try:
            return opener()
        except Exception as e:
            if "WouldBlock" in str(e):
                raise StoreError(
                    f"the store at {self.path} is open in another process, and only one process may "
                    "open an embedded store at a time. Stop the other process (indexer, API, UI), or "
                    "serve the index from a Qdrant server (qdrant:URL) to share it."
                ) from e
            raise StoreError(f"cannot open the store at {self.path}: {e}") from e

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # the binding raises bare Exception; callers should only have to catch StoreError
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"store {self.path}: {e}") from e

    def _update(self, op: Any) -> None:
        self._call(self._require_shard().update, op)

    def _require_schema(self) -> StoreSchema:
        if self._schema is None:
            raise StoreError(f"the store at {self.path} has no schema yet: call ensure_schema first")
        return self._schema

    def _require_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            self._require_schema()
            raise StoreError(f"the store at {self.path} is closed")
        return self._shard

    def _read_meta(self) -> None:
        self._schema, self._indexes, self._combined = edge_meta.read(self._meta_path)

    def _write_meta(self) -> None:
        edge_meta.write(self._meta_path, self._require_schema(), self._indexes, self._combined)


def _payload_selector(wanted: bool | list[str]) -> Any:
    if isinstance(wanted, list):
        return qe.PayloadSelector.Include(wanted)
    # The combined keys are the store's own: no payload read back carries them.
    return qe.PayloadSelector.Exclude([facet_keys.KEY]) if wanted else False
