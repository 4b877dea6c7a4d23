"""How lookalike sets up the embedded engine (qdrant-edge): vector, sparse and payload-index
parameters, the search parameters of each kind of search, and where a shard keeps its vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from . import store_codec as codec
from .store import StoreLayout, StoreSchema

MODELS = codec.FilterModels(
    Filter=qe.Filter,
    FieldCondition=qe.FieldCondition,
    MatchValue=qe.MatchValue,
    MatchAny=qe.MatchAny,
    Range=qe.RangeFloat,
    has_id=lambda ids: qe.HasIdCondition(set(ids)),
    supports_bool_match=False,
)
# Sparse vectors are BM25 term weights: the engine multiplies them by each term's inverse document
# frequency at query time, so a store's IDF follows its items with no refit.
SPARSE = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, full_scan_threshold=codec.FULL_SCAN_POINTS)


# A product's photos: scored by the photo that matches best.
MAX_SIM = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
QUANTIZED = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=codec.QUANTILE, always_ram=True)
# With the originals on disk, the int8 copies are memory-mapped and pre-loaded (page cache) rather than
# held on the heap: searches read them from RAM all the same, but the graph build no longer holds them
# in anonymous memory beside the segment it replaces (the build's peak), and under memory pressure the
# kernel can drop pages instead of killing the process.
QUANTIZED_MAPPED = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=codec.QUANTILE, memory=qe.Memory.Cached)
RESCORED = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=codec.OVERSAMPLING))
EXACT = qe.SearchParams(exact=True)
# A filtered graph search. The payload indexes have no graph links of their own (INDEX_TYPES), so a search
# whose filter matches more points than the engine scans exactly keeps to the graph's matching nodes, and
# misses the matches it cannot reach from them. On 300k items (recall@10 against exact, one 512-d
# channel, benchmarks/filter_recall.py): a colour and a pattern (2.5%) 0.21, a category under a price
# 0.51, a category 0.74. With ACORN (the engine also steps over non-matching neighbours, for a filter of
# several conditions) and a wider beam: 1.00, 0.99 and 0.91, for 2-4x the time of the graph alone.
FILTERED_EF = 200
ACORN = qe.AcornSearchParams(enable=True)
RESCORED_FILTERED = qe.SearchParams(hnsw_ef=FILTERED_EF, quantization=RESCORED.quantization, acorn=ACORN)
# A union's candidates: every one is then scored again on every vector (see SCANNED_MAX), so ranking
# on the int8 vectors alone is enough (a filtered union at 100k items ~7% faster; demo eval unchanged).
CANDIDATES = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=False))
CANDIDATES_FILTERED = qe.SearchParams(hnsw_ef=FILTERED_EF, quantization=CANDIDATES.quantization, acorn=ACORN)
# Scoring a known set of points (a union's candidates, a list of ids) on every vector: exactly when the
# float32 originals are in RAM. Originals on disk are read with a disk read per vector, which the page
# cache does not keep (at 500k items a 3-vector union of 300 took 28 ms against 4 ms on the int8
# copies in RAM), so there the set is scored on the int8 copies (scores within 0.006 of exact; each
# channel's top 10 of a union 96% the same, on random queries); hits found by a top-k search are still
# rescored on the originals. Only a set this small, which the engine scans point by point
# below its full-scan threshold: a larger one would be searched on the graph, which misses ids.
SCANNED_MAX = 1000
# A fused query's filter is resolved to the ids it matches once (EdgeStore._resolved) when it matches
# at most RESOLVED_MAX points, and the shortest posting list among its conditions is RESOLVED_WALK
# times longer than that, and longer than KEYED_MAX (a list the engine scans): only then do the walks
# saved outweigh carrying the ids. Measured side by
# side (benchmarks/scale.py's queries, store p50/p95 ms, originals on disk): filtered queries at 2M
# items (a category, price, colour and pattern: 2,360 matches in lists of 200k) 38/96 with the engine's
# filter, 56/65 resolved; at 100k 5.7/6.3 and 4.6/5.2. A colour and pattern at 100k (2,500 matches in
# lists of 10k) took 6.5 ms at p50 with the engine's filter and 18.5 resolved, so it keeps the engine's.
# Below the engine's full-scan threshold (codec.FULL_SCAN_POINTS) a search among known ids scans exactly them.
RESOLVED_MAX = 4000
# A search's filter names the combined facet keys (facet_keys.py) only when the shortest key's list is this
# long at most: then the engine scans those points (below its full-scan threshold for 512-d vectors) and
# reads them from the key's list instead of walking a facet's. A search on the graph would test the keys
# at every step instead, and be slower for them (300k items, benchmarks/filter_recall.py: a colour and a
# pattern, 7,500 matches, 10.5 ms at p50 with them, 5.3 without; a category and a colour, 3,000 matches,
# 3.3 with them, 6.2 without).
KEYED_MAX = 5000
RESOLVED_WALK = 20
# Payload indexes without the engine's per-value graph links ("filterable HNSW"): it would build, for
# every indexed field, a subgraph over each value's points, nearly one more graph per field. With six
# fields that tripled the build (100k items: 72 s against 24 s; 1M: 22 minutes, so 2M would miss an
# hour). Without the links a filtered graph search lost 2-3 of 100 true top-10 hits at 100k for a filter
# matching 1 in 12 items; a filter matching too few points for the graph is scanned exactly either way.
INDEX_TYPES: dict[str, Any] = {
    "keyword": qe.KeywordIndexParams(enable_hnsw=False),
    "integer": qe.IntegerIndexParams(enable_hnsw=False),
    "float": qe.FloatIndexParams(enable_hnsw=False),
    "bool": qe.BoolIndexParams(enable_hnsw=False),
}
# The engine indexes a segment only when its vectors exceed this many KB. Its default (about
# 10 MB) would leave small and medium catalogs on brute force even after optimize(); with 1 KB
# (the least: 0 turns indexing off) optimize() builds HNSW for all but toy stores, which brute
# force serves best anyway. The engine never optimizes on its own, so upserts stay cheap:
# callers decide when a load is big enough to be worth optimize().
INDEXING_THRESHOLD_KB = 1
# The engine's graph parameters (its defaults), and its full-scan threshold for each vector's size.
HNSW_M, EF_CONSTRUCT = 16, 100


def hnsw(size: int) -> qe.HnswIndexConfig:
    return qe.HnswIndexConfig(m=HNSW_M, ef_construct=EF_CONSTRUCT, full_scan_threshold=codec.full_scan_kb(size))


def shard_config(schema: StoreSchema, layout: StoreLayout | None) -> qe.EdgeConfig:
    """A new shard for ``schema``, its float32 originals placed as ``layout`` says."""
    return qe.EdgeConfig(
        vectors={
            name: qe.EdgeVectorParams(
                size=size,
                distance=qe.Distance.Cosine,
                quantization_config=QUANTIZED_MAPPED if vectors_on_disk(layout) else QUANTIZED,
                memory=memory(layout),
                multivector_config=MAX_SIM if name in schema.multi else None,
                hnsw_config=hnsw(size),
            )
            for name, size in schema.vectors.items()
        },
        sparse_vectors={name: SPARSE for name in schema.sparse} or None,
        # for vectors added later (create_dense_vector takes no graph parameters): the widest's threshold
        hnsw_config=hnsw(max(schema.vectors.values(), default=1)),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
    )


def vectors_on_disk(layout: StoreLayout | None) -> bool:
    return layout is not None and layout.vectors_on_disk


def memory(layout: StoreLayout | None) -> Any:
    # Cold: read from disk on each use, past the page cache; the engine's default (Cached) pre-loads them.
    return qe.Memory.Cold if vectors_on_disk(layout) else None


def cold_vectors(config_file: Path) -> bool:
    """Whether the shard keeps its dense originals on disk, as its own config says (exact scoring if unsure)."""
    try:
        vectors = json.loads(config_file.read_text(encoding="utf-8")).get("vectors", {})
        return any(str(v.get("memory", "")).lower() == "cold" for v in vectors.values())
    except (OSError, ValueError, AttributeError):
        return False
