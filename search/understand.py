"""Query understanding without a language model: price phrases, facet values and item codes.

``understand(text, vocabulary)`` reads a shopper's words into an :class:`Understood`:

- price phrases ("under 50", "below $50", "less than 50 dollars", "up to 50", "max 50", "over 100",
  "above", "more than", "from 20", "at least", "between 20 and 50", "20-50 dollars") become a range on
  the index's price field, and leave the words that are searched;
- words that name a value of one of the index's keyword facets (a brand, a colour, a category, in the
  singular or the plural) become conditions on that facet; they stay in the searched words, which
  the vector channels still rank by;
- tokens that may be item codes (with a digit in them, or the whole query as one token) are
  candidates for an exact lookup on the code fields.

Everything here is a pure function of the text and the vocabulary.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from indexer import Condition

MAX_CODES = 8
MIN_CODE_CHARS = 4
# Sizes of a value's vocabulary past which a keyword field is an identifier, not a facet.
MAX_FACET_VALUES = 500

_CURRENCY_WORDS = r"(?:dollars?|usd|bucks|euros?|eur|pounds?|gbp|quid|kr|sek|nok|dkk|chf|yen|jpy)"
_SYMBOL = r"[$€£¥]"


def _amount(name: str) -> str:
    """An amount: 1,299.99 / 1299 / 49,99 / 49.5, with an optional currency symbol before it or a
    currency word or symbol after it."""
    number = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d{1,2})?"
    return rf"(?:{_SYMBOL}\s*)?(?P<{name}>{number})(?:\s*(?:{_SYMBOL}|{_CURRENCY_WORDS}\b))?"


_BELOW = {
    "under": "lt",
    "below": "lt",
    "less than": "lt",
    "cheaper than": "lt",
    "lower than": "lt",
    "up to": "lte",
    "max": "lte",
    "maximum": "lte",
    "at most": "lte",
    "no more than": "lte",
    "not more than": "lte",
    "within": "lte",
}
_ABOVE = {
    "over": "gt",
    "above": "gt",
    "more than": "gt",
    "greater than": "gt",
    "pricier than": "gt",
    "from": "gte",
    "min": "gte",
    "minimum": "gte",
    "at least": "gte",
    "starting at": "gte",
    "no less than": "gte",
}
_SYMBOLS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_OPERATORS = {**_BELOW, **_ABOVE, **_SYMBOLS}
_OPS = "|".join(re.escape(op) for op in sorted({**_BELOW, **_ABOVE}, key=len, reverse=True))
# A word operator must stand alone ("undermine" is no price); a symbol may touch the field or number.
_OP = rf"(?:(?<!\w)(?P<op>{_OPS})(?:\.|:)?(?:\s+(?:a|the|price|of|costing|priced))*|(?P<sym><=|>=|<|>))"
_PRICE_WORD = r"(?:(?:priced|prices?|costing|costs?)\s*)?"
_BETWEEN = re.compile(
    rf"(?<!\w)(?:{_PRICE_WORD}between|{_PRICE_WORD}from)\s+{_amount('lo')}\s*(?:and|to|-|–)\s*{_amount('hi')}",
    re.IGNORECASE,
)
# "20-50 dollars", "$20 - $50": a bare range needs a currency to tell it from a size or a code.
_BARE_RANGE = re.compile(
    rf"(?<![\w.,-])(?:(?P<s1>{_SYMBOL})\s*)?(?P<lo>\d+(?:[.,]\d{{1,2}})?)\s*(?:-|–|to)\s*(?:(?P<s2>{_SYMBOL})\s*)?"
    rf"(?P<hi>\d+(?:[.,]\d{{1,2}})?)(?:\s*(?P<w>{_SYMBOL}|{_CURRENCY_WORDS}\b))?(?![\w-])",
    re.IGNORECASE,
)
_BOUND = re.compile(rf"{_PRICE_WORD}{_OP}\s*{_amount('n')}(?![\w-])", re.IGNORECASE)
# "50 or less", "$100 and up", "30+".
_TRAILING = re.compile(
    rf"(?<![\w.,-]){_amount('n')}\s*(?P<tail>or less|or under|and under|or below|or cheaper|max|maximum|at most|"
    rf"tops|or more|or over|and up|and over|and above|min|minimum|at least|\+)(?!\w)",
    re.IGNORECASE,
)
_TRAILING_OPS = dict.fromkeys(
    ("or less", "or under", "and under", "or below", "or cheaper", "max", "maximum", "at most", "tops"), "lte"
)
# An operator with a currency but no number: "under dollars", "less than $".
_NO_NUMBER = re.compile(rf"(?<!\w)(?P<op>{_OPS})\s*(?:{_SYMBOL}|{_CURRENCY_WORDS}\b)(?!\s*\d)", re.IGNORECASE)
_CODE_STRIP = "\"'`.,;:!?()[]{}<>«»“”‘’"


@dataclass(frozen=True)
class Vocabulary:
    """What words can mean in one index: facet phrases (normalised, with singular and plural forms)
    to (field, value), and the price field, if any."""

    phrases: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = field(default_factory=dict)
    price_field: str | None = None

    @classmethod
    def build(cls, facets: Mapping[str, Iterable[str]], price_field: str | None = None) -> Vocabulary:
        """``facets`` maps each keyword facet to its values (as stored)."""
        phrases: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for name, values in facets.items():
            for value in values:
                words = tuple(words_of(value))
                if not words or value.lower() in ("true", "false") or all(w.isdigit() for w in words):
                    continue
                if len(words) == 1 and len(words[0]) < 2:
                    continue
                for form in inflections(words):
                    found = phrases.setdefault(form, [])
                    if (name, value) not in found:
                        found.append((name, value))
        return cls({k: tuple(v) for k, v in phrases.items()}, price_field)

    @property
    def longest(self) -> int:
        return max((len(p) for p in self.phrases), default=0)

    def values(self) -> dict[str, list[str]]:
        """Each facet field's values, as stored, sorted."""
        out: dict[str, set[str]] = {}
        for found in self.phrases.values():
            for name, value in found:
                out.setdefault(name, set()).add(value)
        return {name: sorted(vals) for name, vals in out.items()}


