"""The VLM protocol, its messages and replies, and what every backend shares.

Every backend resizes images before use, caches replies on disk (keyed by model, prompt and image
hashes), logs latency and token usage per call, and runs many conversations at once under a time
budget. A backend only implements ``_call``: one unit of work (one HTTP request, or one batched
``generate``) over conversations whose images are already resized.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from indexer import WeightsMissing
from search.limits import DailyBudget, LimitExceeded

from .metrics import VLM_CACHE_HITS, VLM_CALLS, VLM_TOKENS
from .settings import VLMSettings

log = logging.getLogger(__name__)

Part = str | Image.Image


class VLMError(RuntimeError):
    """A VLM that cannot be used or did not answer. The message says what to change."""


class VLMNotConfigured(VLMError):
    """No VLM spec set, or a spec that cannot be parsed."""


class VLMWeightsMissing(VLMError, WeightsMissing):
    """A local VLM's weights are not on this machine (see ``lookalike models pull``)."""


class VLMRequestError(VLMError):
    """The model did not answer (network, HTTP status, timeout), after the retries."""


class VLMTimeout(VLMRequestError):
    """No answer within the caller's time budget."""


class VLMBudgetSpent(VLMError, LimitExceeded):
    """The day's token budget for a paid VLM is spent."""


class TooManyImages(VLMError, ValueError):
    """A request with more images than ``LOOKALIKE_VLM_MAX_IMAGES`` allows."""


@dataclass(frozen=True)
class Message:
    """One chat turn: text and images in order."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...]

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", (text,))

    @classmethod
    def user(cls, *parts: Part) -> Message:
        return cls("user", tuple(parts))

    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))


Conversation = Sequence[Message]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class VLMReply:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_s": round(self.latency_s, 4)}


@runtime_checkable
class VLM(Protocol):
    spec: str
    max_images: int

    def generate(self, messages: Conversation, max_tokens: int | None = None) -> VLMReply:
        """One answer; raises VLMError when the model cannot answer."""

    def generate_many(
        self, conversations: Sequence[Conversation], max_tokens: int | None = None, budget_s: float | None = None
    ) -> list[VLMReply | VLMError]:
        """Answers in input order, run concurrently; a failed or late one is its VLMError."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------- images


def fit_image(image: Image.Image, short_side: int) -> Image.Image:
    """RGB, shrunk so the short side is at most ``short_side``: VLM cost grows with pixels, detail does not."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    w, h = image.size
    if min(w, h) <= short_side:
        return image
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if min(size) != short_side:  # rounding must not leave the short side one pixel off
        size = (short_side, size[1]) if w <= h else (size[0], short_side)
    return image.resize(size, Image.Resampling.BICUBIC)


def image_digest(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- cache


class ResponseCache:
    """Replies on disk, one JSON file per key; safe for concurrent readers and writers."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> VLMReply | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text())
            return VLMReply(data["text"], data["model"], Usage(**data["usage"]), data["latency_s"], cached=True)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable VLM cache entry %s: %s", path, exc)
            return None

    def put(self, key: str, reply: VLMReply) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**reply.to_dict(), "cached": False}
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)


# --------------------------------------------------------------------------- base backend


