"""Catalog RAG, ``--rerank vlm`` and ``lookalike ask`` over a real edge index (tiny CLIP) and a scripted VLM server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from support.vlm_doubles import Scripted, request_images, request_texts
from typer.testing import CliRunner

from indexer import ImagePolicy, IndexManifest, IndexOptions, index_catalog, open_store, read_catalog
from search import Query, QueryError, SearchEngine, SearchSettings, parse_filters
from vlm import AskError, TooManyImages, VLMSettings, ask_catalog, make_vlm, vlm_reranker

PRODUCT_LINE = re.compile(r"^\[([^\]]+)\] ", re.M)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, models, tiny_clip_spec, text_spec) -> Path:
    from conftest import make_catalog

    root = tmp_path_factory.mktemp("vlm-ask")
    catalog = make_catalog(root / "catalog", n=24)
    data = root / "data"
    store_spec = f"edge:{data / 'store'}"
    store = open_store(store_spec)
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
    try:
        index_catalog(read_catalog(catalog), store, models, IndexOptions(batch_size=8), policy, root / "errors.jsonl")
    finally:
        store.close()
    IndexManifest(clip_model=tiny_clip_spec, text_model=text_spec, store=store_spec).save(data)
    return data


@pytest.fixture
def engine(data_dir, models):
    eng = SearchEngine(SearchSettings(data_dir=data_dir), models=models)
    yield eng
    eng.close()


def vlm_for(chat, data_dir, **overrides):
    settings = VLMSettings(data_dir=data_dir, vlm=f"openai:rag@{chat.url}", vlm_cache=False, **overrides)
    return make_vlm(settings.vlm, settings)


def citing_responder(body):
    """Cite the first two products shown, plus one that was never shown, and admit a limit."""
    shown = PRODUCT_LINE.findall(request_texts(body))
    a, b = shown[0], shown[1]
    return Scripted(
        f"The first one is the best match [{a}]. The second [{b}, p999] is cheaper. "
        "I cannot tell the fabric from these images."
    )


def test_catalog_answer_cites_retrieved_products_and_removes_invented_ids(chat, engine):
    chat.responder = citing_responder
    answer = ask_catalog(vlm_for(chat, engine.settings.data_dir), engine, "red dress for a party", k=4)
    (body,) = chat.requests
    shown = PRODUCT_LINE.findall(request_texts(body))
    expected = [h.id for h in engine.search(Query(text="red dress for a party", k=4, literal=True))]
    assert shown == expected == [s.id for s in answer.retrieved]
    assert len(request_images(body)) == 4
    assert "price: " in request_texts(body) and "Question: red dress for a party" in request_texts(body)

    assert answer.invented_ids == ["p999"] and "p999" not in answer.answer
    assert [c.id for c in answer.citations] == shown[:2]
    for citation in answer.citations:
        assert Path(citation.thumbnail).is_file() and citation.title
    first, second, third = answer.claims
    assert first.ids == [shown[0]] and first.images == [answer.citations[0].thumbnail]
    assert second.ids == [shown[1]] and second.text == f"The second [{shown[1]}] is cheaper."
    assert third.ids == [] and answer.uncited == [third.text]
    assert answer.cannot_tell == ["I cannot tell the fabric from these images."]
    data = json.loads(json.dumps(answer.to_dict()))
    assert data["flags"]["invented_ids_removed"] == ["p999"] and data["flags"]["cannot_tell"] is True
    assert len(data["retrieved"]) == 4 and data["citations"][0]["thumbnail"].endswith(".jpg")


def test_catalog_filters_limit_what_the_model_sees(chat, engine):
    chat.responder = lambda body: Scripted("All of these are bags.")
    flt = parse_filters(["category=bag", "price<30"], engine.fields)
    answer = ask_catalog(vlm_for(chat, engine.settings.data_dir), engine, "a bag", filters=flt, k=6)
    assert answer.retrieved and all(
        s.details["category"] == "bag" and s.details["price"] < 30 for s in answer.retrieved
    )
    assert answer.citations == [] and answer.uncited == ["All of these are bags."]


def test_catalog_question_limits(chat, engine):
    vlm = vlm_for(chat, engine.settings.data_dir, vlm_max_images=3)
    with pytest.raises(TooManyImages, match=r"k=4.*1 to 3 images per request \(LOOKALIKE_VLM_MAX_IMAGES\)"):
        ask_catalog(vlm, engine, "a bag", k=4)
    with pytest.raises(AskError, match="empty"):
        ask_catalog(vlm, engine, "  ", k=2)
    assert chat.requests == []


def test_search_rerank_vlm_reorders_falls_back_and_names_the_setting(chat, data_dir, models):
    settings = VLMSettings(data_dir=data_dir, vlm=f"openai:judge@{chat.url}", vlm_cache=False, vlm_max_retries=1)
    engine = SearchEngine(SearchSettings(data_dir=data_dir), models=models, rerankers={"vlm": vlm_reranker(settings)})
    try:
        plain = engine.search(Query(text="blue shirt", k=5))
        favourite = plain[-1].id

        def judge(body):
            ids = re.findall(r"Candidate \[([^\]]+)\]", request_texts(body))
            return Scripted(json.dumps({"scores": [{"id": i, "score": 10 if i == favourite else 1} for i in ids]}))

        chat.responder = judge
        reranked = engine.search(Query(text="blue shirt", k=5, rerank="vlm"))
        assert reranked[0].id == favourite and reranked[0].explanation["rerank"]["vlm_score"] == 10
        chat.responder = lambda body: Scripted("down", 503, headers={"retry-after-ms": "5"})
        fallback = engine.search(Query(text="blue shirt", k=5, rerank="vlm"))
        assert [h.id for h in fallback] == [h.id for h in plain]
        assert "HTTP 503" in fallback[0].explanation["rerank"]["fallback"]
    finally:
        engine.close()
    unset = VLMSettings(data_dir=data_dir, vlm=None)
    engine = SearchEngine(SearchSettings(data_dir=data_dir), models=models, rerankers={"vlm": vlm_reranker(unset)})
    try:
        with pytest.raises(QueryError, match="--rerank vlm needs a vision-language model: set LOOKALIKE_VLM"):
            engine.search(Query(text="blue shirt", rerank="vlm"))
    finally:
        engine.close()


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(chat):
    from ui.cli import app

    runner = CliRunner()
    base = {"LOOKALIKE_VLM": f"openai:cli@{chat.url}", "LOOKALIKE_VLM_CACHE": "false", "LOOKALIKE_DEVICE": "cpu"}

    def invoke(*args: str, **env: str | None):
        return runner.invoke(app, list(args), env={**base, **env})

    return invoke


def test_cli_ask_catalog_json(cli, chat, data_dir):
    chat.responder = citing_responder
    result = cli("ask", "which bag is red?", "--catalog", "--k", "3", "--data-dir", str(data_dir), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["retrieved"]) == 3 and len(data["citations"]) == 2
    assert data["flags"]["invented_ids_removed"] == ["p999"] and data["flags"]["cannot_tell"]


def test_cli_ask_about_images(cli, chat, tmp_path):
    paths = []
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (50, 50), colour).save(tmp_path / name)
        paths += ["--image", str(tmp_path / name)]
    chat.responder = lambda body: Scripted("The first is red [1] and the second is blue [2]. Image [7] is nice.")
    result = cli("ask", "compare these", *paths)
    assert result.exit_code == 0, result.output
    assert len(request_images(chat.requests[0])) == 2
    out = result.stdout
    assert out.startswith("The first is red [1] and the second is blue [2]. Image is nice.")
    assert f"[1] a.jpg  {tmp_path / 'a.jpg'}" in out and "removed citations" in out and ": 7" in out


def test_cli_errors_are_one_clear_line(cli, tmp_path, data_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    cases = [
        (("ask", "q", "--image", str(good)), {"LOOKALIKE_VLM": None}, "lookalike ask needs a vision-language model"),
        (("ask", "q", "--image", str(bad)), {}, "cannot read image"),
        (("ask", "q", *["--image", str(good)] * 3), {"LOOKALIKE_VLM_MAX_IMAGES": "2"}, "at most 2"),
        (("ask", "q"), {}, "give one or more --image files"),
        (
            ("search", "red", "--rerank", "vlm", "--data-dir", str(data_dir)),
            {"LOOKALIKE_VLM": None},
            "--rerank vlm needs a vision-language model: set LOOKALIKE_VLM",
        ),
    ]
    for args, env, message in cases:
        result = cli(*args, **env)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.startswith("error: ")
        assert "Traceback" not in result.output


def test_cli_search_rerank_vlm(cli, chat, data_dir):
    chat.responder = lambda body: Scripted('{"scores": []}')
    args = ["red dress", "--literal", "--rerank", "vlm", "--k", "3", "--data-dir", str(data_dir), "--json"]
    result = cli("search", *args)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and all(
        h["explanation"]["rerank"] == {"method": "vlm", "fallback": "invalid reply"} for h in hits
    )
    asked = [re.search(r"Score all \d+ candidates \(([^)]*)\)", json.dumps(r)).group(1) for r in chat.requests]
    ids = [i for chunk in asked for i in chunk.split(", ")]
    assert ids and len(ids) == len(set(ids))  # each candidate asked about once: an invalid reply is not retried
