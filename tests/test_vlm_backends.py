"""VLM backends: one contract suite for both, then what is particular to each.

``openai:`` talks to a real chat-completions server on 127.0.0.1 through the real openai client;
``hf:`` loads a tiny random LLaVA (trained tokenizer, chat template) through AutoModel/AutoProcessor.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from support.vlm_doubles import Scripted, ScriptedChatServer, build_tiny_llava, request_images, request_texts

from search import Hit, Query
from vlm import (
    Message,
    TooManyImages,
    VLMError,
    VLMNotConfigured,
    VLMReply,
    VLMRequestError,
    VLMReranker,
    VLMSettings,
    VLMTimeout,
    ask_images,
    make_vlm,
    vlm_from_settings,
)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "model")


def vlm_settings(tmp_path: Path, **overrides) -> VLMSettings:
    return VLMSettings(data_dir=tmp_path, **overrides)


def spy_calls(vlm) -> list[int]:
    """Record the size of every backend call (HTTP request or batched generate)."""
    calls: list[int] = []
    original = vlm._call

    def counted(conversations, max_tokens):
        calls.append(len(conversations))
        return original(conversations, max_tokens)

    vlm._call = counted
    return calls


def picture(colour: str, size=(64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def product_hits(root: Path, n: int) -> list[Hit]:
    root.mkdir(parents=True, exist_ok=True)
    hits = []
    for i in range(n):
        path = root / f"c{i}.png"
        picture(["red", "blue", "green"][i % 3]).save(path)
        hits.append(Hit(f"c{i}", 1.0 - i / 100, {"title": f"item {i}", "image": str(path)}, {}))
    return hits


# --------------------------------------------------------------------------- contract


@pytest.fixture(params=["openai", "hf"])
def backend(request, tmp_path, server, tiny_llava, cpu):
    def make(**overrides):
        settings = vlm_settings(tmp_path, **overrides)
        if request.param == "openai":
            server.reset()
            server.responder = lambda body: Scripted(text="an answer about [1]")
            return make_vlm(f"openai:tiny@{server.url}", settings)
        return make_vlm(f"hf:{tiny_llava}", settings, cpu)

    made = []

    def factory(**overrides):
        vlm = make(**overrides)
        made.append(vlm)
        return vlm

    yield factory
    for vlm in made:
        vlm.close()


class TestVLMContract:
    def test_generates_text_within_max_tokens(self, backend):
        vlm = backend()
        reply = vlm.generate([Message.system("Be brief."), Message.user(picture("red"), "What is this?")], 6)
        assert isinstance(reply, VLMReply) and isinstance(reply.text, str) and reply.text
        assert 1 <= reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 0
        assert reply.latency_s > 0 and not reply.cached and reply.model

    def test_several_images_in_one_request_and_the_image_limit(self, backend):
        vlm = backend(vlm_max_images=2)
        calls = spy_calls(vlm)
        two = [Message.user(picture("red"), "and", picture("blue", (300, 900)), "compare")]
        assert vlm.generate(two, 4).text
        with pytest.raises(TooManyImages, match=r"3 images.*at most 2 \(LOOKALIKE_VLM_MAX_IMAGES\)"):
            vlm.generate([Message.user(picture("red"), picture("red"), picture("red"), "?")], 4)
        assert calls == [1]  # the refused request never reached the model

    def test_replies_are_cached_on_disk_by_prompt_and_image(self, backend, tmp_path):
        vlm = backend()
        calls = spy_calls(vlm)
        ask = [Message.user(picture("red"), "What colour?")]
        first = vlm.generate(ask, 5)
        second = vlm.generate(ask, 5)
        assert calls == [1] and second.cached and second.text == first.text
        assert list((tmp_path / "vlm-cache").rglob("*.json"))
        vlm.generate([Message.user(picture("blue"), "What colour?")], 5)
        vlm.generate([Message.user(picture("red"), "What shape?")], 5)
        assert calls == [1, 1, 1]
        uncached = backend(vlm_cache=False)
        uncached_calls = spy_calls(uncached)
        uncached.generate(ask, 5)
        uncached.generate(ask, 5)
        assert uncached_calls == [1, 1]

    def test_generate_many_answers_every_conversation_in_order(self, backend):
        vlm = backend()
        replies = vlm.generate_many(
            [[Message.user(picture(c), f"q{i}")] for i, c in enumerate(["red", "green", "blue", "red", "green"])], 3
        )
        assert len(replies) == 5 and all(isinstance(r, VLMReply) and r.text for r in replies)

    def test_unreadable_rerank_replies_keep_retrieval_order(self, backend, tmp_path, server):
        # Only the replies' content may decide the fallback: the tiny LLaVA on a busy CPU can outlast the
        # default 8s budget, which would make it "timeout" instead.
        vlm = backend(vlm_rerank_budget_s=3600)
        server.responder = lambda body: Scripted(text="Candidate one looks nice, I would say.")
        hits = product_hits(tmp_path / "imgs", 4)
        out = VLMReranker(vlm, vlm.settings).rerank(Query(text="red dress"), hits)
        assert [h.id for h in out] == [h.id for h in hits]
        assert [h.score for h in out] == [h.score for h in hits]
        assert all(h.explanation["rerank"]["fallback"] == "invalid reply" for h in out)

    def test_ask_images_returns_a_checked_answer(self, backend):
        vlm = backend()
        answer = ask_images(vlm, "Compare these two.", [picture("red"), picture("blue")], names=["a.jpg", "b.jpg"])
        assert [s.id for s in answer.retrieved] == ["1", "2"]
        assert answer.to_dict()["flags"].keys() >= {"invented_ids_removed", "cannot_tell"}
        with pytest.raises(TooManyImages, match="at most 10"):
            ask_images(vlm, "?", [picture("red")] * 11)


# --------------------------------------------------------------------------- settings and specs


def test_no_vlm_configured_names_the_setting_with_examples_for_both_backends(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_VLM", raising=False)
    with pytest.raises(VLMNotConfigured) as err:
        vlm_from_settings(vlm_settings(tmp_path), "lookalike ask")
    message = str(err.value)
    assert message.startswith("lookalike ask needs a vision-language model: set LOOKALIKE_VLM")
    assert "openai:gpt-4o-mini" in message and "openai:MODEL@http://" in message and "hf:" in message
    monkeypatch.setenv("LOOKALIKE_VLM", "  ")
    assert VLMSettings(data_dir=tmp_path).vlm is None
    for spec in ("nope:model", "openai:", "hf:", "gpt-4o"):
        with pytest.raises(VLMNotConfigured, match="LOOKALIKE_VLM|names no model"):
            make_vlm(spec, vlm_settings(tmp_path))


def test_settings_bound_the_image_side(tmp_path):
    with pytest.raises(ValueError, match="vlm_image_side"):
        vlm_settings(tmp_path, vlm_image_side=200)
    assert vlm_settings(tmp_path).vlm_image_side == 448


# --------------------------------------------------------------------------- openai: particulars


def test_openai_sends_resized_base64_images_with_the_detail_setting(chat, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    vlm = make_vlm(f"openai:tiny-vlm@{chat.url}", vlm_settings(tmp_path, vlm_image_side=336, vlm_detail="low"))
    vlm.generate([Message.system("Be brief."), Message.user("Look:", picture("red", (1000, 800)), "What?")], 33)
    (body,) = chat.requests
    assert body["model"] == "tiny-vlm" and body["max_tokens"] == 33 and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert request_texts(body).splitlines()[1:] == ["Look:", "What?"]
    (image,) = request_images(body)
    assert image["detail"] == "low"
    prefix, b64 = image["url"].split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert sent.format == "JPEG" and sent.size == (420, 336)
    assert chat.headers[0]["authorization"] == "Bearer sk-test"


def test_openai_api_key_setting_wins_and_a_missing_key_is_a_clear_error(chat, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path, vlm_api_key="sk-setting"))
    vlm.generate([Message.user("hi")])
    assert chat.headers[-1]["authorization"] == "Bearer sk-setting"
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(VLMNotConfigured, match="set OPENAI_API_KEY or LOOKALIKE_VLM_API_KEY"):
        make_vlm("openai:gpt-4o-mini", vlm_settings(tmp_path))


def test_openai_retries_429_then_succeeds(chat, tmp_path):
    chat.script.extend([Scripted("slow down", 429, headers={"retry-after-ms": "5"}), Scripted("fine")])
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path, vlm_max_retries=2))
    assert vlm.generate([Message.user("hi")]).text == "fine"
    assert len(chat.requests) == 2


def test_openai_gives_up_after_the_retries_with_a_clear_error(chat, tmp_path):
    chat.script.extend([Scripted("boom", 500, headers={"retry-after-ms": "5"})] * 4)
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path, vlm_max_retries=3))
    with pytest.raises(VLMRequestError, match=r"HTTP 500: boom \(after 3 retries; LOOKALIKE_VLM_MAX_RETRIES\)"):
        vlm.generate([Message.user("hi")])
    assert len(chat.requests) == 4
    chat.reset()
    chat.script.append(Scripted("model does not take images", 400))
    with pytest.raises(VLMRequestError, match="HTTP 400"):
        vlm.generate([Message.user("other")])
    assert len(chat.requests) == 1  # a client error is not retried


def test_openai_timeouts_and_unreachable_servers(chat, tmp_path):
    # Held until the client has given up, so the reply can never beat the 0.2s timeout on a slow machine.
    late = threading.Event()
    chat.script.extend([Scripted("late", release=late)] * 2)
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path, vlm_timeout=0.2, vlm_max_retries=1))
    with pytest.raises(VLMRequestError, match=r"no reply within 0.2s \(LOOKALIKE_VLM_TIMEOUT\), after 1 retry"):
        vlm.generate([Message.user("hi")])
    late.set()
    chat.wait_for_requests(2)  # the client timing out does not mean the server has read the retry yet
    assert len(chat.requests) == 2
    closed = ScriptedChatServer()
    url = closed.url
    closed.stop()
    gone = make_vlm(f"openai:m@{url}", vlm_settings(tmp_path, vlm_max_retries=0))
    with pytest.raises(VLMRequestError, match="cannot reach http://127.0.0.1"):
        gone.generate([Message.user("hi")])


def test_openai_requests_run_concurrently_and_in_order(chat, tmp_path):
    answer = {i: threading.Event() for i in range(6)}

    def echo(body):
        q = int(re.search(r"q(\d+)", request_texts(body)).group(1))
        return Scripted(text=f"answer to q{q}", release=answer[q])

    chat.responder = echo
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path, vlm_concurrency=6))
    with ThreadPoolExecutor(1) as caller:
        try:
            replies = caller.submit(vlm.generate_many, [[Message.user(f"q{i}")] for i in range(6)])
            # No reply leaves the server until all six requests wait there together: they were sent concurrently.
            chat.wait_for_in_flight(6)
            # Answered last question first, so the result's order is the client's doing, not the server's.
            for sent, i in enumerate(reversed(range(6)), start=1):
                answer[i].set()
                chat.wait_for_replies(sent)
            assert [r.text for r in replies.result(timeout=30)] == [f"answer to q{i}" for i in range(6)]
        finally:
            for event in answer.values():
                event.set()
    assert chat.max_in_flight == 6 and len(chat.requests) == 6


def test_openai_budget_returns_timeouts_and_late_replies_still_fill_the_cache(chat, tmp_path):
    late = threading.Event()
    chat.responder = lambda body: Scripted(text="late answer", release=late)
    vlm = make_vlm(f"openai:m@{chat.url}", vlm_settings(tmp_path))
    cached = threading.Event()
    put = vlm.cache.put

    def put_and_tell(key, reply):
        put(key, reply)
        cached.set()

    vlm.cache.put = put_and_tell
    try:
        # The reply is held until it is released below, so only the budget can end this call. The 0.5s only has
        # to cover handing the request to a worker thread: one still queued when the budget ends is never sent.
        (reply,) = vlm.generate_many([[Message.user("slow question")]], budget_s=0.5)
        assert isinstance(reply, VLMTimeout) and "0.5s budget" in str(reply)
        chat.wait_for_requests(1)
    finally:
        late.set()
    assert cached.wait(30), "the late reply never reached the cache"
    (again,) = vlm.generate_many([[Message.user("slow question")]], budget_s=0.5)
    assert isinstance(again, VLMReply) and again.cached and again.text == "late answer"
    assert len(chat.requests) == 1


# --------------------------------------------------------------------------- hf: particulars


def test_hf_loads_lazily_once_and_batches(tiny_llava, tmp_path, cpu):
    vlm = make_vlm(f"hf:{tiny_llava}", vlm_settings(tmp_path, vlm_batch_size=4, vlm_cache=False), cpu)
    assert vlm._model is None  # nothing loaded until the first question
    calls = spy_calls(vlm)
    replies = vlm.generate_many([[Message.user(picture("red"), f"question {i}")] for i in range(5)], 3)
    model = vlm._model
    assert calls == [4, 1] and all(r.usage.completion_tokens <= 3 for r in replies)
    vlm.generate([Message.user("no image at all")], 2)
    assert vlm._model is model


def test_hf_unloadable_model_is_a_clear_error(tmp_path, cpu):
    vlm = make_vlm(f"hf:{tmp_path / 'missing'}", vlm_settings(tmp_path), cpu)
    with pytest.raises(VLMError, match=r"cannot load hf:.*missing.*local folder"):
        vlm.generate([Message.user("hi")])
