"""SearchEngine on a real edge store: hand-made vectors where exact ranks are known, and a tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from indexer import Condition, Filter, ImagePolicy, IndexOptions, Record, StoreSchema, index_catalog, open_store
from indexer.pipeline import Models
from indexer.store import HASH_KEY, ID_KEY
from search import FilterError, Query, QueryError, SearchEngine, SearchSettings, parse_filters, parse_weights
from search.engine import CALIBRATION_FILE


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


class LookupEncoder:
    """A deterministic encoder over a fixed vocabulary, so expected ranks can be worked out by hand."""

    modalities = frozenset({"image", "text"})
    logit_scale = 100.0
    image_size = 224

    def __init__(self, table: dict[str, np.ndarray], dim: int, model_id: str):
        self.table, self.dim, self.model_id, self.spec = table, dim, model_id, model_id

    def encode_texts(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    def encode_images(self, images):
        return np.stack([self.table[im.info["key"]] for im in images]).astype(np.float32)


# Axis 0: red, axis 1: blue, axis 2: dress-ness, axis 3: bag-ness.
ITEMS = {
    "red-dress": unit(1, 0, 1, 0),
    "red-dress-2": unit(1, 0, 1, 0.001),  # a near-duplicate of red-dress
    "blue-dress": unit(0, 1, 1, 0),
    "red-bag": unit(1, 0, 0, 1),
    "blue-bag": unit(0, 1, 0, 1),
}
PAYLOAD = {
    "red-dress": {"colour": "red", "category": "dress", "price": 40},
    "red-dress-2": {"colour": "red", "category": "dress", "price": 45},
    "blue-dress": {"colour": "blue", "category": "dress", "price": 60},
    "red-bag": {"colour": "red", "category": "bag", "price": 20},
    "blue-bag": {"colour": "blue", "category": "bag", "price": 25},
}
TEXTS = {
    "red dress": unit(1, 0, 1, 0),
    "dress": unit(0, 0, 1, 0),
    "reddish dress": unit(0.3, 0, 1, 0),
    "red": unit(1, 0, 0, 0),
    "blue": unit(0, 1, 0, 0),
    "in blue": unit(0, 1, 0, 0),
    "bag": unit(0, 0, 0, 1),
}


@pytest.fixture
def engine(tmp_path):
    eng = hand_made_engine(tmp_path)
    yield eng
    eng.close()


def hand_made_engine(tmp_path, extra: dict[str, dict] | None = None, **settings) -> SearchEngine:
    """The five items above in a real edge store, with ``extra`` payload per item."""
    store = open_store(f"edge:{tmp_path / 'store'}")
    store.ensure_schema(
        StoreSchema({"image": 4, "text": 4, "semantic": 4}, {k: "lookup" for k in ("image", "text", "semantic")})
    )
    for key, kind in {"colour": "keyword", "category": "keyword", "price": "integer"}.items():
        store.ensure_payload_index(key, kind)
    store.upsert(
        [
            Record(
                i,
                {**PAYLOAD[i], **(extra or {}).get(i, {}), ID_KEY: i, HASH_KEY: "h", "title": i},
                {"image": v, "text": v, "semantic": v},
            )
            for i, v in ITEMS.items()
        ]
    )
    enc = LookupEncoder({**TEXTS, **ITEMS}, 4, "lookup")
    # Words as typed: these cases check the vector channels' exact ranks (query understanding has its own tests).
    config = SearchSettings(data_dir=tmp_path, query_parser="off", **settings)
    return SearchEngine(config, store=store, models=Models(clip=enc, text=enc))


def ids(hits):
    return [h.id for h in hits]


@pytest.mark.parametrize("fusion", ["rrf", "dbsf", "sum", "calibrated"])
def test_text_query_exact_ranks_under_every_fusion(engine, fusion):
    hits = engine.search(Query(text="red dress", k=5, dedup=False, fusion=fusion))
    assert ids(hits)[:2] in (["red-dress", "red-dress-2"], ["red-dress-2", "red-dress"])
    assert ids(hits)[-1] == "blue-bag"
    top = hits[0].explanation
    assert top["fusion"] == fusion and set(top["channels"]) == {"image", "text", "semantic"}
    assert top["channels"]["image"]["rank"] in (1, 2) and top["channels"]["image"]["weight"] == pytest.approx(0.6)


def test_dedup_collapses_near_identical_items(engine):
    hits = engine.search(Query(text="red dress", k=5))
    assert ids(hits)[0] == "red-dress" or ids(hits)[0] == "red-dress-2"
    assert len({"red-dress", "red-dress-2"} & set(ids(hits))) == 1
    assert hits[0].explanation["duplicates"]
    # A page that duplicates would leave short looks further down the list.
    two = engine.search(Query(text="red dress", k=2))
    assert len(two) == 2 and ids(two)[1] in {"blue-dress", "red-bag"} and two[0].explanation["duplicates"]
    assert all(h.payload["colour"] and h.vectors["image"].shape == (4,) for h in two)


def test_filters_run_in_the_store(engine):
    flt = parse_filters(["category=bag", "price<25"], engine.fields)
    assert ids(engine.search(Query(text="red", filters=flt))) == ["red-bag"]
    flt = parse_filters(["colour=red|blue", "price>=45"], engine.fields)
    assert set(ids(engine.search(Query(text="dress", filters=flt, dedup=False)))) == {"red-dress-2", "blue-dress"}
    flt = parse_filters(["colour!=red"], engine.fields)
    assert set(ids(engine.search(Query(text="dress", filters=flt)))) == {"blue-dress", "blue-bag"}


def test_more_like_this_excludes_the_item_itself(engine):
    hits = engine.search(Query(like="red-dress", k=3, dedup=False))
    assert "red-dress" not in ids(hits) and ids(hits)[0] == "red-dress-2"
    # A catalog item searches with its own stored vectors, its description included.
    assert hits[0].explanation["query"] == "item"
    assert set(hits[0].explanation["channels"]) == {"image", "text", "semantic"}
    with pytest.raises(QueryError, match="unknown item id"):
        engine.search(Query(like="nope"))


def test_image_query(engine):
    img = Image.new("RGB", (8, 8))
    img.info["key"] = "blue-bag"
    hits = engine.search(Query(image=img, k=1))
    assert ids(hits) == ["blue-bag"]
    assert hits[0].explanation["query"] == "image" and set(hits[0].explanation["channels"]) == {"image", "text"}


def test_negative_pushes_matching_items_down(engine):
    plain = ids(engine.search(Query(text="reddish dress", k=5, dedup=False)))
    negated = engine.search(Query(text="reddish dress", negative="red", k=5, dedup=False))
    assert plain.index("blue-dress") > 0 and ids(negated)[0] == "blue-dress"
    assert negated[-1].explanation["negative"]["penalty"] >= 0


def test_composed_query_changes_the_attribute_and_keeps_the_category(engine):
    structured = engine.search(Query(like="red-dress", text="in blue", k=2, dedup=False))
    assert ids(structured)[0] == "blue-dress"
    assert structured[0].explanation["query"] == "composed"


def test_paging_and_limits(engine):
    full = ids(engine.search(Query(text="dress", k=4, dedup=False)))
    assert ids(engine.search(Query(text="dress", k=2, offset=2, dedup=False))) == full[2:4]
    for bad, message in [
        (Query(), "empty query"),
        (Query(text="   "), "empty query"),
        (Query(text="x", k=0), "k must be"),
        (Query(text="x", k=1000), "k must be"),
        (Query(text="x", min_score=float("nan")), "min_score"),
        (Query(text="x", rerank="magic"), "unknown re-ranker"),
        (Query(text="x", weights={"image": -1, "text": 1}), "weights"),
    ]:
        with pytest.raises(QueryError, match=message):
            engine.search(bad)


def test_filter_and_weight_parsing_errors(engine):
    with pytest.raises(FilterError, match="valid fields: category"):
        parse_filters(["size=3"], engine.fields)
    with pytest.raises(FilterError, match="number field"):
        parse_filters(["price<cheap"], engine.fields)
    with pytest.raises(FilterError, match="needs a number field"):
        parse_filters(["colour>3"], engine.fields)
    with pytest.raises(FilterError, match="malformed"):
        parse_filters(["price"], engine.fields)
    assert parse_weights("image=0.2,text=0.8") == {"image": 0.2, "text": 0.8}
    with pytest.raises(FilterError):
        parse_weights("pixels=1")
    assert parse_filters(["category=dress"], engine.fields) == Filter(must=(Condition("category", "eq", "dress"),))


# -- a real tiny CLIP over a generated catalog ---------------------------------------------------------


@pytest.fixture
def real_engine(tmp_path, models):
    from conftest import make_catalog

    from indexer import read_catalog

    catalog = make_catalog(tmp_path / "catalog", n=40)
    store = open_store(f"edge:{tmp_path / 'data' / 'store'}")
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7, url_timeout=1, allow_private_urls=False)
    index_catalog(read_catalog(catalog), store, models, IndexOptions(batch_size=8), policy, tmp_path / "errors.jsonl")
    eng = SearchEngine(SearchSettings(data_dir=tmp_path / "data"), store=store, models=models)
    yield eng, catalog
    eng.close()


def test_real_model_search_calibration_and_min_score(real_engine):
    engine, catalog = real_engine
    hits = engine.search(Query(text="red dress", k=5))
    assert 1 <= len(hits) <= 5
    assert all(0 <= h.score <= 1 for h in hits)
    cached = json.loads((engine.settings.data_dir / CALIBRATION_FILE).read_text())
    assert set(cached["channels"]) == {"text>image", "text>text", "semantic>semantic", "image>image", "image>text"}
    cut = min(h.score for h in hits) + 1e-6
    assert all(h.score >= cut for h in engine.search(Query(text="red dress", k=5, min_score=cut)))
    image = Image.open(catalog.parent / "images" / "p002.jpg").convert("RGB")
    assert engine.search(Query(image=image, k=1, dedup=False))[0].payload["colour"] == "blue"
    composed = engine.search(Query(like="p000", text="in blue", k=3))
    assert composed and all(h.id != "p000" for h in composed)


@pytest.mark.parametrize("size", [0, 8])
def test_query_texts_asked_again_are_not_encoded_again(tmp_path, engine, size):
    from prometheus_client import REGISTRY

    encoded: list[str] = []

    class Counting(LookupEncoder):
        def encode_texts(self, texts):
            encoded.extend(texts)
            return super().encode_texts(texts)

    enc = Counting({**TEXTS, **ITEMS}, 4, "lookup")
    settings = SearchSettings(data_dir=tmp_path, query_parser="off", query_cache_size=size)
    eng = SearchEngine(settings, store=engine.store, models=Models(clip=enc, text=enc))

    def figure(name: str) -> float:
        return REGISTRY.get_sample_value(f"lookalike_query_cache_{name}_total", {"tower": "clip"}) or 0.0

    lookups, misses = figure("lookups"), figure("misses")
    first = eng.search(Query(text="red dress", k=3, negative="blue"))
    again = eng.search(Query(text="red dress", k=3, negative="blue"))
    assert [(h.id, h.score) for h in again] == [(h.id, h.score) for h in first]
    # Per search: the query through CLIP and MiniLM, and the negative through CLIP.
    assert len(encoded) == (6 if size == 0 else 3)
    assert figure("lookups") - lookups == 4
    assert figure("misses") - misses == (4 if size == 0 else 2)


def test_an_item_group_shows_once_as_its_best_matching_variant(tmp_path):
    groups = {"red-dress": "D1", "blue-dress": "D1", "red-bag": "B1", "blue-bag": "B1"}
    eng = hand_made_engine(tmp_path, {i: {"item_group_id": g} for i, g in groups.items()})
    try:
        hits = eng.search(Query(text="blue", k=5, dedup=False))
        # blue-dress and blue-bag match "blue" best: each stands for its group; red-dress-2 has none.
        assert set(ids(hits)) == {"blue-dress", "blue-bag", "red-dress-2"}
        by_id = {h.id: h for h in hits}
        assert by_id["blue-dress"].explanation["variants"] == ["red-dress"]
        assert by_id["blue-bag"].explanation["variants"] == ["red-bag"]
        assert ids(eng.search(Query(text="red dress", k=1, dedup=False))) in (["red-dress"], ["red-dress-2"])
        assert len(eng.search(Query(text="blue", k=5, dedup=False, group=False))) == 5
        # A page short of groups reaches further down the list: two groups and one lone item fill k=3.
        assert len(eng.search(Query(text="bag", k=3, dedup=False))) == 3
    finally:
        eng.close()
    off = hand_made_engine(tmp_path / "off", {i: {"item_group_id": g} for i, g in groups.items()}, group_field="")
    try:
        assert len(off.search(Query(text="blue", k=5, dedup=False))) == 5
    finally:
        off.close()
