"""The multivector (several photos per product) contract, on both store adapters: the embedded edge
shard and qdrant-client's ``QdrantClient(":memory:")``, each opened as a new process would (see ``Backend``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import test_store_contract as contract
from test_store_contract import SCHEMA, image_vec, text_vec

from indexer.store import ID_KEY, Record, SearchRequest, StoreError, StoreSchema

PHOTOS = "photos"
MULTI = StoreSchema(
    {**SCHEMA.vectors, PHOTOS: 4},
    {**SCHEMA.models, PHOTOS: SCHEMA.models["image"]},
    multi={PHOTOS: "filled"},
)


def unit(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([math.cos(t), math.sin(t), 0, 0], dtype=np.float32)


def photos(i: int) -> np.ndarray:
    """Product i: its main photo at 10*i degrees, and (for odd i) a second photo at 90 - i degrees,
    so the query at 90 degrees finds the odd products by their second photo, nearest first: p1, p3, p5, p7."""
    rows = [image_vec(i)] + ([unit(90 - i)] if i % 2 else [])
    return np.stack(rows)


def record(i: int, with_photos: bool = True) -> Record:
    vectors = {"image": image_vec(i), "text": text_vec(i)}
    if with_photos:
        vectors[PHOTOS] = photos(i)
    return Record(f"p{i}", {ID_KEY: f"p{i}", "title": f"product {i}"}, vectors)


backend = contract.backend  # the contract's fixture: one store per backend, edge and qdrant


def filled(backend):
    s = backend.open()
    s.ensure_schema(MULTI)
    s.upsert([record(i) for i in range(8)])
    return s


def ids(points) -> list[str]:
    return [p.id for p in points]


def test_a_product_is_found_once_by_its_best_photo(backend):
    s = filled(backend)
    (hits,) = s.search_batch([SearchRequest(PHOTOS, unit(90), 4)])
    assert ids(hits) == ["p1", "p3", "p5", "p7"]
    assert [round(h.score, 4) for h in hits] == [round(math.cos(math.radians(i)), 4) for i in (1, 3, 5, 7)]
    # The main-photo vector alone ranks the products by their main photo: p7's, at 70 degrees, is nearest.
    (main,) = s.search_batch([SearchRequest("image", unit(90), 1)])
    assert ids(main) == ["p7"] and main[0].score < hits[0].score - 0.05


def test_union_scores_the_multivector_beside_the_others(backend):
    s = filled(backend)
    got = s.search_union({PHOTOS: unit(90), "text": text_vec(0)}, limit=2)
    assert ids(got[PHOTOS])[:2] == ["p1", "p3"]
    assert set(ids(got[PHOTOS])) == set(ids(got["text"]))
    assert len(got[PHOTOS]) == len(set(ids(got[PHOTOS])))  # each product once


def test_stored_photos_come_back_as_rows(backend):
    s = filled(backend)
    (one, three) = s.retrieve(["p1", "p2"], with_vectors=[PHOTOS])
    assert one.vectors[PHOTOS].shape == (2, 4) and three.vectors[PHOTOS].shape == (1, 4)
    np.testing.assert_allclose(one.vectors[PHOTOS], photos(1), atol=1e-6)
    reopened = backend.open()
    assert reopened.schema() == MULTI


def test_bad_multivectors_name_the_item(backend):
    s = filled(backend)
    bad = Record("px", {}, {"image": image_vec(0), "text": text_vec(0), PHOTOS: image_vec(0)})
    with pytest.raises(StoreError, match=r"item 'px': multivector 'photos' has shape \(4,\)"):
        s.upsert([bad])
    empty = Record("py", {}, {"image": image_vec(0), "text": text_vec(0), PHOTOS: np.zeros((0, 4))})
    with pytest.raises(StoreError, match="'py'"):
        s.upsert([empty])


def test_a_store_made_before_gets_the_multivector_unfilled_then_filled(backend):
    s = backend.open()
    s.ensure_schema(SCHEMA)
    s.upsert([record(i, with_photos=False) for i in range(8)])
    s = backend.open()
    s.ensure_schema(MULTI)  # the same dense vectors: accepted, and the multivector added
    assert s.schema().multi == {PHOTOS: ""} and not s.schema().filled(PHOTOS)
    s.update_vectors([Record(f"p{i}", {}, {PHOTOS: photos(i)}) for i in range(8)])
    s.set_multi_filled(PHOTOS)
    s = backend.open()
    assert s.schema() == MULTI
    (hits,) = s.search_batch([SearchRequest(PHOTOS, unit(90), 2)])
    assert ids(hits) == ["p1", "p3"]
    assert s.retrieve(["p3"])[0].payload["title"] == "product 3"  # the payload kept
