"""``LOOKALIKE_QUERY_PARSER=vlm`` against a scripted OpenAI-compatible server: the reply checked against the
index, cached, time-budgeted, and the rules whenever the VLM fails; plugged into a real engine."""

from __future__ import annotations

import json

import pytest
from support.vlm_doubles import Scripted, request_texts
from test_lexical_search import build

from indexer import Condition
from search import Query
from search.understand import Vocabulary
from vlm import VLMQueryParser, VLMSettings, make_vlm, vlm_query_parser
from vlm.query_parser import understood_from_reply

VOCAB = Vocabulary.build(
    {"brand": ["Kestrel", "Northwind"], "colour": ["red", "blue"], "category": ["dress", "bag"]}, price_field="price"
)


def parser(chat, tmp_path, **overrides) -> VLMQueryParser:
    settings = VLMSettings(data_dir=tmp_path, vlm=f"openai:parse@{chat.url}", vlm_max_retries=0, **overrides)
    return VLMQueryParser(make_vlm(settings.vlm, settings), settings)


def reply(**fields) -> Scripted:
    data = {"search": "dress", "price_min": None, "price_max": None, "facets": {}, "codes": [], **fields}
    return Scripted(json.dumps(data))


def test_the_reply_is_read_into_the_rules_structure(chat, tmp_path):
    chat.script.append(reply(search="dress", price_max=60, facets={"brand": ["kestrel"], "colour": ["red"]}))
    u = parser(chat, tmp_path, vlm_cache=False)("something in red from kestrel, sixty at most", VOCAB)
    assert u.parser == "vlm" and u.text == "dress"
    assert u.summary() == "price <= 60; brand = Kestrel; colour = red"
    assert u.conditions()[0] == Condition("price", "range", {"lte": 60.0})
    (body,) = chat.requests
    prompt = request_texts(body)
    assert "- brand: Kestrel, Northwind" in prompt and "Price field: price" in prompt and '"price_min"' in prompt


def test_values_and_codes_the_index_does_not_hold_are_dropped(chat, tmp_path):
    chat.script.append(reply(facets={"brand": ["Gucci", "Northwind"], "size": ["M"]}, codes=["KS-1", "ZZ-9"]))
    u = parser(chat, tmp_path, vlm_cache=False)("northwind dress ks-1", VOCAB)
    assert u.summary() == "brand = Northwind"
    assert u.notes == ("not in this index: brand = Gucci", "not in this index: size = M")
    assert u.codes == ("KS-1", "ks-1")  # ZZ-9 was never typed


def test_replies_are_cached(chat, tmp_path):
    chat.script.append(reply(facets={"colour": ["blue"]}))
    p = parser(chat, tmp_path)
    first, second = p("a blue one", VOCAB), p("a blue one", VOCAB)
    assert first == second and first.summary() == "colour = blue" and len(chat.requests) == 1


@pytest.mark.parametrize(
    ("script", "note"),
    [
        (Scripted("I think they want a dress."), "the VLM parser gave no usable answer: read by the rules"),
        (Scripted("overloaded", status=500), "the VLM parser failed"),
        (Scripted(json.dumps({"search": "x"}), delay_s=1.5), "the VLM parser failed"),
    ],
)
def test_the_rules_read_the_query_when_the_vlm_cannot(chat, tmp_path, script, note):
    chat.script.append(script)
    u = parser(chat, tmp_path, vlm_cache=False, vlm_parse_budget_s=0.5)("red bags under 30", VOCAB)
    assert u.parser == "rules" and u.summary() == "price < 30; colour = red; category = bag"
    assert u.notes[-1].startswith(note)


def test_without_a_configured_vlm_the_rules_read_and_say_why(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_VLM", raising=False)
    u = vlm_query_parser(VLMSettings(data_dir=tmp_path))("red bags", VOCAB)
    assert u.summary() == "colour = red; category = bag" and "LOOKALIKE_VLM" in u.notes[-1]


@pytest.mark.parametrize("data", [None, [], "dress", {"search": 3, "price_min": "cheap", "facets": ["red"]}])
def test_malformed_replies(data):
    u = understood_from_reply(data, "red dress", VOCAB)
    assert u is None or (u.text == "red dress" and u.summary() == "")


def test_the_engine_uses_the_vlm_parser_when_asked(chat, tmp_path, models):
    chat.script.append(reply(search="bag", facets={"brand": ["Kestrel"], "category": ["bag"]}, price_max=20))
    settings = VLMSettings(data_dir=tmp_path / "data", vlm=f"openai:parse@{chat.url}", vlm_cache=False)
    eng = build(tmp_path, models, parsers={"vlm": vlm_query_parser(settings)}, query_parser="vlm")
    try:
        result = eng.run(Query(text="something from kestrel to carry things, twenty tops", k=10))
        assert result.understood.parser == "vlm"
        assert result.understood.summary() == "price <= 20; brand = Kestrel; category = bag"
        got = [eng.get(h.id).payload for h in result.hits]
        assert got and all(p["brand"] == "Kestrel" and p["category"] == "bag" and p["price"] <= 20 for p in got)
    finally:
        eng.close()
