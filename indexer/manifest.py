"""The data dir's manifest (which model specs and store built the index) and indexing into a data dir.

Paths a manifest records (checkpoints inside model specs, the store, the last catalog, the errors file)
are written relative to the data dir itself, as ``./…`` or ``../…``, when they lie within the data dir's
parent folder, and as absolute paths otherwise. So a data dir opens from any working directory, and
one moved or copied together with what it points to (``demo-data/`` with its ``index/`` and
``models/``) still opens. Manifests written with paths relative to the working directory at index time
still open from that directory, with a warning that says what to write instead.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .encoders import Device, make_encoder
from .engines import EngineConfig, WorkerSpec
from .files import atomic_write_text
from .images import ImagePolicy
from .lexical import LexicalEncoder
from .pipeline import IndexOptions, IndexReport, Models, ProgressFn, index_catalog
from .settings import Settings
from .specs import EncoderOptions, looks_like_path
from .store import VectorStore
from .tags import LabelSet, Tagger, TagVocab

log = logging.getLogger(__name__)

MANIFEST = "index.json"
_SPEC_FIELDS = ("clip_model", "text_model", "store")
_RUN_PATHS = ("catalog", "errors_path")


@dataclass
class IndexManifest:
    clip_model: str
    text_model: str
    store: str
    tags: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> IndexManifest | None:
        """The manifest with every recorded path made usable from the current working directory."""
        path = Path(data_dir) / MANIFEST
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        manifest = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        data_dir = Path(data_dir)
        fixes = []
        for name in _SPEC_FIELDS:
            value, cwd_relative = getattr(manifest, name), []
            setattr(manifest, name, _map_spec(value, partial(_resolve, data_dir=data_dir, found=cwd_relative)))
            if cwd_relative:
                fixes.append(f'"{name}": "{portable_spec(value, data_dir)}"')
        for key in _RUN_PATHS:
            if isinstance(manifest.last_run.get(key), str):
                manifest.last_run[key] = _resolve(manifest.last_run[key], data_dir, [])
        if fixes:
            log.warning(
                "%s records paths relative to the working directory it was indexed from, so it opens from "
                "there only. To open it from anywhere, write them relative to the data dir: %s "
                "(or re-run `lookalike index` on it, which rewrites them).",
                path,
                ", ".join(fixes),
            )
        return manifest

    def save(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        raw = asdict(self)
        for name in _SPEC_FIELDS:
            raw[name] = portable_spec(raw[name], data_dir)
        for key in _RUN_PATHS:
            if isinstance(raw["last_run"].get(key), str):
                raw["last_run"][key] = _portable(raw["last_run"][key], data_dir, always=True)
        path = data_dir / MANIFEST
        atomic_write_text(path, json.dumps(raw, indent=2))

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


@dataclass(frozen=True)
class IndexTarget:
    """Where an index run writes: the data dir, its open store (and that store's spec) and the models."""

    data_dir: Path
    store: VectorStore
    store_spec: str
    models: Models


def index_into(
    target: IndexTarget,
    catalog: Catalog,
    settings: Settings,
    errors_path: Path,
    *,
    prune: bool = False,
    progress: ProgressFn | None = None,
    build_progress: ProgressFn | None = None,
    engine: EngineConfig | None = None,
) -> IndexReport:
    """Index ``catalog`` into the data dir: the one path the CLI and the API's index jobs share.

    The manifest names the models before the store holds any item, so a run killed half-way leaves a
    data dir that still opens, and the re-run skips what was committed. ``engine`` (default: from the
    settings, ``LOOKALIKE_ENGINE``) says where the work runs.
    """
    models = target.models
    existing = IndexManifest.load(target.data_dir)
    manifest = IndexManifest(
        clip_model=models.clip.spec,
        text_model=models.text.spec,
        store=target.store_spec,
        tags=IndexManifest.tags_from(models.tagger.vocab if models.tagger else None),
        last_run=existing.last_run if existing else {},
    )
    manifest.save(target.data_dir)
    options = IndexOptions(
        batch_size=settings.batch_size,
        workers=settings.workers,
        prefetch_batches=settings.prefetch_batches,
        prune=prune,
        optimize_threshold=settings.optimize_threshold,
        vectors_on_disk=settings.vectors_on_disk,
    )
    policy = ImagePolicy.from_settings(settings)
    if models.lexical is not None and models.lexical.config != settings.lexical_config():
        models = replace(models, lexical=LexicalEncoder(settings.lexical_config()))
    engine = engine or EngineConfig.from_settings(settings)
    run = (catalog, target.store, models, options, policy, errors_path, progress)
    if engine.kind == "ray":
        from .engine_ray import index_catalog_ray

        workers = _worker_spec(target, settings)
        report = index_catalog_ray(*run, build_progress=build_progress, workers=workers, ray_options=engine.ray)
    else:
        report = index_catalog(*run, build_progress=build_progress)
    manifest.last_run = {"catalog": str(catalog.path), **report.to_dict()}
    manifest.save(target.data_dir)
    return report


def _worker_spec(target: IndexTarget, settings: Settings) -> WorkerSpec:
    models = target.models
    return WorkerSpec(
        clip_model=models.clip.spec,
        text_model=models.text.spec,
        device=settings.device,
        dtype=settings.dtype,
        tags=models.tagger.vocab if models.tagger else None,
        encoder_options=settings.encoder_options(),
        store=target.store_spec,
        access=settings.server_access(),
    )


# -- portable paths -----------------------------------------------------------------------------


def portable_spec(spec: str, data_dir: Path) -> str:
    """``spec`` with a local path in it written relative to ``data_dir`` (or absolute); see the module doc."""
    always = spec.startswith("edge:")  # a store path names a folder that may not exist yet
    return _map_spec(spec, lambda loc: _portable(loc, data_dir, always))


def _map_spec(spec: str, change) -> str:
    """Apply ``change`` to the location part of a spec that can name a local path."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        return spec
    match kind:
        case "edge" | "st" | "hf":
            return f"{kind}:{change(rest)}" if rest else spec
        case "openclip":
            arch, slash, weights = rest.partition("/")
            # "openclip:hf-hub:ORG/NAME" and pretrained tags name no file.
            if slash and weights and not arch.startswith("hf-hub") and looks_like_path(weights):
                return f"openclip:{arch}/{change(weights)}"
    return spec


def _portable(location: str, data_dir: Path, always: bool = False) -> str:
    path = Path(location).expanduser()
    if not path.is_absolute() and not (always or (looks_like_path(location) and path.exists())):
        return location  # a hub name ("sentence-transformers/all-MiniLM-L6-v2"), not a file here
    absolute = Path(os.path.abspath(path))
    relative = Path(os.path.relpath(absolute, Path(data_dir).absolute()))
    if relative.parts[:2] == ("..", ".."):
        return str(absolute)  # outside the data dir's parent: it stays put when the data dir moves
    return str(relative) if relative.parts[:1] == ("..",) else f"./{relative}"


def _resolve(location: str, data_dir: Path, found: list[str]) -> str:
    """A recorded location as a path usable from here; cwd-relative ones (older manifests) go in ``found``."""
    path = Path(location).expanduser()
    if path.is_absolute():
        return str(path)
    under = Path(os.path.abspath(data_dir / path))
    if under.exists():
        return str(under)
    if path.exists():
        found.append(location)
        return location
    if location.startswith(("./", "../")):
        return str(under)  # written relative to the data dir: a store not made yet, or a missing file
    return location
