"""Vision-language models: visual Q&A, catalog RAG with checked citations, VLM re-ranking and query parsing.

Backends are chosen by a spec (``LOOKALIKE_VLM``): ``openai:MODEL[@BASE_URL]`` or ``hf:REPO_OR_PATH``.
"""

from .ask import Answer, AskError, Claim, Source, ask_catalog, ask_images
from .core import (
    VLM,
    Message,
    TooManyImages,
    Usage,
    VLMBudgetSpent,
    VLMError,
    VLMNotConfigured,
    VLMReply,
    VLMRequestError,
    VLMTimeout,
    VLMWeightsMissing,
    fit_image,
)
from .factory import make_vlm, vlm_from_settings
from .parsing import check_citations, extract_json, parse_scores
from .query_parser import VLMQueryParser, vlm_query_parser
from .rerank import VLMReranker, vlm_reranker
from .settings import VLMSettings, not_configured

__all__ = [
    "VLM",
    "Answer",
    "AskError",
    "Claim",
    "Message",
    "Source",
    "TooManyImages",
    "Usage",
    "VLMBudgetSpent",
    "VLMError",
    "VLMNotConfigured",
    "VLMReply",
    "VLMRequestError",
    "VLMQueryParser",
    "VLMReranker",
    "VLMSettings",
    "VLMTimeout",
    "VLMWeightsMissing",
    "ask_catalog",
    "ask_images",
    "check_citations",
    "extract_json",
    "fit_image",
    "make_vlm",
    "not_configured",
    "parse_scores",
    "vlm_from_settings",
    "vlm_query_parser",
    "vlm_reranker",
]
