"""How lookalike sets up a Qdrant server collection: vector, sparse and payload-index parameters,
the search parameters of each kind of search, and how the adapter talks to the server."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from qdrant_client import models as qm
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from . import store_codec as codec
from .store import StoreLayout

MODELS = codec.FilterModels(
    Filter=qm.Filter,
    FieldCondition=qm.FieldCondition,
    MatchValue=qm.MatchValue,
    MatchAny=qm.MatchAny,
    Range=qm.Range,
    has_id=lambda ids: qm.HasIdCondition(has_id=ids),
)
MAX_SIM = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)  # a product's best photo
# BM25 term weights, IDF applied by the server; filters scanned below the same threshold as the embedded engine's
SPARSE = qm.SparseVectorParams(
    modifier=qm.Modifier.IDF, index=qm.SparseIndexParams(full_scan_threshold=codec.FULL_SCAN_POINTS)
)


def hnsw(size: int) -> qm.HnswConfigDiff:
    """A vector's graph: the server's defaults, with the full-scan threshold of store_codec.FULL_SCAN_POINTS."""
    return qm.HnswConfigDiff(full_scan_threshold=codec.full_scan_kb(size))


QUANTIZED = qm.ScalarQuantization(
    scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=codec.QUANTILE, always_ram=True)
)
RESCORED = qm.SearchParams(quantization=qm.QuantizationSearchParams(rescore=True, oversampling=codec.OVERSAMPLING))
EXACT = qm.SearchParams(exact=True)
CANDIDATES = qm.SearchParams(quantization=qm.QuantizationSearchParams(rescore=False))  # as in edge_config
INDEX_TYPES: dict[str, qm.PayloadSchemaType] = {
    "keyword": qm.PayloadSchemaType.KEYWORD,
    "integer": qm.PayloadSchemaType.INTEGER,
    "float": qm.PayloadSchemaType.FLOAT,
    "bool": qm.PayloadSchemaType.BOOL,
}

# Qdrant's own default: segments with more vector data than this (in KB) get an HNSW graph. A bulk
# load sets 0 (no graph) until optimize() puts this back.
INDEXING_THRESHOLD_KB = 20_000


@dataclass(frozen=True)
class QdrantOptions:
    """How the adapter talks to the server."""

    batch_size: int = 256
    parallel: int = 4
    attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    timeout_s: int = 60
    optimize_wait_s: float = 600.0


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request is worth repeating: network trouble, overload or a 5xx."""
    if isinstance(exc, ResponseHandlingException | ResourceExhaustedResponse | httpx.TransportError):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500
    return False


def on_disk(layout: StoreLayout | None) -> bool | None:
    return True if layout is not None and layout.vectors_on_disk else None
