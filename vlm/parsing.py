"""Reading what a VLM wrote: JSON in prose or fences (even cut off), scores, citations, "cannot tell".

Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- tolerant JSON

_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON)?[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_CLOSER = {"{": "}", "[": "]"}


def extract_json(text: str) -> Any | None:
    """The first JSON object or array in ``text``; ``None`` when there is none.

    Tolerates code fences, prose before and after, trailing commas and a reply cut off mid-way
    (the complete part is kept: open strings and brackets are closed, a dangling key is dropped).
    """
    bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for body in bodies:
        for start, ch in enumerate(body):
            if ch in _CLOSER:
                value = _value_at(body, start)
                if value is not None:
                    return value
    return None


def _loads(s: str) -> Any | None:
    for attempt in (s, _TRAILING_COMMA.sub(r"\1", s)):
        try:
            return json.loads(attempt)
        except ValueError:
            continue
    return None


def _value_at(s: str, start: int) -> Any | None:
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []  # (end, closers) where cutting leaves complete values only
    in_string = escaped = False
    for i in range(start, len(s)):
        ch = s[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in _CLOSER:
            stack.append(_CLOSER[ch])
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                return None
            stack.pop()
            if not stack:
                return _loads(s[start : i + 1])
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    # Cut off: first try keeping a half-written string, then fall back to the last complete value.
    closers = "".join(reversed(stack))
    tail = s[start:].rstrip()
    if in_string:
        attempts = [tail + '"' + closers]
    elif tail.endswith('"'):
        attempts = [tail + closers]
    else:
        attempts = []  # a trailing number or literal may itself be cut ("10" -> "1"): never trust it
    attempts += [s[start:end] + close for end, close in reversed(cuts)]
    for attempt in attempts:
        if attempt.strip() in ("{}", "[]"):
            continue  # a lone opening bracket is not a value worth reporting
        value = _loads(attempt)
        if value is not None:
            return value
    return None


# --------------------------------------------------------------------------- re-rank scores


@dataclass(frozen=True)
class Judgement:
    score: float  # 0-10
    reason: str


_ID_KEYS = ("id", "product_id", "item_id", "candidate", "item", "product")
_SCORE_KEYS = ("score", "relevance", "rating", "match")
_REASON_KEYS = ("reason", "why", "explanation", "rationale")
_LIST_KEYS = ("scores", "results", "candidates", "ratings", "items", "ranking", "products")


def parse_scores(text: str, ids: Sequence[str]) -> dict[str, Judgement]:
    """Scores for the known ``ids`` found in a reply; empty when the reply holds none."""
    return scores_from(extract_json(text), ids)


def scores_from(value: Any, ids: Sequence[str]) -> dict[str, Judgement]:
    known = {str(i): str(i) for i in ids}
    known.update({_bare(i): str(i) for i in ids})
    out: dict[str, Judgement] = {}
    for raw_id, raw in _entries(value):
        item_id = known.get(str(raw_id).strip()) or known.get(_bare(str(raw_id)))
        if item_id is None or item_id in out:
            continue
        if isinstance(raw, dict):
            score = _first(raw, _SCORE_KEYS)
            reason = _first(raw, _REASON_KEYS)
        else:
            score, reason = raw, None
        number = _number(score)
        if number is not None:
            out[item_id] = Judgement(min(10.0, max(0.0, number)), str(reason or "")[:300])
    return out


def _entries(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, dict):
        for key in _LIST_KEYS:
            if isinstance(value.get(key), list | dict):
                yield from _entries(value[key])
                return
        if any(k in value for k in _ID_KEYS):
            value = [value]
        else:
            yield from value.items()  # {"p001": 7} or {"p001": {"score": 7, "reason": ...}}
            return
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                item_id = _first(item, _ID_KEYS)
                if item_id is not None:
                    yield item_id, item


def _first(d: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$", value)
        value = match.group(1) if match else None
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _bare(item_id: str) -> str:
    return item_id.strip().strip("[]#").strip()


# --------------------------------------------------------------------------- citations

# [p001] or [p001, p002]; not a Markdown link text "[...](...)".
_CITATION = re.compile(r"\[([^\[\]\n]{1,200})\](?!\()")
_ID_PREFIX = re.compile(r"^(?:ids?|products?|items?|images?)\s*[:#]?\s*", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CANNOT_TELL = re.compile(
    r"\b(?:can ?not|can't|cannot|could not|couldn't|unable to|impossible to|not possible to)\s+"
    r"(?:\w+\s+)?(?:tell|determine|see|say|confirm|verify|judge|identify|know|answer)\b"
    r"|\bnot (?:clear|visible|enough information|sure)\b"
    r"|\b(?:don't|do not) know\b|\bno way to tell\b|\binsufficient (?:information|detail)\b",
    re.I,
)


@dataclass
class CheckedCitations:
    text: str  # the answer with invented ids taken out
    cited: list[str]  # valid ids, in order of first mention
    invented: list[str]  # ids that were not offered, in order of first mention


def check_citations(text: str, allowed: Sequence[str]) -> CheckedCitations:
    """Keep citations of ``allowed`` ids; remove and report any other bracketed id."""
    allowed_set = {str(a) for a in allowed}
    cited: list[str] = []
    invented: list[str] = []

    def replace(match: re.Match[str]) -> str:
        keep = []
        for token in re.split(r"[,;]", match.group(1)):
            token = _ID_PREFIX.sub("", token.strip()).strip()
            if not token:
                continue
            if token in allowed_set:
                keep.append(token)
                if token not in cited:
                    cited.append(token)
            elif token not in invented:
                invented.append(token)
        return f"[{', '.join(keep)}]" if keep else ""

    cleaned = _CITATION.sub(replace, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)  # "red [p999]." left "red ."
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return CheckedCitations(cleaned, cited, invented)


def cited_ids(sentence: str) -> list[str]:
    ids: list[str] = []
    for match in _CITATION.finditer(sentence):
        for token in re.split(r"[,;]", match.group(1)):
            token = _ID_PREFIX.sub("", token.strip()).strip()
            if token and token not in ids:
                ids.append(token)
    return ids


def split_sentences(text: str) -> list[str]:
    """Sentences; a citation written after the full stop ("Red. [p001]") stays with its sentence."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        if not piece:
            continue
        if out and not _CITATION.sub("", piece).strip(" .,;:"):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def cannot_tell(text: str) -> list[str]:
    """The sentences in which the model says it cannot tell."""
    return [s for s in split_sentences(text) if _CANNOT_TELL.search(s)]
