"""Zero-shot tagging: classify each item's image vector against label sets, as CLIP zero-shot does.

A vocabulary file (YAML) maps a label-set name to its labels, optionally with prompt templates::

    colour: [red, orange, yellow, green, teal, blue, purple, pink, brown, black]
    category:
      labels: [t-shirt, trousers, dress]
      prompts: ["a photo of a {}", "a {} product photo"]

Each item gets ``tag_<set>`` (the best label) and ``tag_<set>_conf`` (its softmax probability),
both stored as filterable payload.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .encoders import Encoder

DEFAULT_PROMPTS = ("a photo of a {} product", "a {} item", "{}")


class TagVocabError(ValueError):
    pass


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    prompts: tuple[str, ...] = DEFAULT_PROMPTS


@dataclass(frozen=True)
class TagVocab:
    sets: tuple[LabelSet, ...]

    @classmethod
    def load(cls, path: Path) -> TagVocab:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise TagVocabError(f"{path}: cannot read tag vocabulary: {exc}") from exc
        if not isinstance(raw, dict) or not raw:
            raise TagVocabError(f"{path}: expected a mapping of label-set name -> list of labels")
        sets = []
        for name, spec in raw.items():
            prompts = DEFAULT_PROMPTS
            if isinstance(spec, dict):
                prompts = tuple(spec.get("prompts") or DEFAULT_PROMPTS)
                spec = spec.get("labels")
            if not isinstance(spec, list) or len(spec) < 2 or not all(isinstance(x, str) for x in spec):
                raise TagVocabError(f"{path}: label set {name!r}: give a list of at least two text labels")
            if not all("{}" in p for p in prompts):
                raise TagVocabError(f"{path}: label set {name!r}: every prompt needs a '{{}}' placeholder")
            if not str(name).isidentifier():
                raise TagVocabError(f"{path}: label set name {name!r} must be a plain identifier")
            sets.append(LabelSet(str(name), tuple(spec), tuple(prompts)))
        return cls(tuple(sets))

    def digest(self) -> str:
        blob = json.dumps([[s.name, s.labels, s.prompts] for s in self.sets]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def fields(self) -> dict[str, str]:
        """Payload fields the tags add, with their index kinds."""
        out: dict[str, str] = {}
        for s in self.sets:
            out[f"tag_{s.name}"] = "keyword"
            out[f"tag_{s.name}_conf"] = "float"
        return out


class Tagger:
    """Label text embeddings computed once; tagging a batch is one matrix product."""

    def __init__(self, vocab: TagVocab, encoder: Encoder):
        self.vocab = vocab
        self.scale = float(getattr(encoder, "logit_scale", 100.0))
        self._label_vecs = [label_embeddings(encoder, s) for s in vocab.sets]

    def tag(self, image_vecs: np.ndarray) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [{} for _ in range(len(image_vecs))]
        for label_set, vecs in zip(self.vocab.sets, self._label_vecs, strict=True):
            probs = softmax(self.scale * image_vecs @ vecs.T)
            best = probs.argmax(axis=1)
            for row, (i, p) in enumerate(zip(best, probs[np.arange(len(best)), best], strict=True)):
                out[row][f"tag_{label_set.name}"] = label_set.labels[i]
                out[row][f"tag_{label_set.name}_conf"] = round(float(p), 4)
        return out


def label_embeddings(encoder: Encoder, label_set: LabelSet) -> np.ndarray:
    """One unit vector per label: the mean of its prompt embeddings (CLIP's prompt ensembling)."""
    texts = [p.format(label) for label in label_set.labels for p in label_set.prompts]
    vecs = encoder.encode_texts(texts).reshape(len(label_set.labels), len(label_set.prompts), -1).mean(axis=1)
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
