"""The lexical channel, codes and query understanding in SearchEngine, on a tiny real edge index
(tiny random CLIP, the real MiniLM), and the upgrade of an index built before the channel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_catalog

from indexer import ImagePolicy, IndexOptions, Models, index_catalog, open_store, read_catalog
from indexer.lexical import LEXICAL
from search import Query, QueryError, SearchEngine, SearchSettings
from search.lexical import ABSENT

BRANDS = ("Kestrel", "Northwind", "Solstice")
N = 30
POLICY = ImagePolicy(max_bytes=10**7, max_pixels=10**7)


def shop_catalog(root: Path, n: int = N) -> Path:
    """The conftest catalog plus what shops add: a brand, a SKU, a barcode, variants sharing a group."""
    path = make_catalog(root, n=n)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["brand"] = BRANDS[i // 3 % 3]
        row["sku"] = f"KS-{i:04d}"
        row["barcode"] = f"0{4006381333900 + i}"  # a leading zero keeps it a keyword
        row["item_group_id"] = "G-100" if i in (4, 19) else f"G-{i}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(root: Path, models: Models, parsers=None, **settings) -> SearchEngine:
    store = open_store(f"edge:{root / 'data' / 'store'}")
    catalog = read_catalog(shop_catalog(root / "catalog"))
    index_catalog(catalog, store, models, IndexOptions(batch_size=16), POLICY, root / "errors.jsonl")
    settings = SearchSettings(data_dir=root / "data", device="cpu", **settings)
    return SearchEngine(settings, store=store, models=models, parsers=parsers)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, models):
    eng = build(tmp_path_factory.mktemp("lexical"), models)
    yield eng
    eng.close()


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def payloads(engine, hits) -> list[dict]:
    return [engine.get(h.id).payload for h in hits]


def test_text_queries_fuse_the_lexical_channel(engine):
    hits = engine.search(Query(text="striped", k=5, literal=True))
    channels = hits[0].explanation["channels"]
    assert set(channels) == {"image", "text", "semantic", LEXICAL}
    assert channels[LEXICAL]["weight"] == pytest.approx(0.2)
    # No item says "striped": the channel is there, with nothing matched.
    assert all(h.explanation["channels"][LEXICAL]["raw"] == 0 for h in hits)
    (hit,) = engine.search(Query(text="Solstice", k=1, literal=True, weights={"image": 0, "text": 0, "lexical": 1}))
    assert engine.get(hit.id).payload["brand"] == "Solstice"
    assert hit.explanation["channels"][LEXICAL]["calibrated"] == 1.0  # the best lexical match of the query


@pytest.mark.parametrize("code", ["KS-0007", "ks-0007", "p007", "04006381333907", "KS-0007 red dress"])
def test_a_code_puts_its_product_first(engine, code):
    result = engine.run(Query(text=code, k=5))
    top = result.hits[0]
    assert top.id == "p007" and top.explanation["ranked_by"] == "code match"
    assert top.relevance == 1.0 and top.score > result.hits[1].score
    assert result.understood.codes and top.explanation["code"]["products"] == 1


def test_a_code_matching_several_products_puts_them_all_first(engine):
    hits = engine.search(Query(text="G-100", k=6))
    assert set(ids(hits[:2])) == {"p004", "p019"}
    assert all(h.explanation["code"] == {"field": "item_group_id", "value": "G-100", "products": 2} for h in hits[:2])
    assert hits[2].explanation["ranked_by"] != "code match"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_a_code_is_looked_up_within_the_filters_given(engine):
    from search import parse_filters

    flt = parse_filters(["category=bag"], engine.fields)  # p007 is a shirt
    hits = engine.search(Query(text="KS-0007", filters=flt, k=3))
    assert "p007" not in ids(hits) and all(h.explanation["ranked_by"] != "code match" for h in hits)


def test_price_words_become_a_filter(engine):
    result = engine.run(Query(text="dresses under 20 dollars", k=10))
    assert result.understood.summary() == "price < 20; category = dress"
    assert result.understood.text == "dresses"
    got = payloads(engine, result.hits)
    assert got and all(p["category"] == "dress" and p["price"] < 20 for p in got)
    assert len(got) == sum(1 for i in range(N) if i % 3 == 0 and 10 + i < 20)


def test_brand_and_category_words_become_filters(engine):
    result = engine.run(Query(text="Kestrel bags", k=10))
    assert result.understood.summary() == "brand = Kestrel; category = bag"
    got = payloads(engine, result.hits)
    assert got and all(p["brand"] == "Kestrel" and p["category"] == "bag" for p in got)


def test_literal_searches_the_words_as_typed(engine):
    result = engine.run(Query(text="Kestrel bags under 20", k=10, literal=True))
    assert result.understood is None
    assert {p["category"] for p in payloads(engine, result.hits)} != {"bag"}


def test_when_understood_filters_leave_nothing_the_words_are_searched(engine):
    result = engine.run(Query(text="Kestrel bags under 5", k=5))
    assert len(result.hits) == 5
    assert result.understood.fell_back
    assert "nothing matches price < 5; brand = Kestrel; category = bag: searched the words as typed" in (
        result.understood.notes
    )
    assert result.described()["fell_back"] is True


def test_a_price_phrase_without_a_number_is_searched_as_words(engine):
    result = engine.run(Query(text="bag under dollars", k=5))
    assert result.understood.price is None and result.hits
    assert "“under dollars” has no number: searched as words" in result.understood.notes


@pytest.mark.parametrize("text", ["the of and", "!!! ???", "...", "it"])
def test_stopwords_or_punctuation_alone_are_refused_clearly(engine, text):
    with pytest.raises(QueryError, match="only stopwords and punctuation"):
        engine.search(Query(text=text))


def test_a_2000_character_query_is_searched(engine):
    text = ("lovely thing for every day " * 80)[:2000]
    assert len(engine.search(Query(text=text, k=3))) == 3


def test_facet_boost_ranks_matches_first_without_dropping_the_rest(tmp_path, models):
    eng = build(tmp_path, models, facet_mode="boost", facet_boost=1.0)
    try:
        hits = eng.search(Query(text="Kestrel", k=20, dedup=False))
        brands = [p["brand"] for p in payloads(eng, hits)]
        assert brands[:10] == ["Kestrel"] * 10 and set(brands[10:]) - {"Kestrel"}
        assert hits[0].explanation["ranked_by"] == "calibrated + facet boost"
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    finally:
        eng.close()


def without_price(root: Path, models: Models) -> SearchEngine:
    """An engine over 12 items that have no price field, indexed with ``models``."""
    store = open_store(f"edge:{root / 'data' / 'store'}")
    catalog = read_catalog(shop_catalog(root / "catalog", n=12))
    for item in catalog.items:
        item.payload.pop("price")
    catalog.fields.pop("price")
    index_catalog(catalog, store, models, IndexOptions(batch_size=16), POLICY, root / "errors.jsonl")
    return SearchEngine(SearchSettings(data_dir=root / "data", device="cpu"), store=store, models=models)


def test_an_index_without_a_price_field_says_so(tmp_path, models):
    eng = without_price(tmp_path, models)
    try:
        result = eng.run(Query(text="bag under 20", k=3))
        assert result.understood.notes == ("this index has no price field: “under 20” searched as words",)
        assert result.understood.summary() == "category = bag" and result.hits
    finally:
        eng.close()


class CountingClip:
    """The tiny CLIP, counting the images it embeds."""

    def __init__(self, clip):
        self.clip, self.images = clip, 0

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_pixels(self, pixels):
        self.images += len(pixels)
        return self.clip.encode_pixels(pixels)


def test_an_index_made_before_the_channel_keeps_working_and_reindexing_adds_it(tmp_path, models):
    data, catalog = tmp_path / "data", read_catalog(shop_catalog(tmp_path / "catalog", n=12))
    old = Models(models.clip, models.text, lexical=None)
    store = open_store(f"edge:{data / 'store'}")
    index_catalog(catalog, store, old, IndexOptions(batch_size=16), POLICY, tmp_path / "errors.jsonl")
    assert store.schema().sparse == {}
    eng = SearchEngine(SearchSettings(data_dir=data, device="cpu"), store=store, models=models)
    result = eng.run(Query(text="KS-0005", k=3))
    assert result.notes == [ABSENT] and result.described()["notes"] == [ABSENT]
    assert result.hits[0].id == "p005"  # codes are exact matches on the payload: no channel needed
    assert LEXICAL not in result.hits[1].explanation["channels"]

    counting = CountingClip(models.clip)
    new = Models(counting, models.text)
    report = index_catalog(catalog, store, new, IndexOptions(batch_size=16), POLICY, tmp_path / "errors.jsonl")
    assert (report.lexical_filled, report.embedded, report.unchanged, counting.images) == (12, 0, 12, 0)
    assert "lexical vectors added to 12 stored items" in report.summary()
    assert store.schema().sparse == {LEXICAL: new.lexical.model_id}
    eng.refresh()
    result = eng.run(Query(text="Northwind", k=3, literal=True))
    assert result.notes == [] and LEXICAL in result.hits[0].explanation["channels"]
    again = index_catalog(catalog, store, new, IndexOptions(batch_size=16), POLICY, tmp_path / "errors.jsonl")
    assert again.lexical_filled == 0
    eng.close()
