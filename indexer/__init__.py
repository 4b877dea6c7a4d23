"""Catalog -> embeddings -> vector store."""

from .catalog import Catalog, CatalogError, CatalogItem, FeedOptions, detect_format, read_catalog
from .encoders import Device, Encoder, EncoderError, cpu_has_native_bf16, make_encoder, resolve_device
from .engines import EngineConfig, EngineError, RayOptions
from .images import ImageError, ImagePolicy, decode_image, fetch_bytes
from .manifest import IndexManifest, IndexTarget, build_models, index_into
from .pipeline import IndexOptions, IndexReport, Models, index_catalog
from .settings import Settings
from .specs import EncoderOptions, EncoderWeightsMissing, encoder_sources
from .store import (
    Condition,
    Filter,
    Record,
    SchemaMismatch,
    ScoredPoint,
    SearchRequest,
    StoreError,
    StoreLayout,
    StoreSchema,
    VectorStore,
    open_store,
)
from .tags import Tagger, TagVocab, TagVocabError
from .weights import WeightsMissing, forbid_downloads

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogItem",
    "Condition",
    "Device",
    "Encoder",
    "EncoderError",
    "EncoderOptions",
    "EncoderWeightsMissing",
    "EngineConfig",
    "EngineError",
    "FeedOptions",
    "Filter",
    "ImageError",
    "ImagePolicy",
    "IndexManifest",
    "IndexOptions",
    "IndexTarget",
    "IndexReport",
    "Models",
    "RayOptions",
    "Record",
    "SchemaMismatch",
    "ScoredPoint",
    "SearchRequest",
    "Settings",
    "StoreError",
    "StoreLayout",
    "StoreSchema",
    "TagVocab",
    "TagVocabError",
    "Tagger",
    "VectorStore",
    "WeightsMissing",
    "build_models",
    "decode_image",
    "encoder_sources",
    "detect_format",
    "fetch_bytes",
    "forbid_downloads",
    "index_catalog",
    "index_into",
    "make_encoder",
    "open_store",
    "read_catalog",
    "resolve_device",
    "cpu_has_native_bf16",
]
