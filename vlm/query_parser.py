"""``LOOKALIKE_QUERY_PARSER=vlm``: the configured VLM reads harder phrasings into the rules' structure.

The VLM is shown the query, the index's facet values and its price field, and answers JSON of one
schema (:data:`SCHEMA`). Its answer is checked against the index: a facet value the index does not
hold, a code that is not in the query, a price without a price field are dropped, each with a note.
Replies are cached on disk by the VLM backend (one prompt per query and vocabulary) and the call runs
under ``LOOKALIKE_VLM_PARSE_BUDGET_S``; on a timeout, an error or an unusable reply the rules'
reading is used, and says so.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from indexer import Settings
from search.understand import FacetMatch, PriceRange, Understood, Vocabulary, code_candidates, understand

from .core import VLM, Message, VLMError
from .factory import vlm_from_settings
from .parsing import extract_json
from .settings import VLMSettings

log = logging.getLogger(__name__)

MAX_VALUES_SHOWN = 60
SCHEMA = {
    "type": "object",
    "properties": {
        "search": {"type": "string", "description": "the words to search for, without price words"},
        "price_min": {"type": ["number", "null"]},
        "price_max": {"type": ["number", "null"]},
        "facets": {
            "type": "object",
            "description": "field -> values the shopper asked for, only values listed for that field",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "codes": {"type": "array", "items": {"type": "string"}, "description": "product codes typed in the query"},
    },
    "required": ["search", "price_min", "price_max", "facets", "codes"],
}
SYSTEM = (
    "You turn a shopper's product search into structured filters for a catalog search engine. Use only "
    "the fields and values listed. Put a price range in price_min / price_max (numbers, inclusive) only "
    "when the shopper states one. Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(SCHEMA)
)


def vocabulary_prompt(text: str, vocabulary: Vocabulary) -> str:
    values = vocabulary.values()
    lines = [f"Search: {text}", "", "Fields and their values:"]
    lines += [f"- {name}: {', '.join(vals[:MAX_VALUES_SHOWN])}" for name, vals in sorted(values.items())]
    price = vocabulary.price_field
    lines.append(f"Price field: {price}" if price else "This catalog has no price field: leave the prices null.")
    return "\n".join(lines)


def understood_from_reply(data: Any, text: str, vocabulary: Vocabulary) -> Understood | None:
    """The VLM's JSON as an :class:`Understood`, checked against the index; None when it is unusable."""
    if not isinstance(data, Mapping):
        return None
    typed = " ".join(text.split())
    notes: list[str] = []
    searched = data.get("search")
    searched = " ".join(searched.split()) if isinstance(searched, str) and searched.strip() else typed
    price = _price(data, vocabulary.price_field, notes)
    facets = _facets(data.get("facets"), vocabulary.values(), notes)
    asked = data.get("codes") if isinstance(data.get("codes"), list) else []
    # A code must be typed in the query: the model may not invent one.
    codes = [c for c in asked if isinstance(c, str) and c.strip() and c.strip().lower() in typed.lower()]
    variants = code_candidates(" ".join(c.strip() for c in codes), whole=True) if codes else ()
    return Understood(typed, searched, price, facets, variants, tuple(notes), parser="vlm")


def _price(data: Mapping[str, Any], field: str | None, notes: list[str]) -> PriceRange | None:
    bounds = {}
    for key, op in (("price_min", "gte"), ("price_max", "lte")):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            bounds[op] = float(value)
    if not bounds:
        return None
    if field is None:
        notes.append("this index has no price field: the price asked for is not applied")
        return None
    return PriceRange(field, bounds, ())


def _facets(raw: Any, values: Mapping[str, list[str]], notes: list[str]) -> tuple[FacetMatch, ...]:
    if not isinstance(raw, Mapping):
        return ()
    out = []
    for name, asked in raw.items():
        known = {v.lower(): v for v in values.get(str(name), [])}
        wanted = asked if isinstance(asked, list) else [asked]
        kept = [known[v.lower()] for v in wanted if isinstance(v, str) and v.lower() in known]
        dropped = [str(v) for v in wanted if not (isinstance(v, str) and v.lower() in known)]
        if dropped:
            notes.append(f"not in this index: {name} = {', '.join(dropped)}")
        if kept:
            out.append(FacetMatch(str(name), tuple(dict.fromkeys(kept)), ()))
    return tuple(out)


class VLMQueryParser:
    """A query parser (``SearchEngine(parsers={"vlm": ...})``) that asks the VLM and falls back to the rules."""

    def __init__(self, vlm: VLM, settings: VLMSettings) -> None:
        self.vlm = vlm
        self.settings = settings

    def __call__(self, text: str, vocabulary: Vocabulary) -> Understood:
        conversation = [Message.system(SYSTEM), Message.user(vocabulary_prompt(text, vocabulary))]
        budget = self.settings.vlm_parse_budget_s
        (reply,) = self.vlm.generate_many([conversation], self.settings.vlm_parse_max_tokens, budget_s=budget)
        if isinstance(reply, VLMError):
            log.warning("VLM query parser: %s; the rules read the query", reply)
            return _rules(text, vocabulary, f"the VLM parser failed ({reply}): read by the rules")
        parsed = understood_from_reply(extract_json(reply.text), text, vocabulary)
        if parsed is None:
            log.warning("VLM query parser: no JSON object in the reply; the rules read the query")
            return _rules(text, vocabulary, "the VLM parser gave no usable answer: read by the rules")
        return parsed


def _rules(text: str, vocabulary: Vocabulary, note: str) -> Understood:
    return understand(text, vocabulary).with_note(note)


class vlm_query_parser:  # noqa: N801 - used like the factory function vlm_reranker
    """A parser for ``SearchEngine(parsers={"vlm": ...})``; the VLM is made once, on first use. Without a
    configured VLM every query is read by the rules, with a note naming LOOKALIKE_VLM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._parser: Callable[[str, Vocabulary], Understood] | None = None
        self._lock = threading.Lock()

    def __call__(self, text: str, vocabulary: Vocabulary) -> Understood:
        with self._lock:
            if self._parser is None:
                self._parser = self._make()
        return self._parser(text, vocabulary)

    def _make(self) -> Callable[[str, Vocabulary], Understood]:
        settings = self.settings
        if not isinstance(settings, VLMSettings):
            settings = VLMSettings(data_dir=settings.data_dir)
        try:
            return VLMQueryParser(
                vlm_from_settings(settings, "LOOKALIKE_QUERY_PARSER=vlm", settings.torch_device()), settings
            )
        except VLMError as exc:
            reason = str(exc)
            return lambda text, vocabulary: _rules(text, vocabulary, f"{reason}: read by the rules")
