"""Query, Hit and the search settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import NoDecode

from indexer import Filter, Settings
from indexer.images import is_http_url
from indexer.lexical import CODE_FIELDS
from indexer.settings import comma_separated
from indexer.store import RESERVED_KEYS

from .filters import FilterError, parse_filters, parse_weights
from .understand import Understood

MAX_WEIGHT = 1e6
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]


class SearchSettings(Settings):
    """Settings of the search engine (``LOOKALIKE_*`` environment variables)."""

    fusion: Literal["rrf", "dbsf", "sum", "calibrated"] = Field(
        "calibrated", description="How channel results are fused."
    )
    image_weight: float = Field(0.6, ge=0)
    text_weight: float = Field(0.4, ge=0)
    semantic_share: float = Field(0.5, ge=0, le=1, description="Part of the text weight on the MiniLM vector.")
    lexical_weight: float = Field(
        0.2, ge=0, description="Weight of the BM25 channel in text queries, beside image and text (0: off)."
    )
    query_parser: Literal["rules", "vlm", "off"] = Field(
        "rules", description="How text queries are understood (price words, facet values, codes); vlm: by the VLM."
    )
    facet_mode: Literal["filter", "boost"] = Field(
        "filter", description="What a facet value named in the words does: filter the results, or boost them."
    )
    facet_boost: float = Field(0.5, ge=0, description="Boost of a hit matching every named facet, x the top score.")
    price_field: str | None = Field(None, description="Number field price words filter on; default: price.")
    code_fields: Annotated[tuple[str, ...], NoDecode] = Field(
        CODE_FIELDS, description="Fields matched exactly against codes in a query, comma-separated; id: catalog id."
    )
    code_matches: int = Field(10, ge=1, le=100, description="Most products an exact code match puts first.")
    candidates: int = Field(40, ge=10, le=5000, description="Candidates fetched per channel.")
    composed_candidates: int = Field(
        200, ge=10, le=10000, description="Candidates of a composed query, shared among its probes."
    )
    max_k: int = Field(100, ge=1, le=1000)
    dedup_threshold: float = Field(
        0.999, gt=0, le=1, description="Image cosine at which two results count as one photo listed twice."
    )
    group_field: str | None = Field(
        "item_group_id", description="Payload field tying variants into one product, shown once (empty: none)."
    )
    negative_weight: float = Field(0.5, ge=0)
    negative_threshold: float = Field(0.9, gt=0, le=1, description="Calibrated match to a negative that drops.")
    composed_method: Literal["structured", "arithmetic"] = "structured"
    composed_neighbours: int = Field(
        5, ge=0, le=50, description="Nearest catalog images whose descriptions stand in for an uploaded reference's."
    )
    all_photos: bool = Field(
        True, description="Search every photo of a product where the index keeps them (false: main photos only)."
    )
    rerank_top_n: int = Field(20, ge=1, le=200)
    rerank_budget_s: float = Field(10.0, gt=0)
    calibration_sample: int = Field(2000, ge=50)
    query_cache_size: int = Field(4096, ge=0, description="Query texts whose vectors are kept (0: none).")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    catalog_root: Path | None = Field(
        None, description="When set, catalogs and tag files named by server path must be inside this folder."
    )
    host: str = Field("127.0.0.1", description="Address the server listens on (serve/ui --host).")
    admin_token: SecretStr | None = Field(
        None, description="Needed for writes (index jobs, the UI's Catalog tab) as Authorization: Bearer TOKEN."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the API from (JSON list); none by default."
    )
    rate_limit_search: str | None = Field("600/minute", description="Per client: searches and similar items.")
    rate_limit_vlm: str | None = Field("30/minute", description="Per client: VLM calls (ask, rerank=vlm).")
    rate_limit_generate: str | None = Field("10/minute", description="Per client: variant generation.")

    @field_validator(
        "admin_token", "rate_limit_search", "rate_limit_vlm", "rate_limit_generate", "group_field", mode="before"
    )
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        # Compose passes an unset variable as "": that must not become an empty (guessable) token, nor a field.
        return None if isinstance(value, str) and not value.strip() else value

    def rate_limits(self) -> dict[str, str | None]:
        return {"search": self.rate_limit_search, "vlm": self.rate_limit_vlm, "generate": self.rate_limit_generate}

    _codes = field_validator("code_fields", mode="before")(comma_separated)


# Payload fields that hold the item's pictures: file paths inside the server, or the catalog's URLs.
IMAGE_KEYS = frozenset({"image", "images"})


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
    group: bool = True
    fusion: str | None = None
    composed_method: str | None = None
    literal: bool = False
    photo: int | None = None  # with like: which of the item's photos to start from (0: the main one)

    @property
    def kind(self) -> str:
        has_image = self.image is not None or self.like is not None
        if self.text and has_image:
            return "composed"
        return "image" if has_image else "text"


class SearchInput(BaseModel):
    """A search as every front end (API, UI, CLI) takes it: validated here once, then made a ``Query``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=2000, description="What to look for; with an image: the change.")
    like: str | None = Field(None, max_length=1000, description="Catalog id to search like (excluded from hits).")
    negative: str | None = Field(None, max_length=2000, description="Push down items matching this text.")
    filters: list[str] = Field(
        default_factory=list, max_length=50, description="FIELD=VALUE, FIELD=A|B, FIELD!=V, FIELD<N, ..."
    )
    weights: dict[str, Weight] | str | None = Field(
        None, description='{"image": 0.6, "text": 0.4} or "image=0.6,text=0.4"'
    )
    k: int = Field(10, ge=1, description="Results per page (at most the server's max_k).")
    offset: int = Field(0, ge=0, description="Results to skip (paging).")
    min_score: float | None = Field(
        None, allow_inf_nan=False, description="Keep hits whose score (what they are ordered by) is at least this."
    )
    rerank: str = Field("none", max_length=32, description="none | clip | vlm (when configured)")
    fusion: Literal["rrf", "dbsf", "sum", "calibrated"] | None = None
    composed_method: Literal["structured", "arithmetic"] | None = None
    dedup: bool = Field(True, description="Collapse near-identical items.")
    group: bool = Field(True, description="Show an item group (a product's variants) once, as its best match.")
    literal: bool = Field(
        False, description="Search the words as typed: no price words, facet values or codes read into filters."
    )
    photo: int | None = Field(
        None, ge=0, le=1000, description="With like: which of the item's photos to start from (0: the main one)."
    )

    def to_query(
        self, fields: Mapping[str, str], image: Image.Image | None = None, also: Filter | None = None
    ) -> Query:
        """The query over an index with payload ``fields``; ``also`` adds filters built elsewhere (UI facets)."""
        flt = parse_filters(self.filters, fields)
        if also:
            flt = Filter((*flt.must, *also.must), (*flt.must_not, *also.must_not))
        return Query(
            text=self.text,
            image=image,
            like=self.like,
            negative=self.negative,
            filters=flt,
            weights=_weights(self.weights),
            k=self.k,
            offset=self.offset,
            min_score=self.min_score,
            rerank=self.rerank,
            dedup=self.dedup,
            group=self.group,
            fusion=self.fusion,
            composed_method=self.composed_method,
            literal=self.literal,
            photo=self.photo,
        )


