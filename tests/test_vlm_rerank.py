"""The VLM re-ranker against a scripted chat-completions server: scores, fallbacks, retries, budget, parallelism."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest
from PIL import Image
from support.vlm_doubles import Scripted, request_images, request_texts

from search import Hit, Query
from vlm import VLMReranker, VLMSettings, make_vlm


def hits_with_images(root: Path, n: int) -> list[Hit]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = root / f"c{i:02d}.png"
        Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(path)
        out.append(Hit(f"c{i:02d}", round(0.9 - 0.01 * i, 4), {"title": f"thing {i}", "image": str(path)}, {}))
    return out


def scorer(scores: dict[str, float], fence: bool = False, release: threading.Event | None = None):
    """A responder that scores the candidates named in each request (held until ``release`` is set, if given)."""

    def respond(body):
        ids = re.findall(r"Candidate \[([^\]]+)\]", request_texts(body))
        text = json.dumps({"scores": [{"id": i, "score": scores.get(i, 0), "reason": f"r-{i}"} for i in ids]})
        return Scripted(f"```json\n{text}\n```" if fence else text, release=release)

    return respond


def reranker(chat, tmp_path, **overrides) -> VLMReranker:
    settings = VLMSettings(data_dir=tmp_path, vlm_cache=False, **overrides)
    return VLMReranker(make_vlm(f"openai:judge@{chat.url}", settings), settings)


@pytest.mark.parametrize("fence", [False, True])
def test_scores_are_blended_and_reorder_the_candidates(chat, tmp_path, fence):
    hits = hits_with_images(tmp_path / "img", 6)
    chat.responder = scorer({"c05": 10, "c02": 6}, fence=fence)
    out = reranker(chat, tmp_path, vlm_rerank_weight=0.5, vlm_rerank_chunk=4).rerank(Query(text="red"), hits)
    assert [h.id for h in out][:2] == ["c05", "c02"]
    top = out[0]
    assert top.score == pytest.approx(0.5 * 0.85 + 0.5 * 1.0)
    assert top.explanation["rerank"] == {
        "method": "vlm",
        "vlm_score": 10.0,
        "reason": "r-c05",
        "weight": 0.5,
        "before": 0.85,
    }
    assert len(chat.requests) == 2  # 6 candidates in chunks of 4
    first = next(body for body in chat.requests if "Candidate [c00]" in request_texts(body))
    assert len(request_images(first)) == 4 and "Search: red" in request_texts(first)


def test_garbage_falls_back_to_retrieval_order_and_is_logged(chat, tmp_path, caplog):
    hits = hits_with_images(tmp_path / "img", 5)
    chat.responder = lambda body: Scripted("I like the second one best!")
    with caplog.at_level(logging.WARNING, logger="vlm"):
        out = reranker(chat, tmp_path).rerank(Query(text="red"), hits)
    assert [h.id for h in out] == [h.id for h in hits]
    assert [h.score for h in out] == [h.score for h in hits]
    assert {h.explanation["rerank"]["fallback"] for h in out} == {"invalid reply"}
    assert "not usable JSON" in caplog.text and "keeping retrieval order" in caplog.text


def test_one_bad_chunk_keeps_its_retrieval_scores_while_the_others_are_judged(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 4)
    good = scorer({"c00": 0, "c01": 0})

    def respond(body):
        return good(body) if "c00" in request_texts(body) else Scripted('{"scores": [{"id": "c02", "sc')

    chat.responder = respond
    out = {h.id: h for h in reranker(chat, tmp_path, vlm_rerank_chunk=2).rerank(Query(text="red"), hits)}
    assert out["c00"].explanation["rerank"]["vlm_score"] == 0.0
    assert out["c02"].explanation["rerank"]["fallback"] == "invalid reply"
    assert out["c02"].score == hits[2].score


def test_429_is_retried_then_the_rerank_succeeds(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 3)
    chat.script.append(Scripted("rate limited", 429, headers={"retry-after-ms": "5"}))
    chat.responder = scorer({"c02": 10})
    out = reranker(chat, tmp_path, vlm_max_retries=2).rerank(Query(text="red"), hits)
    assert out[0].id == "c02" and len(chat.requests) == 2


def test_network_failure_after_retries_keeps_retrieval_order(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 3)
    chat.responder = lambda body: Scripted("overloaded", 503, headers={"retry-after-ms": "5"})
    out = reranker(chat, tmp_path, vlm_max_retries=2).rerank(Query(text="red"), hits)
    assert [h.id for h in out] == [h.id for h in hits] and len(chat.requests) == 3
    fallback = out[0].explanation["rerank"]["fallback"]
    assert fallback.startswith("error: ") and "HTTP 503: overloaded" in fallback


def test_slow_replies_past_the_budget_keep_retrieval_order(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 4)
    # Held until the re-rank has returned, so "timeout" can only come from the 0.3s budget. A re-rank that
    # waited past it would get an error reply when the hold runs out, not a timeout.
    late = threading.Event()
    chat.responder = scorer({"c03": 10}, release=late)
    try:
        out = reranker(chat, tmp_path, vlm_rerank_budget_s=0.3, vlm_timeout=60).rerank(Query(text="red"), hits)
    finally:
        late.set()
    assert [h.id for h in out] == [h.id for h in hits]
    assert [h.score for h in out] == [h.score for h in hits]
    assert {h.explanation["rerank"]["fallback"] for h in out} == {"timeout"}


def test_chunks_run_in_parallel(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 20)
    # No reply leaves the server before all four chunk requests are there at once: chunks sent one after
    # another would wait for each other until the (generous) budget ends, and score nothing.
    chat.gather = 4
    chat.responder = scorer({"c19": 10})
    rr = reranker(chat, tmp_path, vlm_rerank_chunk=5, vlm_concurrency=4, vlm_rerank_budget_s=30)
    out = rr.rerank(Query(text="red"), hits)
    assert out[0].id == "c19" and out[0].explanation["rerank"]["vlm_score"] == 10.0
    assert len(chat.requests) == 4 and chat.max_in_flight == 4


def test_a_reference_image_goes_first_and_counts_against_the_image_limit(chat, tmp_path):
    hits = hits_with_images(tmp_path / "img", 6)
    chat.responder = scorer({})
    rr = reranker(chat, tmp_path, vlm_max_images=4, vlm_rerank_chunk=8)
    rr.rerank(Query(text="in blue", image=Image.new("RGB", (900, 600), "white")), hits)
    assert len(chat.requests) == 2  # 3 candidates + the reference per request
    for body in chat.requests:
        images = request_images(body)
        assert len(images) == 4
        assert "Reference image" in request_texts(body)
    chat.reset()
    looked_up = []

    def lookup(item_id):
        looked_up.append(item_id)
        return hits[0]

    rr.lookup = lookup
    rr.rerank(Query(like="c00", text="in blue"), hits[1:4])
    assert looked_up == ["c00"] and len(request_images(chat.requests[0])) == 4
