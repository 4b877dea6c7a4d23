"""Hit.score is the number the list is ordered by, for every query kind, fusion method, negative and re-rank."""

from __future__ import annotations

import itertools

import pytest
from conftest import PALETTE, make_catalog
from PIL import Image

from indexer import ImagePolicy, IndexOptions, Models, Tagger, TagVocab, index_catalog, open_store, read_catalog
from search import Query, SearchEngine, SearchSettings

FUSIONS = ("calibrated", "rrf", "dbsf", "sum")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("score-order")
    catalog = make_catalog(root / "catalog", n=45)
    (root / "tags.yaml").write_text("colour: [red, green, blue, yellow, black]\ncategory: [dress, shirt, bag]\n")
    vocab = TagVocab.load(root / "tags.yaml")
    tagged = Models(models.clip, models.text, Tagger(vocab, models.clip))
    store = open_store(f"edge:{root / 'data' / 'store'}")
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
    index_catalog(read_catalog(catalog), store, tagged, IndexOptions(batch_size=16), policy, root / "errors.jsonl")
    # A small re-rank head, so pages reach past what the re-ranker saw.
    settings = SearchSettings(data_dir=root / "data", device="cpu", rerank_top_n=4)
    engine = SearchEngine(settings, store=store, models=tagged)
    engine.refresh(vocab)
    yield engine
    engine.close()


def queries() -> list[tuple[str, Query]]:
    photo = Image.new("RGB", (48, 48), PALETTE["blue"])
    kinds = {
        "text": {"text": "red dress", "literal": True},
        # Read as price < 40 and category = dress; then a code (an item id) put first.
        "text understood": {"text": "dresses under 40"},
        "text with a code": {"text": "p003 dress"},
        "image": {"image": photo},
        "like": {"like": "p003"},
        "composed": {"like": "p003", "text": "in blue"},
        "composed upload": {"image": photo, "text": "a bag"},
    }
    out = []
    for (kind, fields), fusion, negative, rerank in itertools.product(
        kinds.items(), FUSIONS, (None, "black"), ("none", "clip")
    ):
        query = Query(**fields, fusion=fusion, negative=negative, rerank=rerank, k=12, dedup=False)
        out.append((f"{kind} {fusion} not={negative} rerank={rerank}", query))
    arithmetic = Query(like="p003", text="in blue", composed_method="arithmetic", negative="black", k=12)
    return [*out, ("composed arithmetic not=black", arithmetic)]


@pytest.mark.parametrize(("name", "query"), queries(), ids=[name for name, _ in queries()])
def test_scores_never_increase_down_the_list(engine, name, query):
    hits = engine.search(query)
    assert len(hits) >= 5, name
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), (name, scores)
    assert "ranked_by" in hits[0].explanation
    assert all(h.relevance is None or 0.0 <= h.relevance <= 1.0 for h in hits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_min_score_cuts_the_list_on_its_scores(engine, fusion):
    full = engine.search(Query(text="red dress", fusion=fusion, negative="black", k=12, literal=True))
    cut = full[len(full) // 2].score
    kept = engine.search(Query(text="red dress", fusion=fusion, negative="black", k=12, min_score=cut, literal=True))
    assert [h.id for h in kept] == [h.id for h in full if h.score >= cut]
    assert len(kept) < len(full)


def test_the_explanation_names_the_method_and_keeps_the_channels(engine):
    (hit,) = engine.search(Query(text="red dress", fusion="rrf", k=1, literal=True))
    assert hit.explanation["ranked_by"] == "rrf" and hit.explanation["fused"] == pytest.approx(hit.score, abs=1e-6)
    assert {"raw", "calibrated", "rank"} <= set(hit.explanation["channels"]["image"])
    (penalised,) = engine.search(Query(text="red dress", fusion="rrf", negative="black", k=1, literal=True))
    assert penalised.explanation["ranked_by"] == "rrf - negative penalty"
    reranked = engine.search(Query(text="red dress", rerank="clip", k=6, literal=True))
    assert reranked[0].explanation["ranked_by"] == "clip re-rank"
    assert "not_reranked" in reranked[-1].explanation["rerank"]  # past the head of 4
