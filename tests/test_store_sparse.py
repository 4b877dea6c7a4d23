"""The sparse (lexical) channel's contract, on both store adapters: the embedded edge shard and
qdrant-client's ``QdrantClient(":memory:")``, each opened as a new process would (see ``Backend``)."""

from __future__ import annotations

import numpy as np
import pytest
import test_store_contract as contract
from test_store_contract import SCHEMA, Backend, image_vec, text_vec

from indexer.lexical import LEXICAL, LexicalConfig, LexicalEncoder, fill_lexical
from indexer.store import ID_KEY, Condition, Filter, Record, SearchRequest, SparseVector, StoreError, StoreSchema

ENCODER = LexicalEncoder(LexicalConfig(fields=("title", "brand", "id")))
SPARSE = StoreSchema(SCHEMA.vectors, SCHEMA.models, {LEXICAL: ENCODER.model_id})
TITLES = [
    "red dress",
    "blue dress",
    "red striped shirt",
    "green bag",
    "black coat",
    "red dress with dots",
    "yellow sandal",
    "pink bag",
]
BRANDS = ["Kestrel", "Northwind", "Kestrel", "Solstice", "Northwind", "Maple Lane", "Kestrel", "Solstice"]


def payload(i: int) -> dict:
    return {"title": TITLES[i], "brand": BRANDS[i], ID_KEY: f"p{i}"}


def record(i: int, lexical: bool = True) -> Record:
    vectors = {"image": image_vec(i), "text": text_vec(i)}
    if lexical:
        vectors[LEXICAL] = ENCODER.document(payload(i))
    return Record(f"p{i}", payload(i), vectors)


backend = contract.backend  # the contract's fixture: one store per backend, edge and qdrant


def filled(backend):
    s = backend.open()
    s.ensure_schema(SPARSE)
    s.upsert([record(i) for i in range(len(TITLES))])
    s.ensure_payload_index("brand", "keyword")
    return s


def ids(points) -> list[str]:
    return [p.id for p in points]


def test_a_new_store_records_its_sparse_vector_as_filled(backend):
    filled(backend)
    assert backend.open().schema() == SPARSE


def test_lexical_search_ranks_by_bm25_with_idf(backend):
    s = filled(backend)
    got = s.search_union({"image": image_vec(0), LEXICAL: ENCODER.query("red dress")}, limit=3)
    lexical = got[LEXICAL]
    # Both words beat one; "dress" is rarer than "red" (2 of 8 items against 3), so it weighs more.
    assert ids(lexical)[:2] == ["p0", "p5"] and lexical[0].score > lexical[1].score > 0
    assert ids(lexical)[2] == "p1"
    assert set(ids(got["image"])) == set(ids(lexical)) | {"p0", "p1", "p2"}
    assert all(p.payload == {ID_KEY: p.id} for p in lexical)
    # Filters apply to the lexical channel as to any other.
    kestrel = Filter(must=(Condition("brand", "eq", "Kestrel"),))
    only = s.search_union({LEXICAL: ENCODER.query("red")}, limit=5, flt=kestrel)[LEXICAL]
    assert ids(only) == ["p0", "p2"] or ids(only) == ["p2", "p0"]


def test_both_stores_give_the_same_lexical_scores(tmp_path):
    scores = {}
    for kind in ("edge", "qdrant"):
        b = Backend(kind, tmp_path / kind)
        s = filled(b)
        (hits,) = s.search_batch([lexical_request("red bag kestrel")])
        scores[kind] = {h.id: round(h.score, 4) for h in hits}
        b.close()
    assert scores["edge"] == scores["qdrant"] and len(scores["edge"]) == 6


def lexical_request(text: str) -> SearchRequest:
    return SearchRequest(LEXICAL, ENCODER.query(text), 8, keys=[])


def test_stopwords_only_match_nothing(backend):
    s = filled(backend)
    assert ENCODER.query("the of and !!") == SparseVector((), ())
    (hits,) = s.search_batch([lexical_request("the of and")])
    assert hits == []


def test_sparse_vectors_come_back_as_sparse_vectors(backend):
    s = filled(backend)
    (rec,) = s.retrieve(["p3"], with_vectors=True)
    assert set(rec.vectors) == {"image", "text", LEXICAL}
    assert rec.vectors[LEXICAL] == ENCODER.document(payload(3))
    assert isinstance(rec.vectors["image"], np.ndarray)


def test_a_dense_array_for_a_sparse_vector_is_refused(backend):
    s = filled(backend)
    with pytest.raises(StoreError, match="sparse"):
        s.upsert([Record("bad", {}, {LEXICAL: np.ones(4, dtype=np.float32)})])
    with pytest.raises(StoreError, match="one finite value per index"):
        s.upsert([Record("bad", {}, {LEXICAL: SparseVector((1, 2), (1.0,))})])


def test_a_store_made_before_gains_the_sparse_vector_without_touching_the_rest(backend):
    old = backend.open()
    old.ensure_schema(SCHEMA)
    old.upsert([record(i, lexical=False) for i in range(len(TITLES))])
    s = backend.open()
    s.ensure_schema(SPARSE)
    assert s.schema().sparse == {LEXICAL: ""}  # added, not filled
    assert backend.open().schema().sparse == {LEXICAL: ""}
    s = backend.open()
    assert fill_lexical(s, ENCODER, batch=3) == len(TITLES)
    assert backend.open().schema() == SPARSE
    s = backend.open()
    assert fill_lexical(s, ENCODER) == 0  # already filled by this encoder
    (rec,) = s.retrieve(["p2"], with_vectors=True)
    assert rec.payload == payload(2)
    np.testing.assert_allclose(rec.vectors["image"], image_vec(2), atol=1e-6)
    assert rec.vectors[LEXICAL] == ENCODER.document(payload(2))
    (hits,) = s.search_batch([lexical_request("striped shirt")])
    assert ids(hits) == ["p2"]
    other = LexicalEncoder(LexicalConfig(fields=("title",)))
    assert fill_lexical(s, other) == len(TITLES)  # other fields: every item is filled again
    assert s.schema().sparse == {LEXICAL: other.model_id}


def test_set_sparse_model_needs_a_declared_vector(backend):
    s = filled(backend)
    with pytest.raises(StoreError, match="no sparse vector 'keywords'"):
        s.set_sparse_model("keywords", "x")


def test_facet_counts_keyword_values(backend):
    s = filled(backend)
    assert s.facet("brand", 10) == {"Kestrel": 3, "Northwind": 2, "Solstice": 2, "Maple Lane": 1}
    assert len(s.facet("brand", 2)) == 2


def test_a_union_its_filter_leaves_empty_has_an_empty_list_per_vector(backend):
    s = filled(backend)
    nobody = Filter(must=(Condition("brand", "eq", "Nobody"),))
    got = s.search_union({"image": image_vec(0), "text": text_vec(0), LEXICAL: ENCODER.query("red")}, 5, nobody)
    assert got == {"image": [], "text": [], LEXICAL: []}
