"""Catalog -> embeddings -> vector store."""

from .catalog import Catalog, CatalogError, CatalogItem, read_catalog
from .encoders import Device, Encoder, EncoderError, cpu_has_native_bf16, make_encoder, resolve_device
from .images import ImageError, ImagePolicy, decode_image, fetch_bytes
from .manifest import IndexManifest, build_models
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
    "Filter",
    "ImageError",
    "ImagePolicy",
    "IndexManifest",
    "IndexOptions",
    "IndexReport",
    "Models",
    "Record",
    "SchemaMismatch",
    "ScoredPoint",
    "SearchRequest",
    "Settings",
    "StoreError",
    "StoreSchema",
    "TagVocab",
    "TagVocabError",
    "Tagger",
    "VectorStore",
    "WeightsMissing",
    "build_models",
    "decode_image",
    "encoder_sources",
    "fetch_bytes",
    "forbid_downloads",
    "index_catalog",
    "make_encoder",
    "open_store",
    "read_catalog",
    "resolve_device",
    "cpu_has_native_bf16",
]
