"""``hf:REPO_OR_PATH``: a local transformers VLM (LLaVA, LLaVA-NeXT, Qwen2/2.5-VL, SmolVLM, Idefics).

The model loads on first use, once, on the device resolved at the entry point. Conversations are
batched into one ``generate`` call (left padding), ``LOOKALIKE_VLM_BATCH_SIZE`` at a time; calls
run one after another, since a second concurrent ``generate`` on the same device only slows both.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

from PIL import Image

from indexer import Device
from indexer.weights import downloads_forbidden, missing_labels, repo_source

from .core import BaseVLM, Message, Usage, VLMError, VLMReply, VLMWeightsMissing
from .settings import VLMSettings

log = logging.getLogger(__name__)


class HFVLM(BaseVLM):
    def __init__(self, spec: str, path: str, settings: VLMSettings, device: Device):
        super().__init__(spec, settings)
        self.path = path
        self.weights = repo_source(path)
        if downloads_forbidden() and missing_labels([self.weights]):
            # Checked here, where the VLM is made, so a request that needs it fails at once (the API answers
            # 503) rather than in the worker that would load it.
            raise VLMWeightsMissing(spec, [path], setting="LOOKALIKE_VLM")
        self.device = device
        self.batch_size = settings.vlm_batch_size
        self._model: Any = None
        self._processor: Any = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        """Load processor and weights (done by the first call when not called before)."""
        with self._load_lock:
            if self._model is not None:
                return
            from transformers import AutoModelForImageTextToText, AutoProcessor

            started = time.perf_counter()
            try:
                processor = AutoProcessor.from_pretrained(self.path)
                model = AutoModelForImageTextToText.from_pretrained(self.path, dtype=self.device.dtype)
            except (OSError, ValueError, KeyError) as exc:
                if missing_labels([self.weights]):
                    raise VLMWeightsMissing(self.spec, [self.path], setting="LOOKALIKE_VLM") from None
                raise VLMError(
                    f"cannot load {self.spec}: {exc}. Without network access, hf: needs a local folder "
                    "or a model already in the Hugging Face cache"
                ) from None
            if getattr(processor, "chat_template", None) is None:
                raise VLMError(f"{self.spec}: the processor has no chat template, so prompts cannot be built")
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
            model.to(self.device.device).eval()
            self._processor, self._model = processor, model
            log.info("loaded %s on %s in %.1fs", self.spec, self.device, time.perf_counter() - started)

    def _cache_params(self) -> dict[str, Any]:
        return {"decoding": "greedy"}

    def _call(self, conversations: list[list[Message]], max_tokens: int) -> list[VLMReply]:
        import torch

        self.load()
        chats = [[_to_hf(m) for m in conv] for conv in conversations]
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
        if "processor_kwargs" in inspect.signature(self._processor.apply_chat_template).parameters:
            kwargs = {"processor_kwargs": kwargs}
        started = time.perf_counter()
        inputs = self._processor.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
        )
        inputs = inputs.to(self.device.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.device.dtype)
        pad_id = self._pad_id()
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad_id)
        latency = time.perf_counter() - started
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_len:]
        texts = self._processor.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        completion_counts = (new_tokens != pad_id).sum(dim=1).tolist()
        return [
            VLMReply(text.strip(), self.spec, Usage(int(p), int(c)), latency)
            for text, p, c in zip(texts, prompt_counts, completion_counts, strict=True)
        ]

    def _pad_id(self) -> int:
        config = self._model.generation_config
        tokenizer = getattr(self._processor, "tokenizer", None)
        for candidate in (
            config.pad_token_id,
            getattr(tokenizer, "pad_token_id", None),
            config.eos_token_id,
        ):
            if isinstance(candidate, list):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return int(candidate)
        return 0


def _to_hf(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": [
            {"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p}
            for p in message.parts
        ],
    }
