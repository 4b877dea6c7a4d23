"""The Generator protocol, the request it takes, its limits, and the spec-string factory.

Specs (``LOOKALIKE_GENERATOR``):
- ``diffusers:REPO_OR_PATH``   a diffusers pipeline (SD 1.5, SDXL or Flux) plus ControlNet and IP-Adapter,
                               which come from the ``LOOKALIKE_CONTROLNET`` / ``LOOKALIKE_IP_ADAPTER*`` settings
- ``openai:MODEL[@BASE_URL]``  an images-edit API (``gpt-image-1``) with the product image as the reference
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from indexer import Device, WeightsMissing

from .settings import GeneratorSettings

Control = Literal["canny", "depth", "none"]
CONTROLS: tuple[str, ...] = ("canny", "depth", "none")


class GeneratorError(RuntimeError):
    """A generator cannot be built or cannot run (missing weights, out of memory, remote failure)."""


class GeneratorWeightsMissing(GeneratorError, WeightsMissing):
    """A generator's weights are not on this machine (see ``lookalike models pull``)."""


class NonFiniteOutput(GeneratorError):
    """The pipeline produced NaN or infinite pixels (weights that overflow at this precision)."""


class RequestError(ValueError):
    """A variation request that breaks a limit or cannot be served as asked."""


@dataclass(frozen=True)
class VaryRequest:
    """Make ``n`` variants of ``image`` changed by ``text``; variant ``i`` uses seed ``seed + i``."""

    image: Image.Image
    text: str
    n: int = 4
    seed: int = 0
    structure: float = 0.8  # ControlNet conditioning scale
    style: float = 0.6  # IP-Adapter scale
    steps: int = 25
    control: Control = "canny"
    resolution: int | None = None  # longest side; None: the model's native size

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    def parameters(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "n": self.n,
            "seed": self.seed,
            "structure": self.structure,
            "style": self.style,
            "steps": self.steps,
            "control": self.control,
        }


@dataclass
class Generated:
    image: Image.Image
    seed: int | None  # None where the backend has no seeds (remote APIs)
    flagged: bool = False  # withheld by the safety checker


@runtime_checkable
class Generator(Protocol):
    spec: str

    def describe(self, request: VaryRequest) -> dict[str, Any]:
        """Every setting and model id that shapes the pixels of this request, without loading weights."""

    def generate(self, request: VaryRequest) -> list[Generated]:
        """``request.n`` variants, in seed order."""


def check_request(request: VaryRequest, settings: GeneratorSettings, steps_matter: bool = True) -> None:
    """Refuse requests over the configured caps before any work is done."""
    if not request.text or not request.text.strip():
        raise RequestError('give the change to make as text, e.g. "in navy blue leather"')
    if not 1 <= request.n <= settings.max_variants:
        raise RequestError(
            f"n={request.n} is over the cap: between 1 and {settings.max_variants} variants per request "
            "(LOOKALIKE_MAX_VARIANTS)"
        )
    if steps_matter and not 1 <= request.steps <= settings.max_steps:
        raise RequestError(
            f"steps={request.steps} is over the cap: between 1 and {settings.max_steps} (LOOKALIKE_MAX_STEPS)"
        )
    if request.resolution is not None and not 64 <= request.resolution <= settings.max_resolution:
        raise RequestError(
            f"resolution {request.resolution} is over the cap: between 64 and {settings.max_resolution} "
            "pixels on the longest side (LOOKALIKE_MAX_RESOLUTION)"
        )
    for name, value in (("structure", request.structure), ("style", request.style)):
        if not 0.0 <= value <= 2.0:
            raise RequestError(f"{name} must be between 0 and 2, got {value}")
    if request.control not in CONTROLS:
        raise RequestError(f"unknown control {request.control!r}: use canny, depth or none")
    if request.seed < 0 or request.seed + request.n > 2**63:
        raise RequestError(f"seed must be between 0 and 2**63 - n, got {request.seed}")


def fit_size(width: int, height: int, longest: int, multiple: int = 64) -> tuple[int, int]:
    """The source's aspect ratio at ``longest`` pixels on its long side, both sides a multiple of ``multiple``."""
    scale = longest / max(width, height)

    def snap(x: float) -> int:
        return max(multiple, int(round(x * scale / multiple)) * multiple)

    return snap(width), snap(height)


def image_digest(image: Image.Image) -> str:
    """Digest of the decoded pixels, so a re-encoded copy of the same picture hits the same cache entry."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def make_generator(settings: GeneratorSettings, device: Device) -> Generator:
    """Build the generator named by ``settings.generator`` (see the module docstring). Weights load lazily."""
    spec = settings.generator
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise GeneratorError(
            f"generator spec {spec!r} (LOOKALIKE_GENERATOR) has no backend prefix: "
            "use diffusers:REPO_OR_PATH or openai:MODEL[@BASE_URL]"
        )
    match kind:
        case "diffusers":
            from .diffusers_backend import DiffusersGenerator

            return DiffusersGenerator(spec, rest, settings, device)
        case "openai":
            from .openai_backend import OpenAIImageGenerator

            model, _, base_url = rest.partition("@")
            return OpenAIImageGenerator(spec, model, base_url or None, settings)
        case _:
            raise GeneratorError(
                f"generator spec {spec!r} (LOOKALIKE_GENERATOR): unknown backend {kind!r}; use diffusers: or openai:"
            )
