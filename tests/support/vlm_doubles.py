"""Offline stand-ins for tests and benchmarks: a scripted chat-completions server and a tiny random LLaVA.

Neither downloads anything. The server speaks enough of the OpenAI chat-completions protocol for the
real ``openai`` client; the LLaVA is a real architecture with random weights and a tokenizer trained
on a few sentences, saved like a Hub checkpoint so ``hf:PATH`` loads it through the real code path.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOLD_TIMEOUT_S = 30.0  # only ever reached by a test that is already failing: it then fails instead of hanging


@dataclass
class Scripted:
    """One reply: assistant ``text`` with a status (and headers), or a raw ``body``.

    ``release``: the reply waits until the test sets this event, so a test decides when (and in which
    order) replies arrive without relying on how fast anything runs. ``delay_s`` adds a fixed latency,
    for benchmarks; tests synchronise with ``release`` and ``ScriptedChatServer.gather`` instead.
    """

    text: str = "ok"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    release: threading.Event | None = None


Responder = Callable[[dict[str, Any]], Scripted]


class ScriptedChatServer:
    """``POST /v1/chat/completions`` on 127.0.0.1. Replies come from ``script`` (in order), then ``responder``.

    Every request body is kept in ``requests`` (its headers in ``headers``), so a test can count retries
    and look at what the client sent. ``in_flight`` counts requests received and not yet answered,
    ``max_in_flight`` its peak, ``replied`` the replies sent; ``wait_for_requests``, ``wait_for_in_flight``
    and ``wait_for_replies`` block until those counts are reached. With ``gather = n`` every reply waits
    until n requests are in flight at once, which proves a client sends them concurrently.

    A reply still held when its hold times out (``HOLD_TIMEOUT_S``) becomes an HTTP 400 saying why, which
    the client does not retry. ``reset`` releases every held reply and starts the counts again.
    """

    def __init__(self, responder: Responder | None = None, delay_s: float = 0.0):
        self.responder = responder
        self.delay_s = delay_s
        self.script: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.gather = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.replied = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0  # a request from before the last reset() no longer counts
        self._held: list[threading.Event] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedChatServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release_held()
        if self._thread is not None:  # shutdown() waits for serve_forever, so only after start()
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ScriptedChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        self._release_held()
        with self._changed:
            self._generation += 1
            self.script.clear()
            self.requests.clear()
            self.headers.clear()
            self.gather = 0
            self.in_flight = self.max_in_flight = self.replied = 0
            self._changed.notify_all()

    # -- waiting on the server ------------------------------------------------------------------

    def wait_for_requests(self, n: int, timeout: float = HOLD_TIMEOUT_S) -> None:
        self._wait_until(lambda: len(self.requests) >= n, f"{n} requests received", timeout)

    def wait_for_in_flight(self, n: int, timeout: float = HOLD_TIMEOUT_S) -> None:
        self._wait_until(lambda: self.in_flight >= n, f"{n} requests in flight at once", timeout)

    def wait_for_replies(self, n: int, timeout: float = HOLD_TIMEOUT_S) -> None:
        self._wait_until(lambda: self.replied >= n, f"{n} replies sent", timeout)

    def _wait_until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(
                    f"scripted server: no {what} within {timeout:g}s ({len(self.requests)} received, "
                    f"{self.in_flight} in flight, {self.replied} replied)"
                )

    # -- serving --------------------------------------------------------------------------------

    def _release_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for event in held:
            event.set()

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[Scripted, int]:
        with self._changed:
            generation = self._generation
            self.requests.append(body)
            self.headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
            reply = self.script.popleft() if self.script else None
        if reply is None:
            reply = self.responder(body) if self.responder else Scripted(delay_s=self.delay_s)
        if reply.release is not None:
            with self._lock:
                self._held.append(reply.release)
        return reply, generation

    def _hold(self, reply: Scripted, generation: int) -> str | None:
        """Wait until the reply may go; the reason it never may, if the hold times out."""
        with self._changed:
            n = self.gather
            gathered = self._changed.wait_for(
                lambda: generation != self._generation or self.max_in_flight >= n, HOLD_TIMEOUT_S
            )
            if not gathered:
                return f"scripted server: only {self.max_in_flight} of {n} requests were ever in flight at once"
        if reply.release is not None and not reply.release.wait(HOLD_TIMEOUT_S):
            return f"scripted server: reply held for {HOLD_TIMEOUT_S:g}s and never released"
        if reply.delay_s:
            time.sleep(reply.delay_s)
        return None

    def _finish(self, generation: int) -> None:
        with self._changed:
            if generation == self._generation:
                self.in_flight -= 1
                self.replied += 1
                self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": "not found"}}).encode(), {})
                reply, generation = server._next(body, {k.lower(): v for k, v in self.headers.items()})
                try:
                    problem = server._hold(reply, generation)
                    if problem is not None:
                        reply = Scripted(problem, 400)
                    if reply.body is not None:
                        payload = reply.body
                    elif reply.status >= 400:
                        payload = json.dumps({"error": {"message": reply.text, "type": "scripted"}}).encode()
                    else:
                        payload = json.dumps(completion(body.get("model", "scripted"), reply.text, body)).encode()
                    self._send(reply.status, payload, reply.headers)
                finally:
                    server._finish(generation)

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout); nothing to answer

        return Handler


def completion(model: str, text: str, request: dict[str, Any]) -> dict[str, Any]:
    prompt_words = sum(len(json.dumps(m.get("content", "")).split()) for m in request.get("messages", []))
    words = len(text.split())
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": words, "total_tokens": prompt_words + words},
    }


def request_texts(request: dict[str, Any]) -> str:
    """All text a chat-completions request carries, joined (for responders that read the prompt)."""
    out = []
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(out)


def request_images(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``image_url`` parts of a request, in order."""
    return [
        part["image_url"]
        for message in request.get("messages", [])
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


# --------------------------------------------------------------------------- tiny LLaVA

CORPUS = [
    "the red dress is made of cotton and the blue bag has a leather strap",
    "compare these two products and say which one is better for summer",
    "what material is this shirt made of? I cannot tell from the image",
    'reply with json only: {"scores": [{"id": "p001", "score": 7, "reason": "close match"}]}',
    "search candidate reference image shopper product catalog question answer",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(path: Path, seed: int = 0, image_size: int = 32, layers: int = 2, width: int = 32) -> Path:
    """Save a random LLaVA (tiny CLIP vision tower + tiny Llama) with its processor to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    patch = 8
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
