"""Generation of "like this but different" variants, and the real products nearest to each."""

from .cache import VariantCache, cache_key
from .generator import (
    Generated,
    Generator,
    GeneratorError,
    GeneratorWeightsMissing,
    NonFiniteOutput,
    RequestError,
    VaryRequest,
    check_request,
    image_digest,
    make_generator,
)
from .settings import FAMILIES, GeneratorSettings
from .vary import VariantResult, VaryResult, vary
from .weights import generator_sources

__all__ = [
    "FAMILIES",
    "Generated",
    "Generator",
    "GeneratorError",
    "GeneratorSettings",
    "GeneratorWeightsMissing",
    "NonFiniteOutput",
    "RequestError",
    "VariantCache",
    "VariantResult",
    "VaryRequest",
    "VaryResult",
    "cache_key",
    "check_request",
    "generator_sources",
    "image_digest",
    "make_generator",
    "vary",
]