@dataclass(frozen=True)
class FacetMatch:
    field: str
    values: tuple[str, ...]
    words: tuple[str, ...]  # as typed


@dataclass(frozen=True)
class PriceRange:
    field: str
    bounds: dict[str, float]  # some of gt, gte, lt, lte
    words: tuple[str, ...]

    def describe(self) -> str:
        signs = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        lo, hi = ("gte", "gt"), ("lte", "lt")
        low = next((k for k in lo if k in self.bounds), None)
        high = next((k for k in hi if k in self.bounds), None)
        if low and high:
            return f"{self.field} {self.bounds[low]:g}–{self.bounds[high]:g}"
        key = low or high
        return f"{self.field} {signs[key]} {self.bounds[key]:g}"


@dataclass(frozen=True)
class Understood:
    """What a query's words were read as. ``text`` is what the vector and lexical channels search."""

    typed: str
    text: str
    price: PriceRange | None = None
    facets: tuple[FacetMatch, ...] = ()
    codes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    parser: str = "rules"
    fell_back: bool = False

    def conditions(self, facets: bool = True) -> tuple[Condition, ...]:
        out = [Condition(self.price.field, "range", dict(self.price.bounds))] if self.price else []
        if facets:
            for m in self.facets:
                out.append(
                    Condition(m.field, "eq", m.values[0])
                    if len(m.values) == 1
                    else Condition(m.field, "in", list(m.values))
                )
        return tuple(out)

    def summary(self) -> str:
        """ "price < 50; brand = Kestrel": what narrowed the search, for a person."""
        parts = [self.price.describe()] if self.price else []
        parts += [f"{m.field} = {' or '.join(m.values)}" for m in self.facets]
        return "; ".join(parts)

    def with_note(self, note: str, fell_back: bool = False) -> Understood:
        return replace(self, notes=(*self.notes, note), fell_back=self.fell_back or fell_back)

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "typed": self.typed,
            "searched": self.text,
            "price": {"field": self.price.field, **self.price.bounds} if self.price else None,
            "facets": [{"field": m.field, "values": list(m.values), "words": " ".join(m.words)} for m in self.facets],
            "codes": list({c.lower(): c for c in reversed(self.codes)}.values())[::-1],
            "notes": list(self.notes),
            "parser": self.parser,
            "fell_back": self.fell_back,
        }


# A query parser reads a query's text in an index's vocabulary: ``understand`` (the rules), or a VLM's.
QueryParser = Callable[[str, "Vocabulary"], "Understood"]


def understand(text: str, vocabulary: Vocabulary) -> Understood:
    """Read ``text`` with the index's ``vocabulary``; see the module doc."""
    typed = " ".join(text.split())
    rest, price, notes = read_price(typed, vocabulary.price_field)
    facets, facet_notes = read_facets(rest, vocabulary)
    codes = code_candidates(rest, whole=len(typed.split()) == 1)
    searched = " ".join(rest.split()) or typed
    return Understood(typed, searched, price, facets, codes, (*notes, *facet_notes))


# -- price --------------------------------------------------------------------------------------


