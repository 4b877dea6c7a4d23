"""Search: queries, fusion, calibration, re-ranking, REST API and evaluation."""

from .engine import SearchEngine
from .filters import FilterError, parse_filters, parse_weights
from .jobs import ServerPathError, resolve_server_path
from .query import Hit, Query, QueryError, SearchSettings
from .rerank import Reranker, RerankError

__all__ = [
    "FilterError",
    "Hit",
    "Query",
    "QueryError",
    "RerankError",
    "Reranker",
    "SearchEngine",
    "SearchSettings",
    "ServerPathError",
    "parse_filters",
    "parse_weights",
    "resolve_server_path",
]
