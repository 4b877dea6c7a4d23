"""Spec string -> VLM backend."""

from __future__ import annotations

from indexer import Device

from .core import VLM, VLMNotConfigured
from .settings import EXAMPLES, VLMSettings, not_configured


def make_vlm(spec: str, settings: VLMSettings, device: Device | None = None) -> VLM:
    """``openai:MODEL[@BASE_URL]`` or ``hf:REPO_OR_PATH``. Nothing is loaded or contacted yet."""
    prefix, sep, rest = spec.partition(":")
    match prefix, bool(sep and rest.strip()):
        case "openai", True:
            from .openai_vlm import OpenAIVLM

            model, _, base_url = rest.partition("@")
            if not model:
                raise VLMNotConfigured(f"VLM spec {spec!r} names no model: use openai:MODEL[@BASE_URL]")
            return OpenAIVLM(spec, model, base_url or None, settings)
        case "hf", True:
            from .hf_vlm import HFVLM

            return HFVLM(spec, rest, settings, device or settings.torch_device())
        case _:
            raise VLMNotConfigured(f"cannot read VLM spec {spec!r} (LOOKALIKE_VLM); examples: {EXAMPLES}")


def vlm_from_settings(settings: VLMSettings, feature: str, device: Device | None = None) -> VLM:
    """The configured VLM, or an error for ``feature`` saying which setting to set."""
    if not settings.vlm:
        raise VLMNotConfigured(not_configured(feature))
    return make_vlm(settings.vlm, settings, device)
