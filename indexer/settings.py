"""Settings, read from ``LOOKALIKE_*`` environment variables (and ``.env``) at the entry points only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .catalog_items import FeedFormat, FeedOptions, parse_mapping
from .lexical import LexicalConfig
from .specs import EncoderOptions
from .store import ServerAccess

if TYPE_CHECKING:
    from .encoders import Device

DEFAULT_CLIP = "openclip:ViT-B-32/laion2b_s34b_b79k"
DEFAULT_TEXT = "st:all-MiniLM-L6-v2"


def comma_separated(cls: type, value: object) -> object:
    """A list setting given as "title,brand" (from the environment); lists stay as they are."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("lookalike-data"), description="Where the index, errors and caches live.")
    store: str | None = Field(None, description="Vector store spec; default edge:DATA_DIR/store.")
    qdrant_api_key: str | None = None
    qdrant_attempts: int = Field(
        5, ge=1, le=20, description="Tries per request to a qdrant: server (0.5 s apart, doubling) before it is gone."
    )
    qdrant_timeout_s: int = Field(60, ge=1, le=3600, description="Time limit of one request to a qdrant: server.")
    clip_model: str = Field(DEFAULT_CLIP, description="CLIP encoder spec (image and text vectors).")
    text_model: str = Field(DEFAULT_TEXT, description="Sentence-transformers spec for the semantic vector.")
    query_language: str | None = Field(
        None,
        description="Language code for CLIP tokenizers that take one (nllb-clip: eng_Latn, deu_Latn, ...): the "
        "language of search queries, and of catalog texts when indexing. Other models ignore it.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: str = Field("auto", description="auto (float16 on cuda, else float32) | float32 | float16 | bfloat16")
    batch_size: int = Field(64, ge=1, le=4096)
    workers: int = Field(4, ge=0, le=64, description="Image decode/preprocess threads.")
    prefetch_batches: int = Field(3, ge=1, le=64, description="Batches kept decoded ahead of the encoder.")
    optimize_threshold: int = Field(20_000, ge=0, description="Build HNSW after loads of at least this many.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused (bombs).")
    url_timeout: float = Field(10.0, gt=0)
    allow_private_urls: bool = Field(False, description="Allow image URLs on private or loopback addresses.")
    catalog_format: FeedFormat = Field("auto", description="auto (from the header) | plain | shopify | gmc")
    catalog_map: dict[str, str] = Field(
        default_factory=dict,
        description='Plain catalogs: field -> column, as JSON: {"id": "sku"} or ["id=sku", "image=Main Image"].',
    )
    lexical_fields: Annotated[tuple[str, ...], NoDecode] = Field(
        LexicalConfig().fields,
        min_length=1,
        description="Payload fields the lexical (BM25) channel reads, comma-separated; 'id' is the catalog id.",
    )

    _lexical = field_validator("lexical_fields", mode="before")(comma_separated)

    # Scale: bulk loads and the distributed engine (README, "Past one machine").
    vectors_on_disk: bool = Field(False, description="New stores keep float32 vectors on disk, int8 copies in RAM.")
    engine: Literal["local", "ray"] = Field("local", description="Indexing engine: local (this process) or ray.")
    ray_address: str | None = Field(None, description="auto or HOST:6379, from a cluster node; none: a local Ray.")
    ray_workers: int | None = Field(None, ge=1, le=4096, description="Encoder actors; default one per GPU, else 1.")
    ray_gpus_per_worker: float | None = Field(None, ge=0, le=8, description="GPUs per encoder actor; default 1 or 0.")

    @field_validator("ray_address", mode="before")
    @classmethod
    def _empty_address_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("store", "qdrant_api_key", "query_language", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose and shells pass unset variables as "", which means "not set" here.
        return None if value == "" else value

    @field_validator("catalog_map", mode="before")
    @classmethod
    def _map_pairs(cls, value: object) -> object:
        # The command line's FIELD=COLUMN pairs are accepted here too, so one spelling works everywhere.
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return parse_mapping(value)
        return value

    def server_access(self) -> ServerAccess:
        """How ``qdrant:`` stores reach their server."""
        return ServerAccess(self.qdrant_api_key, self.qdrant_attempts, self.qdrant_timeout_s)

    def feed_options(self) -> FeedOptions:
        """How catalog files are read: ``catalog_format`` and ``catalog_map``."""
        return FeedOptions(format=self.catalog_format, mapping=self.catalog_map)

    def lexical_config(self) -> LexicalConfig:
        return LexicalConfig(fields=self.lexical_fields)

    def store_spec(self) -> str:
        return self.store or f"edge:{self.data_dir / 'store'}"

    def torch_device(self) -> Device:
        """The device and dtype the models run on (``device`` and ``dtype``), checked."""
        from .encoders import resolve_device  # torch is imported only by those who run models

        return resolve_device(self.device, self.dtype)

    def encoder_options(self) -> EncoderOptions:
        return EncoderOptions(language=self.query_language)
