"""The data dir's manifest: which model specs built the index, so every reader encodes queries alike."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .encoders import Device, make_encoder
from .pipeline import Models
from .specs import EncoderOptions
from .tags import LabelSet, Tagger, TagVocab

MANIFEST = "index.json"


@dataclass
class IndexManifest:
    clip_model: str
    text_model: str
    store: str
    tags: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> IndexManifest | None:
        path = Path(data_dir) / MANIFEST
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    def save(self, data_dir: Path) -> None:
        path = Path(data_dir) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    def tag_vocab(self) -> TagVocab | None:
        if not self.tags:
            return None
        return TagVocab(tuple(LabelSet(t["name"], tuple(t["labels"]), tuple(t["prompts"])) for t in self.tags))

    @staticmethod
    def tags_from(vocab: TagVocab | None) -> list[dict[str, Any]]:
        if vocab is None:
            return []
        return [{"name": s.name, "labels": list(s.labels), "prompts": list(s.prompts)} for s in vocab.sets]


def build_models(
    clip_spec: str,
    text_spec: str,
    device: Device,
    tags: TagVocab | None = None,
    options: EncoderOptions | None = None,
) -> Models:
    clip = make_encoder(clip_spec, device, options)
    text = make_encoder(text_spec, device, options)
    return Models(clip=clip, text=text, tagger=Tagger(tags, clip) if tags else None)
