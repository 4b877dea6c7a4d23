"""Where each part of a diffusers generator comes from, and the weight sources ``lookalike models`` pulls and lists.

A generator is more than its base pipeline: a ControlNet per control kind, an IP-Adapter with its image encoder,
an optional depth model and LoRAs. Settings name them, or the family's defaults (``FAMILIES``) do; the family
is read from the base's model_index.json, so until the base is here only the base itself can be listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.weights import (
    OTHER_FORMATS,
    HubRepo,
    LocalPath,
    NoWeights,
    WeightSource,
    cached_file,
    fetch,
    is_local_location,
    repo_source,
)

from .generator import GeneratorError
from .settings import FAMILIES, FamilyDefaults, GeneratorSettings

# diffusers loads the plain weights unless a variant is asked for; the fp16 copies would double the download.
VARIANTS = ("*.fp16.*", "*.bf16.*", "*.non_ema.*", "*.ema.*")
MODEL_REQUIRED = (("config.json",), ("*.safetensors", "*.bin"))


@dataclass(frozen=True)
class Components:
    """The location of every part a diffusers generator loads, settings first, then the family's defaults."""

    base: str
    canny: str
    depth: str
    ip_adapter: str | None  # None: turned off
    ip_subfolder: str
    ip_weight: str
    image_encoder: str
    depth_model: str | None
    loras: tuple[str, ...]

    @classmethod
    def resolve(cls, base: str, settings: GeneratorSettings, family: FamilyDefaults) -> Components:
        ip = settings.ip_adapter or family.ip_adapter
        sub = settings.ip_adapter_subfolder
        return cls(
            base=base,
            canny=settings.controlnet or family.canny,
            depth=settings.controlnet_depth or family.depth,
            ip_adapter=None if ip.lower() == "none" else ip,
            # "." names the folder's root (an empty variable means "unset", i.e. the family's default).
            ip_subfolder=family.ip_adapter_subfolder if sub is None else ("" if sub == "." else sub),
            ip_weight=settings.ip_adapter_weight or family.ip_adapter_weight,
            image_encoder=settings.ip_adapter_image_encoder or family.image_encoder,
            depth_model=settings.depth_model,
            loras=tuple(settings.lora),
        )

    def controlnet(self, control: str) -> str:
        return self.depth if control == "depth" else self.canny

    def sources(self, family: FamilyDefaults) -> list[WeightSource]:
        """The parts beyond the base: the canny ControlNet, the depth pair when a depth model is set, the
        IP-Adapter and its image encoder, and LoRAs."""
        sources = [model_source(self.canny)]
        if self.depth_model:
            sources += [model_source(self.depth), repo_source(self.depth_model)]
        if self.ip_adapter:
            sources += self._ip_adapter_sources(family)
        sources += [
            LocalPath(Path(x).expanduser()) if is_local_location(x) else HubRepo(x, patterns=("*.safetensors",))
            for x in self.loras
        ]
        return sources

    def _ip_adapter_sources(self, family: FamilyDefaults) -> list[WeightSource]:
        assert self.ip_adapter is not None
        if is_local_location(self.ip_adapter):
            return [LocalPath(Path(self.ip_adapter).expanduser())]
        prefix = f"{self.ip_subfolder}/" if self.ip_subfolder else ""
        patterns = [f"{prefix}{self.ip_weight}"]
        # Flux's IP-Adapter names its image encoder as a repo of its own; the others keep it in a subfolder.
        separate = family.name == "flux"
        if not separate:
            patterns += [f"{prefix}{self.image_encoder}/*.json", f"{prefix}{self.image_encoder}/*.safetensors"]
        adapter = HubRepo(self.ip_adapter, patterns=tuple(patterns), required=tuple((p,) for p in patterns))
        return [adapter, repo_source(self.image_encoder)] if separate else [adapter]


@dataclass(frozen=True)
class PipelineRepo:
    """A diffusers pipeline repo, fetched the way diffusers itself does (``DiffusionPipeline.download``)."""

    repo_id: str
    skip: tuple[str, ...] = ()  # components the loader passes as None, so never downloads

    @property
    def label(self) -> str:
        return self.repo_id

    def present(self) -> bool:
        index = cached_file(self.repo_id, "model_index.json")
        if index is None:
            return False
        folder = index.parent
        parts = [k for k, v in _read_json(index).items() if _is_component(k, v) and k not in self.skip]
        return all(_component_present(folder / k) for k in parts)

    def pull(self) -> None:
        from diffusers import DiffusionPipeline

        fetch(self.repo_id, lambda: DiffusionPipeline.download(self.repo_id, **dict.fromkeys(self.skip)))


def model_source(location: str) -> WeightSource:
    """A diffusers model (a ControlNet): a local folder, or a hub repo's config and plain weights."""
    if is_local_location(location):
        return LocalPath(Path(location).expanduser())
    return HubRepo(
        location,
        patterns=("*.json", "*.safetensors"),
        required=MODEL_REQUIRED,
        fallback=("diffusion_pytorch_model*.bin",),
        ignore=OTHER_FORMATS + VARIANTS,
    )


def family_from_config(config: dict[str, Any], where: str) -> str:
    """The family of the pipeline at ``where``, from its model_index.json."""
    name = str(config.get("_class_name", ""))
    if "Flux" in name:
        return "flux"
    if "XL" in name:
        return "sdxl"
    if name.startswith("StableDiffusion"):
        return "sd15"
    raise GeneratorError(
        f"{where} holds a {name or 'unknown'} pipeline; supported: Stable Diffusion 1.5, SDXL and Flux "
        "pipelines (or set LOOKALIKE_GENERATOR_FAMILY)"
    )


def generator_sources(settings: GeneratorSettings) -> list[WeightSource]:
    """Everything ``settings.generator`` loads, for ``lookalike models pull`` and ``list``; nothing is fetched."""
    kind, _, base = settings.generator.partition(":")
    if kind != "diffusers":
        return [NoWeights(f"{settings.generator} (a remote API)")]
    local = is_local_location(base)
    skip = () if settings.safety_checker else ("safety_checker",)
    first: WeightSource = LocalPath(Path(base).expanduser()) if local else PipelineRepo(base, skip)
    family = settings.generator_family
    if family == "auto":
        index = Path(base).expanduser() / "model_index.json" if local else cached_file(base, "model_index.json")
        if index is None or not index.is_file():
            return [first]
        family = family_from_config(_read_json(index), base)
    defaults = FAMILIES[family]
    return [first, *Components.resolve(base, settings, defaults).sources(defaults)]


def _is_component(key: str, value: Any) -> bool:
    return not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None


def _component_present(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    files = [p.name for p in folder.iterdir() if p.is_file()]
    # A model folder (it has a config.json) needs its weights too; tokenizers and schedulers are configs only.
    if "config.json" in files:
        return any(f.endswith((".safetensors", ".bin")) for f in files)
    return bool(files)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
