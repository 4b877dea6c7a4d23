"""Visual Q&A over images, and catalog RAG: answers that cite product ids, checked against what was shown.

VLMs describe visual details that are not there. So every answer is split into sentences, each
sentence is tied to the products (and images) it cites, citations of products the model was not
shown are removed and reported, and "I cannot tell" is surfaced rather than smoothed over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from indexer import Filter, ImageError, ImagePolicy
from indexer.images import load_image
from search import Hit, Query, SearchEngine

from .core import VLM, Message, TooManyImages, VLMReply
from .parsing import cannot_tell, check_citations, cited_ids, split_sentences

log = logging.getLogger(__name__)

CATALOG_SYSTEM = (
    "You answer questions about products from a catalog, using only the products shown to you. "
    "Each product is introduced by a line starting with its id in square brackets, followed by its "
    "image. Back every statement with the ids of the products it rests on, in square brackets, "
    "e.g. [{example}]. Cite only ids from the list. Describe only what the images and details show; "
    "if they do not let you answer, say 'I cannot tell' and why."
)
IMAGES_SYSTEM = (
    "You answer questions about the images shown to you, numbered [1], [2], ... in order. Back every "
    "statement with the numbers of the images it rests on, in square brackets, e.g. [1]. Describe only "
    "what you can see; if the images do not let you answer, say 'I cannot tell' and why."
)
PAYLOAD_SKIP = {"image", "description"}
MAX_FIELD_CHARS = 200


class AskError(ValueError):
    """A question that cannot be asked as given."""


@dataclass
class Source:
    """Something the model was shown: a catalog product or a given image."""

    id: str
    title: str
    thumbnail: str | None
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    image_sent: bool = True


@dataclass
class Claim:
    text: str
    ids: list[str]
    images: list[str]  # the thumbnails the claim rests on; empty means it cites nothing


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[Source]
    retrieved: list[Source]
    claims: list[Claim]
    invented_ids: list[str]
    cannot_tell: list[str]
    model: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    images_missing: list[str] = field(default_factory=list)

    @property
    def uncited(self) -> list[str]:
        return [c.text for c in self.claims if not c.ids]

    def flags(self) -> dict[str, Any]:
        return {
            "invented_ids_removed": self.invented_ids,
            "cannot_tell": bool(self.cannot_tell),
            "cannot_tell_sentences": self.cannot_tell,
            "uncited_sentences": self.uncited,
            "images_missing": self.images_missing,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": [_source_dict(s) for s in self.citations],
            "claims": [asdict(c) for c in self.claims],
            "flags": self.flags(),
            "retrieved": [_source_dict(s) for s in self.retrieved],
            "model": self.model,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "latency_s": round(self.latency_s, 3),
        }


def _source_dict(source: Source) -> dict[str, Any]:
    out = asdict(source)
    if out["score"] is not None:
        out["score"] = round(out["score"], 4)
    return out


# --------------------------------------------------------------------------- visual Q&A


def ask_images(
    vlm: VLM,
    question: str,
    images: Sequence[Image.Image],
    names: Sequence[str] | None = None,
    max_tokens: int | None = None,
) -> Answer:
    """Ask about one or more images; citations are image numbers ("1", "2", ...)."""
    _check_question(question)
    if not images:
        raise AskError("give at least one image to ask about")
    if len(images) > vlm.max_images:
        raise TooManyImages(
            f"{len(images)} images given; {vlm.spec} takes at most {vlm.max_images} per question "
            "(LOOKALIKE_VLM_MAX_IMAGES)"
        )
    names = list(names) if names is not None else [f"image {i}" for i in range(1, len(images) + 1)]
    sources = [Source(str(i), Path(n).name, n) for i, n in enumerate(names, start=1)]
    parts: list[str | Image.Image] = []
    for source, image in zip(sources, images, strict=True):
        parts += [f"[{source.id}]", image]
    parts.append(f"Question: {question}")
    reply = vlm.generate([Message.system(IMAGES_SYSTEM), Message.user(*parts)], max_tokens)
    return _answer(question, reply, sources, [])


# --------------------------------------------------------------------------- catalog RAG


def ask_catalog(
    vlm: VLM,
    engine: SearchEngine,
    question: str,
    filters: Filter | None = None,
    k: int = 8,
    policy: ImagePolicy | None = None,
    max_tokens: int | None = None,
) -> Answer:
    """Retrieve the top ``k`` products for ``question``, show them to the VLM, check its citations."""
    _check_question(question)
    if not 1 <= k <= vlm.max_images:
        raise TooManyImages(
            f"k={k}: catalog questions show one image per product, and {vlm.spec} takes 1 to "
            f"{vlm.max_images} images per request (LOOKALIKE_VLM_MAX_IMAGES)"
        )
    # A question is read whole by the VLM, so its words retrieve as typed: read as filters, "which bag
    # is red?" would show the VLM the red bags only, and leave it nothing to compare them with.
    hits = engine.search(Query(text=question, filters=filters or Filter(), k=k, literal=True))
    policy = policy or ImagePolicy.from_settings(engine.settings)
    sources, parts, missing = [], [], []
    for hit in hits:
        source, image = _product(hit, policy)
        sources.append(source)
        parts.append(_product_line(source))
        if image is None:
            missing.append(hit.id)
        else:
            parts.append(image)
    if not sources:
        return Answer(
            question,
            "No products match the question and filters, so there is nothing to answer from.",
            [],
            [],
            [],
            [],
            [],
            vlm.spec,
            0.0,
            0,
            0,
        )
    parts.append(f"Question: {question}")
    system = CATALOG_SYSTEM.format(example=sources[0].id)
    reply = vlm.generate([Message.system(system), Message.user(*parts)], max_tokens)
    return _answer(question, reply, sources, missing)


def _product(hit: Hit, policy: ImagePolicy) -> tuple[Source, Image.Image | None]:
    payload = hit.public_payload()
    thumbnail = hit.payload.get("image")  # the server's own file or URL: loaded here, never sent as text
    details = {
        k: (str(v)[:MAX_FIELD_CHARS] if isinstance(v, str) else v)
        for k, v in payload.items()
        if k not in PAYLOAD_SKIP and k != "title" and v not in (None, "")
    }
    image = None
    if thumbnail:
        try:
            image, _ = load_image(str(thumbnail), policy)
        except ImageError as exc:
            log.warning("product %s: image not shown to the VLM: %s", hit.id, exc)
    source = Source(hit.id, str(payload.get("title") or ""), thumbnail, hit.score, details, image is not None)
    return source, image


def _product_line(source: Source) -> str:
    facts = "; ".join(f"{k}: {v}" for k, v in source.details.items())
    note = "" if source.image_sent else " (no image available)"
    return f"[{source.id}] {source.title}" + (f" ({facts})" if facts else "") + note


# --------------------------------------------------------------------------- answers


def _check_question(question: str) -> None:
    if not question or not question.strip():
        raise AskError("the question is empty")


def _answer(question: str, reply: VLMReply, sources: list[Source], missing: list[str]) -> Answer:
    by_id = {s.id: s for s in sources}
    checked = check_citations(reply.text, list(by_id))
    if checked.invented:
        log.info("%s cited ids it was not shown (removed): %s", reply.model, ", ".join(checked.invented))
    claims = []
    for sentence in split_sentences(checked.text):
        ids = [i for i in cited_ids(sentence) if i in by_id]
        images = [by_id[i].thumbnail for i in ids if by_id[i].thumbnail and by_id[i].image_sent]
        claims.append(Claim(sentence, ids, images))
    return Answer(
        question=question,
        answer=checked.text,
        citations=[by_id[i] for i in checked.cited],
        retrieved=sources,
        claims=claims,
        invented_ids=checked.invented,
        cannot_tell=cannot_tell(checked.text),
        model=reply.model,
        latency_s=reply.latency_s,
        prompt_tokens=reply.usage.prompt_tokens,
        completion_tokens=reply.usage.completion_tokens,
        images_missing=missing,
    )
