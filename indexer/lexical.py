"""The lexical channel: BM25 term weights over a product's text fields, stored as a sparse vector.

Documents and queries are tokenised by qdrant-edge's built-in BM25 (no download; its token ids are
Qdrant server's), so one encoder serves both stores. A document's vector holds BM25's term-frequency
weights; the store applies each term's inverse document frequency at query time (``Modifier.Idf``), so
the IDF follows the stored items without a refit.

The vector's model id records everything that shapes a document's weights (the fields read, the
language, k, b and the expected length). A store built before the channel, or with other settings,
is filled in from the stored payloads by :func:`fill_lexical`: no image is decoded or embedded again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import qdrant_edge as qe

from .store import ID_KEY, Record, SparseVector, VectorStore

log = logging.getLogger(__name__)

LEXICAL = "lexical"
MODEL_PREFIX = "bm25:"
# The fields catalogs name their identifiers by: the catalog id, Shopify's variant SKUs and barcodes,
# Google Merchant Center's GTIN, MPN and item group.
CODE_FIELDS: tuple[str, ...] = ("id", "sku", "barcode", "gtin", "mpn", "item_group_id", "ean", "upc")
TEXT_FIELDS: tuple[str, ...] = (
    "title",
    "description",
    "brand",
    "vendor",
    "category",
    "product_type",
    "colour",
    "color",
    "pattern",
    "material",
    "tags",
)
# Product texts are a title and a sentence or three: BM25's length normalisation is centred there,
# not on its default of 256 tokens.
AVG_LEN = 40.0


@dataclass(frozen=True)
class LexicalConfig:
    """What a document's BM25 vector is made from. Codes are read too, so part of one still matches."""

    fields: tuple[str, ...] = TEXT_FIELDS + CODE_FIELDS
    language: str = "english"
    k: float = 1.2
    b: float = 0.75
    avg_len: float = AVG_LEN

    @property
    def model_id(self) -> str:
        data = {**asdict(self), "fields": list(self.fields)}
        return MODEL_PREFIX + json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_model_id(cls, model_id: str) -> LexicalConfig:
        """The config a stored vector records; ValueError for one this version cannot read."""
        if not model_id.startswith(MODEL_PREFIX):
            raise ValueError(f"not a lexical model id: {model_id!r}")
        try:
            data = json.loads(model_id[len(MODEL_PREFIX) :])
            return cls(**{**data, "fields": tuple(data["fields"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable lexical model id {model_id!r}: {exc}") from None


def lexical_text(payload: Mapping[str, Any], fields: Iterable[str]) -> str:
    """The words of ``fields`` in a stored payload: strings, lists of them, and whole numbers (codes)."""
    parts: list[str] = []
    for name in fields:
        value = payload.get(ID_KEY) if name == "id" else payload.get(name)
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str):
                parts.append(v)
            elif isinstance(v, int) and not isinstance(v, bool):
                parts.append(str(v))  # a GTIN read as a number is still a code
    return " ".join(parts)


class LexicalEncoder:
    """BM25 documents and queries for one :class:`LexicalConfig`."""

    def __init__(self, config: LexicalConfig | None = None) -> None:
        self.config = config or LexicalConfig()
        c = self.config
        try:
            self._bm25 = qe.Bm25(qe.Bm25Config(k=c.k, b=c.b, avg_len=c.avg_len, language=c.language))
        except ValueError as exc:
            raise ValueError(f"lexical settings {c}: {exc}") from None

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def document(self, payload: Mapping[str, Any]) -> SparseVector:
        return _sparse(self._bm25.embed_document(lexical_text(payload, self.config.fields)))

    def query(self, text: str) -> SparseVector:
        """Every distinct token of ``text`` weighted 1 (empty for stopwords and punctuation alone)."""
        return _sparse(self._bm25.embed_query(text))


def _sparse(vector: Any) -> SparseVector:
    return SparseVector(tuple(vector.indices), tuple(float(v) for v in vector.values))


def fill_lexical(
    store: VectorStore, encoder: LexicalEncoder, batch: int = 512, progress: Callable[[int], None] | None = None
) -> int:
    """Give every stored item its lexical vector from its stored payload, unless the store records
    ``encoder``'s already; returns how many items were filled. Killed half-way, the store still records
    the vector as unfilled, so the next run fills it again."""
    schema = store.schema()
    if schema is None or schema.sparse.get(LEXICAL) == encoder.model_id:
        return 0
    keys = [name for name in encoder.config.fields if name != "id"]
    done, pending = 0, []
    for record in store.scroll(keys=keys):
        pending.append(Record(record.id, {}, {LEXICAL: encoder.document(record.payload)}))
        if len(pending) >= batch:
            store.update_vectors(pending)
            done, pending = done + len(pending), []
            if progress:
                progress(done)
    store.update_vectors(pending)
    done += len(pending)
    store.set_sparse_model(LEXICAL, encoder.model_id)
    log.info("lexical vectors of %d stored items filled in from their payloads", done)
    return done