class BaseVLM:
    """Shared by the backends: image limits and resizing, caching, logging, concurrency and budget."""

    batch_size = 1  # conversations per ``_call``
    workers = 1  # ``_call``s in flight at once
    paid = False  # a paid API: its calls count against LOOKALIKE_VLM_DAILY_TOKENS

    def __init__(self, spec: str, settings: VLMSettings):
        self.spec = spec
        self.settings = settings
        self.max_images = settings.vlm_max_images
        self.cache = ResponseCache(Path(settings.data_dir) / "vlm-cache") if settings.vlm_cache else None
        limit = settings.vlm_daily_tokens if self.paid else None
        path = Path(settings.data_dir) / "budget-vlm.json"
        self.budget = DailyBudget(path, limit, f"the VLM ({spec})") if limit else None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- to implement ---------------------------------------------------------------------------

    def _call(self, conversations: list[list[Message]], max_tokens: int) -> list[VLMReply]:
        raise NotImplementedError

    def _cache_params(self) -> dict[str, Any]:
        """Backend settings that change the answer, and so belong in the cache key."""
        return {}

    # -- public ---------------------------------------------------------------------------------

    def generate(self, messages: Conversation, max_tokens: int | None = None) -> VLMReply:
        reply = self.generate_many([messages], max_tokens)[0]
        if isinstance(reply, VLMError):
            raise reply
        return reply

    def generate_many(
        self, conversations: Sequence[Conversation], max_tokens: int | None = None, budget_s: float | None = None
    ) -> list[VLMReply | VLMError]:
        started = time.perf_counter()
        max_tokens = max_tokens or self.settings.vlm_max_tokens
        prepared = [self._prepare(c) for c in conversations]
        keys = [self._key(c, max_tokens) for c in prepared]
        results: list[VLMReply | VLMError | None] = [None] * len(prepared)
        todo = []
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache else None
            if cached is not None:
                log.info("%s: cached reply (%s)", self.spec, key[:12])
                VLM_CACHE_HITS.labels(self.spec).inc()
                results[i] = cached
            else:
                todo.append(i)
        units = [todo[j : j + self.batch_size] for j in range(0, len(todo), self.batch_size)]
        pool = self._executor()
        futures = {
            pool.submit(self._run_unit, [prepared[i] for i in unit], [keys[i] for i in unit], max_tokens): unit
            for unit in units
        }
        remaining = None if budget_s is None else max(0.0, budget_s - (time.perf_counter() - started))
        done, pending = wait(futures, timeout=remaining)
        for future in pending:
            # A request already on the wire runs on and still fills the cache; queued ones never start.
            future.cancel()
            for i in futures[future]:
                results[i] = VLMTimeout(f"{self.spec}: no reply within the {budget_s:.1f}s budget")
        for future in done:
            unit = futures[future]
            try:
                replies: list[VLMReply | VLMError] = list(future.result())
            except VLMError as exc:
                VLM_CALLS.labels(self.spec, type(exc).__name__).inc()
                replies = [exc] * len(unit)
            except Exception as exc:  # a backend bug or an out-of-memory must not take the caller down
                VLM_CALLS.labels(self.spec, "error").inc()
                log.warning("%s: call failed", self.spec, exc_info=True)
                replies = [VLMError(f"{self.spec}: {type(exc).__name__}: {exc}")] * len(unit)
            for i, reply in zip(unit, replies, strict=True):
                results[i] = reply
        return [r if r is not None else VLMError(f"{self.spec}: no reply") for r in results]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- helpers --------------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vlm")
            return self._pool

    def _prepare(self, conversation: Conversation) -> list[Message]:
        count = sum(len(m.images()) for m in conversation)
        if count > self.max_images:
            raise TooManyImages(
                f"{count} images in one request; {self.spec} takes at most {self.max_images} (LOOKALIKE_VLM_MAX_IMAGES)"
            )
        side = self.settings.vlm_image_side
        return [
            Message(m.role, tuple(fit_image(p, side) if isinstance(p, Image.Image) else p for p in m.parts))
            for m in conversation
        ]

    def _key(self, conversation: list[Message], max_tokens: int) -> str:
        body = {
            "model": self.spec,
            "max_tokens": max_tokens,
            "temperature": self.settings.vlm_temperature,
            **self._cache_params(),
            "messages": [
                [m.role, [("image", image_digest(p)) if isinstance(p, Image.Image) else p for p in m.parts]]
                for m in conversation
            ],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def _run_unit(self, conversations: list[list[Message]], keys: list[str], max_tokens: int) -> list[VLMReply]:
        started = time.perf_counter()
        if self.budget is not None:
            try:
                self.budget.check()
            except LimitExceeded as exc:
                raise VLMBudgetSpent(str(exc), exc.retry_after) from None
        replies = self._call(conversations, max_tokens)
        elapsed = time.perf_counter() - started
        VLM_CALLS.labels(self.spec, "ok").inc()
        for reply, key in zip(replies, keys, strict=True):
            VLM_TOKENS.labels(self.spec, "prompt").inc(reply.usage.prompt_tokens)
            VLM_TOKENS.labels(self.spec, "completion").inc(reply.usage.completion_tokens)
            if self.budget is not None:
                self.budget.spend(reply.usage.prompt_tokens + reply.usage.completion_tokens)
            log.info(
                "%s: %.3fs, %d prompt + %d completion tokens",
                self.spec,
                reply.latency_s or elapsed,
                reply.usage.prompt_tokens,
                reply.usage.completion_tokens,
            )
            if self.cache is not None:
                self.cache.put(key, reply)
        return replies
