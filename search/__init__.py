"""Search: queries, fusion, calibration, re-ranking, REST API and evaluation."""

from .engine import SearchEngine
from .filters import FilterError, parse_filters, parse_weights
from .jobs import ServerPathError, resolve_server_path
from .query import Hit, Query, QueryError, SearchInput, SearchSettings, invalid_input
from .rerank import Reranker, RerankError

__all__ = [
    "FilterError",
    "Hit",
    "Query",
    "QueryError",
    "RerankError",
    "Reranker",
    "SearchEngine",
    "SearchInput",
    "SearchSettings",
    "ServerPathError",
    "invalid_input",
    "parse_filters",
    "parse_weights",
    "resolve_server_path",
]
