"""Query, Hit and the search settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from indexer import Filter, Settings
from indexer.store import RESERVED_KEYS


class SearchSettings(Settings):
    """Settings of the search engine (``LOOKALIKE_*`` environment variables)."""

    fusion: Literal["rrf", "dbsf", "sum", "calibrated"] = Field(
        "calibrated", description="How channel results are fused."
    )
    image_weight: float = Field(0.6, ge=0)
    text_weight: float = Field(0.4, ge=0)
    semantic_share: float = Field(0.5, ge=0, le=1, description="Part of the text weight on the MiniLM vector.")
    candidates: int = Field(40, ge=10, le=5000, description="Candidates fetched per channel.")
    composed_candidates: int = Field(
        200, ge=10, le=10000, description="Candidates of a composed query, shared among its probes."
    )
    max_k: int = Field(100, ge=1, le=1000)
    dedup_threshold: float = Field(
        0.999, gt=0, le=1, description="Image cosine at which two results count as one photo listed twice."
    )
    negative_weight: float = Field(0.5, ge=0)
    negative_threshold: float = Field(0.9, gt=0, le=1, description="Calibrated match to a negative that drops.")
    composed_method: Literal["structured", "arithmetic"] = "structured"
    composed_neighbours: int = Field(
        5, ge=0, le=50, description="Nearest catalog images whose descriptions stand in for an uploaded reference's."
    )
    rerank_top_n: int = Field(20, ge=1, le=200)
    rerank_budget_s: float = Field(10.0, gt=0)
    calibration_sample: int = Field(2000, ge=50)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    catalog_root: Path | None = Field(
        None, description="When set, catalogs and tag files named by server path must be inside this folder."
    )


class QueryError(ValueError):
    """A query that cannot be run as given."""


@dataclass
class Query:
    text: str | None = None
    image: Image.Image | None = None
    like: str | None = None
    negative: str | None = None
    filters: Filter = field(default_factory=Filter)
    weights: dict[str, float] | None = None
    k: int = 10
    offset: int = 0
    min_score: float | None = None
    rerank: str = "none"
    dedup: bool = True
    fusion: str | None = None
    composed_method: str | None = None

    @property
    def kind(self) -> str:
        has_image = self.image is not None or self.like is not None
        if self.text and has_image:
            return "composed"
        return "image" if has_image else "text"


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    explanation: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def public_payload(self) -> dict[str, Any]:
        return {k: v for k, v in self.payload.items() if k not in RESERVED_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": round(self.score, 4),
            "payload": self.public_payload(),
            "explanation": self.explanation,
        }
