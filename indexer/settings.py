"""Settings, read from ``LOOKALIKE_*`` environment variables (and ``.env``) at the entry points only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .lexical import LexicalConfig

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
    clip_model: str = Field(DEFAULT_CLIP, description="CLIP encoder spec (image and text vectors).")
    text_model: str = Field(DEFAULT_TEXT, description="Sentence-transformers spec for the semantic vector.")
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
    lexical_fields: Annotated[tuple[str, ...], NoDecode] = Field(
        LexicalConfig().fields,
        min_length=1,
        description="Payload fields the lexical (BM25) channel reads, comma-separated; 'id' is the catalog id.",
    )

    _lexical = field_validator("lexical_fields", mode="before")(comma_separated)

    @field_validator("store", "qdrant_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose and shells pass unset variables as "", which means "not set" here.
        return None if value == "" else value

    def lexical_config(self) -> LexicalConfig:
        return LexicalConfig(fields=self.lexical_fields)

    def store_spec(self) -> str:
        return self.store or f"edge:{self.data_dir / 'store'}"

    def torch_device(self) -> Device:
        """The device and dtype the models run on (``device`` and ``dtype``), checked."""
        from .encoders import resolve_device  # torch is imported only by those who run models

        return resolve_device(self.device, self.dtype)