def read_price(text: str, price_field: str | None) -> tuple[str, PriceRange | None, tuple[str, ...]]:
    """(the text without its price phrases, the range they give, notes for a person)."""
    bounds: dict[str, float] = {}
    spans: list[tuple[int, int]] = []
    for m in _BETWEEN.finditer(text):
        lo, hi = sorted((_number(m.group("lo")), _number(m.group("hi"))))
        _tighten(bounds, "gte", lo)
        _tighten(bounds, "lte", hi)
        spans.append(m.span())
    for m in _BARE_RANGE.finditer(text):
        if _overlaps(m.span(), spans) or not (m.group("s1") or m.group("s2") or m.group("w")):
            continue
        lo, hi = sorted((_number(m.group("lo")), _number(m.group("hi"))))
        _tighten(bounds, "gte", lo)
        _tighten(bounds, "lte", hi)
        spans.append(m.span())
    for m in _BOUND.finditer(text):
        if _overlaps(m.span(), spans):
            continue
        _tighten(bounds, _OPERATORS[(m.group("op") or m.group("sym")).lower()], _number(m.group("n")))
        spans.append(m.span())
    for m in _TRAILING.finditer(text):
        if _overlaps(m.span(), spans):
            continue
        tail = m.group("tail").lower()
        _tighten(bounds, _TRAILING_OPS.get(tail, "gte"), _number(m.group("n")))
        spans.append(m.span())
    notes = tuple(
        f"“{m.group(0).strip()}” has no number: searched as words"
        for m in _NO_NUMBER.finditer(text)
        if not _overlaps(m.span(), spans)
    )
    if not spans:
        return text, None, notes
    words = tuple(text[a:b].strip() for a, b in sorted(spans))
    if price_field is None:
        return text, None, (*notes, f"this index has no price field: “{'”, “'.join(words)}” searched as words")
    rest = text
    for a, b in sorted(spans, reverse=True):
        rest = rest[:a] + " " + rest[b:]
    return " ".join(rest.split()), PriceRange(price_field, bounds, words), notes


def _number(raw: str) -> float:
    # "1,299" is a thousands separator; "49,99" a decimal comma.
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw):
        return float(raw.replace(",", ""))
    return float(raw.replace(",", "."))


def _tighten(bounds: dict[str, float], op: str, value: float) -> None:
    """Add a bound, keeping the tighter of two on the same side ("over 20 over 30" is over 30)."""
    same_side = ("gt", "gte") if op in ("gt", "gte") else ("lt", "lte")
    current = [(k, bounds[k]) for k in same_side if k in bounds]
    if current:
        k, v = current[0]
        tighter = value > v if op in ("gt", "gte") else value < v
        if not tighter and not (value == v and op in ("gt", "lt")):
            return
        del bounds[k]
    bounds[op] = value


def _overlaps(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(span[0] < b and a < span[1] for a, b in spans)


# -- facets -------------------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    """Lower-case words with accents folded; hyphens and punctuation split ("T-Shirt" -> t, shirt)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z0-9]+", folded)


def inflections(words: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The phrase with its last word in the singular and the plural (sneaker, sneakers; dress, dresses)."""
    *head, last = words
    return {tuple(head) + (form,) for form in {last, plural(last), singular(last)} if form}


def plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        return word[:-1]
    return word


def read_facets(text: str, vocabulary: Vocabulary) -> tuple[tuple[FacetMatch, ...], tuple[str, ...]]:
    """Facet values named in ``text``, in the order typed: longest phrases first, each word used once;
    values of one field are alternatives. A phrase that names values of two fields is left to the words."""
    words = words_of(text)
    taken = [False] * len(words)
    found_at: list[tuple[int, str, str, str]] = []  # (position, field, value, words)
    notes = []
    for size in range(min(vocabulary.longest, len(words)), 0, -1):
        for start in range(len(words) - size + 1):
            if any(taken[start : start + size]):
                continue
            phrase = tuple(words[start : start + size])
            found = vocabulary.phrases.get(phrase)
            if not found:
                continue
            taken[start : start + size] = [True] * size
            fields = sorted({name for name, _ in found})
            if len(fields) > 1:
                notes.append(f"“{' '.join(phrase)}” names a value of {' and '.join(fields)}: searched as words")
                continue
            found_at += [(start, name, value, " ".join(phrase)) for name, value in found]
    by_field: dict[str, tuple[list[str], list[str]]] = {}
    for _, name, value, typed in sorted(found_at):
        values, words_typed = by_field.setdefault(name, ([], []))
        if value not in values:
            values.append(value)
        if typed not in words_typed:
            words_typed.append(typed)
    matches = tuple(FacetMatch(name, tuple(v), tuple(t)) for name, (v, t) in by_field.items())
    return matches, tuple(notes)


# -- codes --------------------------------------------------------------------------------------


def code_candidates(text: str, whole: bool = False) -> tuple[str, ...]:
    """Tokens that may be an item's code: with a digit and at least 4 characters, or the query itself
    when it was typed as one token (``whole``); each as typed, upper- and lower-cased, since codes are
    matched exactly."""
    tokens = [t for t in (t.strip(_CODE_STRIP) for t in text.split()) if t]
    picked = [t for t in tokens if len(t) >= MIN_CODE_CHARS and any(c.isdigit() for c in t)]
    if whole and len(tokens) == 1 and len(tokens[0]) >= 3 and tokens[0] not in picked:
        picked.append(tokens[0])
    out: list[str] = []
    for token in picked[:MAX_CODES]:
        for form in (token, token.upper(), token.lower()):
            if form not in out:
                out.append(form)
    return tuple(out)