def invalid_input(exc: ValidationError) -> str:
    """A rejected ``SearchInput`` in one line per field: "k: Input should be greater than or equal to 1"."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors())


def _weights(value: dict[str, float] | str | None) -> dict[str, float] | None:
    weights = parse_weights(value) if isinstance(value, str) else value
    if weights and not all(math.isfinite(w) and 0 <= w <= MAX_WEIGHT for w in weights.values()):
        raise FilterError(f"weights must be numbers between 0 and {MAX_WEIGHT:g}, got {value!r}")
    return weights or None


@dataclass
class Hit:
    """One result. ``score`` is what the list is ordered by (its meaning depends on the query kind and
    method, named by ``explanation["ranked_by"]``); ``relevance`` is the calibrated 0-1 relevance beside it."""

    id: str
    score: float
    payload: dict[str, Any]
    explanation: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    relevance: float | None = None
    photo: int | None = None  # the photo that matched best (an index into ``images``), where every photo is searched

    def public_payload(self) -> dict[str, Any]:
        """The payload a server may answer with: no internal keys, and no server file paths."""
        return {
            k: v
            for k, v in self.payload.items()
            if k not in RESERVED_KEYS and not (k in IMAGE_KEYS and not _all_http(v))
        }

    @property
    def image_url(self) -> str:
        """Where a client fetches the picture: the catalog's own http(s) URL, else the API's image route."""
        source = self.photo_source()
        if _all_http(source):
            return source
        route = f"/items/{quote(self.id, safe='/')}/image"
        return f"{route}?photo={self.photo}" if self.photo else route

    def photo_source(self) -> Any:
        """The file or URL of the photo that matched best (the main photo unless another one did)."""
        images = self.payload.get("images")
        if self.photo and isinstance(images, list) and self.photo < len(images):
            return images[self.photo]
        return self.payload.get("image")

    def to_dict(self) -> dict[str, Any]:
        """The hit for a local reader (the CLI's --json): image paths included."""
        return {
            "id": self.id,
            # Six decimals: rank-fusion scores are small (rrf's top is about 0.016).
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "photo": self.photo,
            "image": self.photo_source(),
            "payload": {k: v for k, v in self.payload.items() if k not in RESERVED_KEYS},
            "explanation": self.explanation,
        }


def _all_http(value: Any) -> bool:
    values = value if isinstance(value, list | tuple) else [value]
    return bool(values) and all(isinstance(v, str) and is_http_url(v) for v in values)


@dataclass
class SearchResult:
    """One search: its hits, what its words were read as (None: searched as typed), and notes (such as
    a channel the index lacks) for the person asking."""

    hits: list[Hit]
    understood: Understood | None = None
    notes: list[str] = field(default_factory=list)

    def described(self) -> dict[str, Any] | None:
        """What was understood and noted, for an answer: None when nothing was."""
        understood = self.understood.to_dict() if self.understood else None
        if understood is None and not self.notes:
            return None
        return {**(understood or {"summary": ""}), "notes": [*(understood or {}).get("notes", []), *self.notes]}
