"""``openai:MODEL[@BASE_URL]``: chat completions with image parts, for OpenAI and compatible servers.

Works with OpenAI itself and with vLLM, Ollama, LM Studio and Gemini's OpenAI endpoint. Retries
(exponential backoff with jitter on 429, 5xx, timeouts and dropped connections) are the openai
client's own, ``LOOKALIKE_VLM_MAX_RETRIES`` of them.
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

from PIL import Image

from .core import BaseVLM, Message, Usage, VLMNotConfigured, VLMReply, VLMRequestError
from .settings import VLMSettings


def data_url(image: Image.Image, quality: int = 90) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIVLM(BaseVLM):
    paid = True  # local OpenAI-compatible servers too: what they cost is the operator's to cap

    def __init__(self, spec: str, model: str, base_url: str | None, settings: VLMSettings):
        super().__init__(spec, settings)
        import openai

        self.model = model
        self.base_url = base_url
        self.workers = settings.vlm_concurrency
        api_key = settings.vlm_api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None and not os.environ.get("OPENAI_BASE_URL"):
                raise VLMNotConfigured(
                    f"{spec} needs an API key: set OPENAI_API_KEY or LOOKALIKE_VLM_API_KEY "
                    "(or name a local server: openai:MODEL@http://localhost:8000/v1)"
                )
            api_key = "unused"  # local servers take no key, but the client insists on one
        self._openai = openai
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=settings.vlm_timeout,
            max_retries=settings.vlm_max_retries,
        )

    def _cache_params(self) -> dict[str, Any]:
        return {"detail": self.settings.vlm_detail, "base_url": self.base_url}

    def _content(self, message: Message) -> str | list[dict[str, Any]]:
        if message.role != "user":
            return message.text()  # some compatible servers accept only plain text outside user turns
        detail = self.settings.vlm_detail
        return [
            {"type": "image_url", "image_url": {"url": data_url(p), "detail": detail}}
            if isinstance(p, Image.Image)
            else {"type": "text", "text": p}
            for p in message.parts
        ]

    def _call(self, conversations: list[list[Message]], max_tokens: int) -> list[VLMReply]:
        (conversation,) = conversations  # batch_size is 1: one request per conversation
        messages = [{"role": m.role, "content": self._content(m)} for m in conversation]
        extra: dict[str, Any] = {}
        if self.settings.vlm_temperature is not None:
            extra["temperature"] = self.settings.vlm_temperature
        started = time.perf_counter()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, **extra
            )
        except self._openai.APIStatusError as exc:
            raise VLMRequestError(self._status_message(exc)) from None
        except self._openai.APITimeoutError:
            raise VLMRequestError(
                f"{self.spec}: no reply within {self.settings.vlm_timeout:g}s "
                f"(LOOKALIKE_VLM_TIMEOUT), after {self._retries()}"
            ) from None
        except self._openai.APIConnectionError as exc:
            where = self.base_url or "the OpenAI API"
            raise VLMRequestError(f"{self.spec}: cannot reach {where} after {self._retries()}: {exc}") from None
        latency = time.perf_counter() - started
        if not response.choices:
            raise VLMRequestError(f"{self.spec}: the server sent a reply with no choices")
        usage = response.usage
        return [
            VLMReply(
                text=response.choices[0].message.content or "",
                model=response.model or self.model,
                usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(),
                latency_s=latency,
            )
        ]

    def _retries(self) -> str:
        n = self.settings.vlm_max_retries
        return f"{n} {'retry' if n == 1 else 'retries'}"

    def _status_message(self, exc: Any) -> str:
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        text = f"{self.spec}: HTTP {status}: {body.get('message') or exc.message}"
        if status in (401, 403):
            return text + " (check OPENAI_API_KEY or LOOKALIKE_VLM_API_KEY)"
        if status == 404:
            return text + " (check the model name and the base URL)"
        if status in (408, 409, 429) or status >= 500:
            return text + f" (after {self._retries()}; LOOKALIKE_VLM_MAX_RETRIES)"
        return text
