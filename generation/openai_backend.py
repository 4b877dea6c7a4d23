"""``openai:MODEL[@BASE_URL]``: an images-edit API (``gpt-image-1``) with the product photo as the reference.

The API has no seeds, no ControlNet and no IP-Adapter: ``--structure`` and ``--control`` become words in the
prompt, ``--style`` picks ``input_fidelity`` (how closely the look of the reference is kept), and every variant
reports ``seed: null``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from search.limits import DailyBudget, LimitExceeded

from .conditions import square_reference
from .generator import Generated, GeneratorError, RequestError, VaryRequest, check_request
from .settings import GeneratorSettings

log = logging.getLogger(__name__)


class GeneratorBudgetSpent(GeneratorError, LimitExceeded):
    """The day's token budget of the paid images API is spent."""


# Sizes gpt-image-1 accepts; the variant keeps the source's orientation.
SIZES = {"square": "1024x1024", "landscape": "1536x1024", "portrait": "1024x1536"}
API_MAX_N = 10


class OpenAIImageGenerator:
    def __init__(self, spec: str, model: str, base_url: str | None, settings: GeneratorSettings):
        if not model:
            raise GeneratorError(f"generator spec {spec!r}: name the model, e.g. openai:gpt-image-1")
        self.spec = spec
        self.model = model
        self.base_url = base_url
        self.settings = settings
        self._client = None
        path = Path(settings.data_dir) / "budget-images.json"
        self.budget = DailyBudget(path, settings.generator_daily_tokens, f"image generation ({spec})")

    def describe(self, request: VaryRequest) -> dict[str, Any]:
        check_request(request, self.settings, steps_matter=False)
        if request.n > API_MAX_N:
            raise RequestError(f"n={request.n}: the images API makes at most {API_MAX_N} variants per request")
        return {
            **request.parameters(),
            "seed": None,
            "steps": None,
            "backend": "openai",
            "models": {"base": self.model},
            "base_url": self.base_url,
            "size": self._size(request.image),
            "input_fidelity": self._fidelity(request),
            "prompt": self._prompt(request),
        }

    def generate(self, request: VaryRequest) -> list[Generated]:
        info = self.describe(request)
        import openai

        try:
            self.budget.check()
        except LimitExceeded as exc:
            raise GeneratorBudgetSpent(str(exc), exc.retry_after) from None
        buf = io.BytesIO()
        square_reference(request.image).save(buf, format="PNG")
        try:
            response = self._api().images.edit(
                model=self.model,
                image=("product.png", buf.getvalue(), "image/png"),
                prompt=info["prompt"],
                n=request.n,
                size=info["size"],
                input_fidelity=info["input_fidelity"],
            )
        except openai.AuthenticationError as exc:
            raise GeneratorError(
                f"{self.spec}: the images API refused the key ({exc.status_code}); set LOOKALIKE_GENERATOR_API_KEY "
                "or OPENAI_API_KEY"
            ) from exc
        except openai.APIStatusError as exc:
            raise GeneratorError(f"{self.spec}: the images API answered {exc.status_code}: {exc.message}") from exc
        except openai.APIError as exc:  # connection errors and timeouts, after the client's own retries
            where = self.base_url or "the OpenAI API"
            raise GeneratorError(f"{self.spec}: cannot reach {where}: {exc}") from exc
        usage = getattr(response, "usage", None)
        self.budget.spend(int(getattr(usage, "total_tokens", 0) or 0))
        images = [_decode(item.b64_json, self.spec, i) for i, item in enumerate(response.data or [])]
        if len(images) != request.n:
            raise GeneratorError(f"{self.spec}: asked for {request.n} images, the API returned {len(images)}")
        return [Generated(image, None) for image in images]

    def _api(self):
        if self._client is None:
            import os

            import openai

            key = self.settings.generator_api_key or os.environ.get("OPENAI_API_KEY")
            if not key and self.base_url is None:
                raise GeneratorError(
                    f"{self.spec} needs an API key: set LOOKALIKE_GENERATOR_API_KEY or OPENAI_API_KEY, or give a "
                    "local server as openai:MODEL@http://HOST:PORT/v1"
                )
            self._client = openai.OpenAI(
                api_key=key or "unused",  # local servers usually take any key
                base_url=self.base_url,
                timeout=self.settings.generator_timeout,
                max_retries=2,
            )
        return self._client

    @staticmethod
    def _size(image: Image.Image) -> str:
        ratio = image.width / image.height
        return SIZES["landscape" if ratio > 1.2 else "portrait" if ratio < 1 / 1.2 else "square"]

    @staticmethod
    def _fidelity(request: VaryRequest) -> str:
        return "high" if request.style >= 0.5 else "low"

    @staticmethod
    def _prompt(request: VaryRequest) -> str:
        keep = (
            "Keep the product's exact shape, outline and camera angle."
            if request.structure >= 0.5
            else "The shape may change a little."
        )
        return f"A product photo of this item, {request.text.strip()}. {keep} Plain studio background, no text."


def _decode(b64: str | None, spec: str, index: int) -> Image.Image:
    if not b64:
        raise GeneratorError(f"{spec}: image {index} came back without b64_json data")
    try:
        with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as im:
            return im.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise GeneratorError(f"{spec}: image {index} from the API is not a readable image: {exc}") from exc
