"""The REST API's request, response and error bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .query import SearchInput


class SearchRequest(SearchInput):
    """A search. Give text, an image (upload or ``image_url``), an item id (``like``), or text plus an image."""

    image_url: str | None = Field(None, max_length=4000, description="http(s) URL of a query image.")


class HitOut(BaseModel):
    id: str
    score: float = Field(
        description="What the hits are ordered by; explanation.ranked_by names the method (calibrated: 0-1 relevance)."
    )
    relevance: float | None = Field(description="Calibrated 0-1 relevance, whatever the ranking method.")
    payload: dict[str, Any]
    explanation: dict[str, Any]
    image_url: str = Field(description="The photo that matched best (the main photo unless another one did).")
    photo: int | None = Field(None, description="Which of the item's images matched best (every photo searched).")


class SearchResponse(BaseModel):
    hits: list[HitOut]
    took_ms: float
    kind: Literal["text", "image", "composed"]
    understood: dict[str, Any] | None = Field(
        None,
        description='What the words were read as: "summary" ("price < 50; brand = Kestrel"), the words '
        "searched, price, facets, codes, notes, and fell_back when the understood filters left nothing. "
        "Send literal=true to search the words as typed.",
    )


class ItemOut(BaseModel):
    id: str
    payload: dict[str, Any]
    image_url: str


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(min_length=1, max_length=4096, description="Catalog file or image folder, on the server.")
    prune: bool = Field(False, description="Delete stored items gone from the catalog.")
    tags: str | None = Field(None, max_length=4096, description="Tag vocabulary YAML, on the server.")


class JobAccepted(BaseModel):
    job_id: str
    status: str
    url: str


class HealthOut(BaseModel):
    status: Literal["ok", "empty"]
    items: int
    models: dict[str, str]
    fields: dict[str, str]
    job: str | None = Field(description="Id of the running index job, if any.")


class ErrorOut(BaseModel):
    detail: str
    error: str


class ApiError(Exception):
    def __init__(self, status: int, detail: str, error: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.error = status, detail, error


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}
