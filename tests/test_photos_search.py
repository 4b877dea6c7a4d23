"""Searching every photo of a product, on a real edge shard and on ``QdrantClient(":memory:")``, indexed by
the real pipeline with a tiny CLIP: each product once with the photo that matched best, "more like this"
and "like this but …" from any photo, and the image channel calibrated on max-sim scores."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_catalog
from PIL import Image
from qdrant_client import QdrantClient
from test_photos_index import OPTIONS, POLICY, add_photos

from indexer import index_catalog, open_store, read_catalog
from indexer.store_qdrant import QdrantStore
from search import Query, QueryError, SearchEngine, SearchSettings
from search.calibration import background_scores
from search.photos import max_sim_background

N = 24


def odd_one_out() -> Image.Image:
    """A photo like no other in the catalog: seeded noise."""
    pixels = np.random.default_rng(7).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(params=["edge", "qdrant"])
def indexed(request, tmp_path, models):
    """A catalog of 3 photos a product in which p005's third photo and p006's second are the same odd one."""
    catalog = make_catalog(tmp_path / "catalog", n=N)
    add_photos(catalog)
    images = catalog.parent / "images"
    odd_one_out().save(images / "p005-3.png")
    odd_one_out().save(images / "p006-2.png")
    if request.param == "edge":
        store = open_store(f"edge:{tmp_path / 'store'}")
    else:
        store = QdrantStore.from_client(QdrantClient(":memory:"), collection="photos")
    index_catalog(read_catalog(catalog), store, models, OPTIONS, POLICY, tmp_path / "errors.jsonl")
    yield catalog, store, tmp_path / "data"
    store.close()


def engine_for(indexed, models, **settings) -> SearchEngine:
    _, store, data_dir = indexed
    data_dir.mkdir(exist_ok=True)
    return SearchEngine(SearchSettings(data_dir=data_dir, **settings), store=store, models=models)


def test_a_photo_finds_its_product_once_shown_by_that_photo(indexed, models):
    engine = engine_for(indexed, models)
    hits = engine.search(Query(image=odd_one_out(), k=10, dedup=False))
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) == 10  # each product once, though all its photos were searched
    assert {ids[0], ids[1]} == {"p005", "p006"}
    by_id = {h.id: h for h in hits}
    assert by_id["p005"].photo == 2 and by_id["p006"].photo == 1
    assert by_id["p005"].image_url == "/items/p005/image?photo=2"
    assert by_id["p005"].photo_source().endswith("p005-3.png")
    assert by_id["p005"].to_dict()["photo"] == 2
    assert by_id["p005"].explanation["channels"]["image"]["raw"] == pytest.approx(1.0, abs=1e-3)
    # Main photos only: the odd photo is no product's main photo, so nothing matches it exactly.
    main = engine_for(indexed, models, all_photos=False).search(Query(image=odd_one_out(), k=10, dedup=False))
    assert all(h.photo is None for h in main)
    assert main[0].explanation["channels"]["image"]["raw"] < 0.999


def test_more_like_this_starts_from_the_photo_asked_for(indexed, models):
    engine = engine_for(indexed, models)
    photos_only = {"image": 1.0, "text": 0.0}  # the description channels would rank by title as well
    from_odd = engine.search(Query(like="p005", photo=2, k=5, dedup=False, weights=photos_only))
    assert "p005" not in [h.id for h in from_odd]
    assert from_odd[0].id == "p006" and from_odd[0].photo == 1
    assert from_odd[0].explanation["channels"]["image"]["raw"] == pytest.approx(1.0, abs=1e-3)
    from_main = engine.search(Query(like="p005", k=5, dedup=False, weights=photos_only))
    assert (from_main[0].id, from_main[0].photo) != ("p006", 1)  # from the main photo, the odd one is no match
    # With its description too, the photo's twin is still among the nearest.
    assert "p006" in [h.id for h in engine.similar("p005", k=5, photo=2)]


def test_like_this_but_starts_from_the_photo_asked_for(indexed, models):
    engine = engine_for(indexed, models)
    hits = engine.search(Query(like="p005", photo=2, text="in red", k=N - 1, dedup=False))
    assert hits and "p005" not in [h.id for h in hits]
    assert hits[0].explanation["query"] == "composed"
    assert all(h.photo is not None for h in hits)
    # Candidates are scored by their photo nearest the reference: p006 by its odd photo, the same as it.
    odd = next(h for h in hits if h.id == "p006")
    assert odd.photo == 1 and odd.explanation["channels"]["image"]["raw"] == pytest.approx(1.0, abs=1e-3)


def test_bad_photo_numbers_are_clear_errors(indexed, models):
    engine = engine_for(indexed, models)
    with pytest.raises(QueryError, match=r"'p005' has 3 photo\(s\): photo must be 0 to 2"):
        engine.search(Query(like="p005", photo=3))
    with pytest.raises(QueryError, match="give like as well"):
        engine.search(Query(text="red dress", photo=1))


def test_a_photo_that_failed_cannot_be_started_from(tmp_path, models):
    catalog = make_catalog(tmp_path / "catalog", n=4)
    add_photos(catalog)
    (catalog.parent / "images" / "p001-2.png").write_bytes(b"broken")
    store = open_store(f"edge:{tmp_path / 'store'}")
    index_catalog(read_catalog(catalog), store, models, OPTIONS, POLICY, tmp_path / "errors.jsonl")
    (tmp_path / "data").mkdir()
    engine = SearchEngine(SearchSettings(data_dir=tmp_path / "data"), store=store, models=models)
    with pytest.raises(QueryError, match="photo 1 could not be read when it was indexed"):
        engine.search(Query(like="p001", photo=1))
    assert engine.search(Query(like="p001", photo=2, k=2))
    store.close()


def test_the_image_channel_is_calibrated_on_max_sim_scores(indexed, models):
    engine = engine_for(indexed, models)
    cal = engine.calibration()
    assert {"text>photos", "image>photos", "text>image", "image>image"} <= set(cal)
    # The best of three photos against an unrelated query scores higher than the main photo alone.
    assert cal["image>photos"].median > cal["image>image"].median


def test_max_sim_background_is_the_best_photo_of_the_same_random_pairs():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(30, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sets = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(30)]
    sets = [s / np.linalg.norm(s, axis=1, keepdims=True) for s in sets]
    best = max_sim_background(queries, sets, 500, seed=3)
    first = background_scores(queries, np.stack([s[0] for s in sets]), 500, seed=3)
    assert np.all(best >= first - 1e-6) and np.any(best > first + 1e-3)
    single = max_sim_background(queries, [s[:1] for s in sets], 500, seed=3)
    np.testing.assert_allclose(single, first, atol=1e-6)  # one photo each: the plain background
    with pytest.raises(ValueError, match="at least 2 items"):
        max_sim_background(queries[:1], sets[:1], 10)


def test_an_index_with_main_photos_only_searches_as_before(tmp_path, models):
    catalog = make_catalog(tmp_path / "catalog", n=6)
    store = open_store(f"edge:{tmp_path / 'store'}")
    index_catalog(read_catalog(catalog), store, models, OPTIONS, POLICY, tmp_path / "errors.jsonl")
    assert "photos" not in store.schema().vectors
    (tmp_path / "data").mkdir()
    engine = SearchEngine(SearchSettings(data_dir=tmp_path / "data"), store=store, models=models)
    hits = engine.search(Query(like="p001", k=3))
    assert hits and all(h.photo is None for h in hits)
    assert engine.search(Query(like="p001", photo=0, k=3))[0].id == hits[0].id
    with pytest.raises(QueryError, match="has 1 photo"):
        engine.search(Query(like="p001", photo=1))
    store.close()


def test_the_api_names_the_photo_and_serves_it(indexed, models):
    import httpx
    from test_api import running_server

    from search.api import create_app
    from search.jobs import JobRunner

    catalog, _, _ = indexed
    engine = engine_for(indexed, models)
    with (
        running_server(create_app(engine, JobRunner(engine))) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        similar = client.get("/items/p005/similar", params={"photo": 2, "k": 3})
        assert similar.status_code == 200, similar.text
        hits = similar.json()["hits"]
        assert "p005" not in [h["id"] for h in hits]
        twin = next(h for h in hits if h["id"] == "p006")
        assert twin["photo"] == 1 and twin["image_url"] == "/items/p006/image?photo=1"
        served = client.get(twin["image_url"])
        assert served.status_code == 200 and served.content == (catalog.parent / "images" / "p006-2.png").read_bytes()
        body = client.post("/search", json={"like": "p005", "photo": 2, "text": "in red", "k": 3})
        assert body.status_code == 200 and all(h["photo"] is not None for h in body.json()["hits"])
        bad = client.get("/items/p005/similar", params={"photo": 9})
        assert bad.status_code == 400 and "photo must be 0 to 2" in bad.text
        assert client.get("/items/p005/image", params={"photo": 3}).status_code == 404


def test_a_hit_is_shown_by_its_main_photo_unless_another_matches_clearly_better():
    from indexer.store import PHOTOS_KEY
    from search import Hit
    from search.photos import with_best_photos

    def at(degrees: float) -> np.ndarray:
        return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], dtype=np.float32)

    # The main photo at 10 degrees from the query, a second one at 8, a third (its mark "!": not usable) skipped.
    payload = {PHOTOS_KEY: ["a", "!undecodable", "c"], "images": ["m.png", "bad.png", "c.png"]}
    hit = Hit("p", 1.0, payload, {}, {"photos": np.stack([at(10), at(8)])})
    query = at(0)
    assert with_best_photos([hit], query)[0].photo == 2  # strictly best: the third photo (row 1)
    assert with_best_photos([hit], query, margin=0.01)[0].photo == 0  # within the margin: the main photo
    far = Hit("p", 1.0, payload, {}, {"photos": np.stack([at(40), at(8)])})
    assert with_best_photos([far], query, margin=0.01)[0].photo == 2
    assert with_best_photos([hit], None) == [hit]
