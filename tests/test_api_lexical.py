"""What a query was understood as, literal searches and the bad-input list, through the REST API (a real
uvicorn server on 127.0.0.1) and the command line, over tiny real indexes."""

from __future__ import annotations

import json

import httpx
import pytest
from test_api import running_server
from test_lexical_search import POLICY, shop_catalog, without_price
from typer.testing import CliRunner

from indexer import IndexOptions, Models, index_catalog, open_store, read_catalog
from search import SearchEngine, SearchSettings
from search.api import create_app
from search.jobs import JobRunner
from search.lexical import ABSENT
from ui.cli import app


@pytest.fixture(scope="module")
def client(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("api-lexical")
    store = open_store(f"edge:{root / 'data' / 'store'}")
    catalog = read_catalog(shop_catalog(root / "catalog"))
    index_catalog(catalog, store, models, IndexOptions(batch_size=16), POLICY, root / "errors.jsonl")
    engine = SearchEngine(SearchSettings(data_dir=root / "data", device="cpu"), store=store, models=models)
    with running_server(create_app(engine, JobRunner(engine))) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c
    engine.close()


def post(client, **body) -> httpx.Response:
    return client.post("/search", json=body)


def test_the_answer_says_what_was_understood(client):
    body = post(client, text="Kestrel bags under 20 dollars", k=10).json()
    understood = body["understood"]
    assert understood["summary"] == "price < 20; brand = Kestrel; category = bag"
    assert understood["searched"] == "Kestrel bags" and understood["fell_back"] is False
    assert understood["price"] == {"field": "price", "lt": 20.0}
    assert understood["facets"] == [
        {"field": "brand", "values": ["Kestrel"], "words": "kestrel"},
        {"field": "category", "values": ["bag"], "words": "bags"},
    ]
    hits = body["hits"]
    assert hits and all(h["payload"]["category"] == "bag" and h["payload"]["price"] < 20 for h in hits)
    assert all(h["payload"]["brand"] == "Kestrel" for h in hits)


def test_literal_searches_the_words_as_typed(client):
    body = post(client, text="Kestrel bags under 20 dollars", k=10, literal=True).json()
    assert body["understood"] is None
    assert {h["payload"]["category"] for h in body["hits"]} != {"bag"}
    form = client.post("/search", data={"text": "Kestrel bags under 20", "literal": "true", "k": "10"}).json()
    assert form["understood"] is None and len(form["hits"]) == len(body["hits"])


def test_a_code_puts_its_products_first(client):
    hits = post(client, text="G-100", k=5).json()["hits"]
    assert {h["id"] for h in hits[:2]} == {"p004", "p019"}
    assert hits[0]["explanation"]["ranked_by"] == "code match" and hits[0]["relevance"] == 1.0
    assert hits[0]["explanation"]["code"]["products"] == 2
    assert post(client, text="ks-0012", k=3).json()["hits"][0]["id"] == "p012"


@pytest.mark.parametrize("text", ["the of and", "!!!", "?? ..."])
def test_stopwords_or_punctuation_get_a_400_that_says_why(client, text):
    r = post(client, text=text)
    assert r.status_code == 400
    assert r.json()["error"] == "query" and "only stopwords and punctuation" in r.json()["detail"]


def test_a_price_phrase_without_a_number_is_searched_as_words_and_said(client):
    body = post(client, text="bag under dollars", k=3).json()
    assert body["hits"] and body["understood"]["price"] is None
    assert "“under dollars” has no number: searched as words" in body["understood"]["notes"]


def test_understood_filters_that_leave_nothing_fall_back_to_the_words(client):
    body = post(client, text="Kestrel bags under 5", k=3).json()
    assert len(body["hits"]) == 3 and body["understood"]["fell_back"] is True
    assert any(n.startswith("nothing matches price < 5") for n in body["understood"]["notes"])


def test_long_queries(client):
    assert post(client, text="x" * 2000, k=2).status_code == 200
    assert post(client, text=("bags for every day " * 120)[:2000], k=2).status_code == 200
    r = post(client, text="x" * 2001)
    assert r.status_code == 422 and "at most 2000 characters" in r.text


def test_weights_take_the_lexical_channel(client):
    hits = post(client, text="Solstice", literal=True, weights="image=0,text=0,lexical=1", k=3).json()["hits"]
    assert all(h["payload"]["brand"] == "Solstice" for h in hits)
    r = post(client, text="bag", weights="image=1,words=1")
    assert r.status_code == 400 and "lexical=W" in r.json()["detail"]


def test_an_old_index_without_price_or_lexical_channel_answers_with_notes(tmp_path, models):
    engine = without_price(tmp_path, Models(models.clip, models.text, lexical=None))
    with running_server(create_app(engine, JobRunner(engine))) as base:
        body = httpx.post(f"{base}/search", json={"text": "bag under 20", "k": 3}, timeout=30).json()
    engine.close()
    assert body["hits"] and body["understood"]["summary"] == "category = bag"
    assert body["understood"]["notes"] == ["this index has no price field: “under 20” searched as words", ABSENT]


# -- command line -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_clip_spec):
    root = tmp_path_factory.mktemp("cli-lexical")
    catalog = shop_catalog(root / "catalog")
    data = root / "data"
    result = CliRunner().invoke(app, ["index", str(catalog), "--data-dir", str(data), "--model", tiny_clip_spec, "-q"])
    assert result.exit_code == 0, result.output
    return data


def cli(data_dir, *args):
    return CliRunner().invoke(app, ["search", *args, "--data-dir", str(data_dir)])


def test_cli_explain_shows_what_was_understood(data_dir):
    result = cli(data_dir, "Kestrel bags under 20 dollars", "--explain", "--k", "3")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    summary = "price < 20; brand = Kestrel; category = bag"
    assert first == f"understood: {summary} (searched “Kestrel bags”; --literal: as typed)"
    literal = cli(data_dir, "Kestrel bags under 20 dollars", "--explain", "--literal", "--k", "3")
    assert literal.exit_code == 0 and "understood:" not in literal.stdout


def test_cli_json_hits_carry_the_understood_query(data_dir):
    result = cli(data_dir, "KS-0007 shirt", "--json", "--k", "3")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["id"] == "p007" and hits[0]["explanation"]["ranked_by"] == "code match"
    assert hits[0]["explanation"]["understood"]["codes"] == ["KS-0007"]
    assert all(h["explanation"]["understood"]["summary"] == "category = shirt" for h in hits)
    plain = json.loads(cli(data_dir, "shirt", "--json", "--k", "2", "--literal").stdout)
    assert all("understood" not in h["explanation"] for h in plain)


def test_cli_bad_input_is_a_clear_error(data_dir):
    result = cli(data_dir, "the of and")
    assert result.exit_code != 0 and "only stopwords and punctuation" in result.output
    assert "Traceback" not in result.output
    noted = cli(data_dir, "bag under dollars", "--k", "2")
    assert noted.exit_code == 0 and noted.stdout.startswith("note: “under dollars” has no number")
