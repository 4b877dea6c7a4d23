"""VLM settings (``LOOKALIKE_VLM*`` environment variables), built at the entry points and passed down."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from indexer import Settings

EXAMPLES = (
    "LOOKALIKE_VLM=openai:gpt-4o-mini (with OPENAI_API_KEY set), "
    "LOOKALIKE_VLM=openai:MODEL@http://localhost:8000/v1 (vLLM, Ollama, LM Studio or another "
    "OpenAI-compatible server), or LOOKALIKE_VLM=hf:llava-hf/llava-interleave-qwen-0.5b-hf "
    "(a local transformers model: a Hub id already downloaded, or a folder)"
)


def not_configured(feature: str) -> str:
    """The one message every VLM feature gives when no VLM is set."""
    return f"{feature} needs a vision-language model: set LOOKALIKE_VLM, e.g. {EXAMPLES}"


class VLMSettings(Settings):
    """Which VLM to use and how to call it."""

    vlm: str | None = Field(None, description="VLM spec: openai:MODEL[@BASE_URL] or hf:REPO_OR_PATH.")
    vlm_api_key: str | None = Field(None, description="API key for openai: specs; default OPENAI_API_KEY.")
    vlm_image_side: int = Field(448, ge=336, le=768, description="Images are shrunk to this short side first.")
    vlm_detail: Literal["low", "high", "auto"] = Field("auto", description="Image detail for openai: specs.")
    vlm_timeout: float = Field(60.0, gt=0, description="Seconds per HTTP request, before retrying.")
    vlm_max_retries: int = Field(2, ge=0, le=10, description="Retries on 429, 5xx and timeouts (backoff).")
    vlm_max_images: int = Field(10, ge=1, le=64, description="Most images one request may carry.")
    vlm_concurrency: int = Field(8, ge=1, le=64, description="Requests in flight at once (openai: specs).")
    vlm_batch_size: int = Field(8, ge=1, le=256, description="Conversations per generate call (hf: specs).")
    vlm_max_tokens: int = Field(512, ge=1, le=16384, description="Most tokens in one answer.")
    vlm_temperature: float | None = Field(0.0, ge=0, le=2, description="Unset to leave it to the server.")
    vlm_cache: bool = Field(True, description="Cache replies under DATA_DIR/vlm-cache.")
    vlm_rerank_budget_s: float = Field(
        8.0, gt=0, description="Wall-clock budget of one VLM re-rank; keep it under LOOKALIKE_RERANK_BUDGET_S."
    )
    vlm_rerank_weight: float = Field(0.5, ge=0, le=1, description="Share of the VLM score in the blended score.")
    vlm_rerank_chunk: int = Field(8, ge=1, le=64, description="Candidates judged per VLM request.")
    vlm_rerank_max_tokens: int = Field(400, ge=16, le=8192)
    vlm_daily_tokens: int | None = Field(
        None, ge=1, description="Tokens a paid VLM API may spend per UTC day (as its replies report); unset: no cap."
    )
    vlm_parse_budget_s: float = Field(
        3.0, gt=0, description="Wall-clock budget of reading one query with the VLM (LOOKALIKE_QUERY_PARSER=vlm)."
    )
    vlm_parse_max_tokens: int = Field(300, ge=16, le=4096)

    @field_validator("vlm", "vlm_api_key", "vlm_daily_tokens", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vlm_temperature", mode="before")
    @classmethod
    def _blank_temperature(cls, value: object) -> object:
        return None if value == "" else value
