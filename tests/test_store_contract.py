"""One contract for both VectorStore adapters: the embedded edge shard and qdrant-client.

``TestContract`` runs every case against a real qdrant-edge shard in a temporary directory
and against ``QdrantClient(":memory:")``, which speaks the server API in-process. The vectors
are hand-made so that every rank and score is known exactly.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from indexer import store_codec
from indexer.store import (
    HASH_KEY,
    ID_KEY,
    Condition,
    Filter,
    Record,
    SchemaMismatch,
    SearchRequest,
    StoreError,
    StoreLayout,
    StoreSchema,
    VectorStore,
    open_store,
)
from indexer.store_edge import META_FILE, EdgeStore
from indexer.store_qdrant import QdrantOptions, QdrantStore, is_transient

REPO = Path(__file__).resolve().parents[1]
SCHEMA = StoreSchema(
    vectors={"image": 4, "text": 8},
    models={"image": "openclip:tiny/a.safetensors", "text": "openclip:tiny/a.safetensors"},
)
N = 8


def image_vec(i: int) -> np.ndarray:
    """Unit vectors 10 degrees apart: the query [1, 0, 0, 0] ranks p0, p1, ..., p7."""
    t = math.radians(10 * i)
    return np.array([math.cos(t), math.sin(t), 0, 0], dtype=np.float32)


def text_vec(i: int) -> np.ndarray:
    """Reversed order on the text vector: the query e0 ranks p7, p6, ..., p0."""
    t = math.radians(10 * (N - 1 - i))
    v = np.zeros(8, dtype=np.float32)
    v[0], v[5] = math.cos(t), math.sin(t)
    return v


def payload(i: int) -> dict:
    return {
        "title": f"product {i}",
        "category": "shoe" if i % 2 == 0 else "bag",
        "price": float(10 * i),
        "stock": i,
        HASH_KEY: f"h{i}",
    }


def record(i: int) -> Record:
    return Record(id=f"p{i}", payload=payload(i), vectors={"image": image_vec(i), "text": text_vec(i)})


ALL = [record(i) for i in range(N)]
E0 = np.eye(8, dtype=np.float32)[0]


class Backend:
    """Opens stores on one storage, as a new process would."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "store"
        self.client = QdrantClient(":memory:") if kind == "qdrant" else None
        self.current: VectorStore | None = None

    def open(self) -> VectorStore:
        if self.current is not None and self.kind == "edge":
            self.current.close()  # one process, one open shard
        if self.kind == "edge":
            self.current = EdgeStore(self.path)
        else:
            self.current = QdrantStore.from_client(self.client, collection="products")
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


@pytest.fixture(params=["edge", "qdrant"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


@pytest.fixture
def store(backend):
    s = backend.open()
    s.ensure_schema(SCHEMA)
    s.upsert(ALL)
    return s


def ids(points) -> list[str]:
    return [p.id for p in points]


class TestContract:
    def test_new_store_is_empty(self, backend):
        s = backend.open()
        assert isinstance(s, VectorStore)
        assert s.schema() is None
        assert s.count() == 0
        assert list(s.scroll()) == []
        assert s.retrieve(["p0"]) == []
        with pytest.raises(StoreError, match="ensure_schema"):
            s.upsert(ALL[:1])
        with pytest.raises(StoreError, match="empty"):
            s.search("image", image_vec(0), 3)

    def test_schema_recorded_and_checked_on_reopen(self, backend):
        backend.open().ensure_schema(SCHEMA)
        s = backend.open()
        assert s.schema() == SCHEMA
        s.ensure_schema(SCHEMA)  # same schema: no error
        other = StoreSchema(vectors={"image": 4, "text": 16}, models={**SCHEMA.models, "text": "st:minilm"})
        with pytest.raises(SchemaMismatch) as err:
            s.ensure_schema(other)
        msg = str(err.value)
        assert "stored openclip:tiny/a.safetensors (8-d), requested st:minilm (16-d)" in msg
        assert "image" not in msg.split("sizes:")[1].split(".")[0]  # only the differing vector
        assert ("--data-dir" if backend.kind == "edge" else "another collection") in msg
        assert backend.open().schema() == SCHEMA  # a refused schema changes nothing

    def test_upsert_count_and_overwrite(self, store):
        assert store.count() == N
        changed = record(3)
        changed.payload["title"] = "renamed"
        store.upsert([changed])
        assert store.count() == N
        assert store.retrieve(["p3"])[0].payload["title"] == "renamed"

    def test_retrieve_order_missing_and_vectors(self, store):
        got = store.retrieve(["p5", "nope", "p1", "p2"])
        assert ids(got) == ["p5", "p1", "p2"]
        assert got[0].vectors == {}
        assert got[0].payload == {**payload(5), ID_KEY: "p5"}
        with_vec = store.retrieve(["p2"], with_vectors=True)[0]
        assert set(with_vec.vectors) == {"image", "text"}
        np.testing.assert_allclose(with_vec.vectors["image"], image_vec(2), atol=1e-6)
        np.testing.assert_allclose(with_vec.vectors["text"], text_vec(2), atol=1e-6)
        assert with_vec.vectors["image"].dtype == np.float32

    def test_delete(self, store):
        store.delete(["p0", "p7", "never-there"])
        store.delete([])
        assert store.count() == N - 2
        assert ids(store.retrieve(["p0", "p1", "p7"])) == ["p1"]
        assert "p0" not in ids(store.search("image", image_vec(0), N))

    @pytest.mark.parametrize(
        "name,query,expected", [("image", image_vec(0), range(N)), ("text", E0, range(N - 1, -1, -1))]
    )
    def test_search_ranks_and_scores(self, store, name, query, expected):
        hits = store.search(name, query, limit=N)
        assert ids(hits) == [f"p{i}" for i in expected]
        want = [math.cos(math.radians(10 * k)) for k in range(N)]
        np.testing.assert_allclose([h.score for h in hits], want, atol=1e-5)
        assert hits[0].payload[ID_KEY] == hits[0].id and HASH_KEY in hits[0].payload
        assert hits[0].vectors is None

    def test_search_limit_offset_vectors(self, store):
        hits = store.search("image", image_vec(0), limit=3, offset=2, with_vectors=True)
        assert ids(hits) == ["p2", "p3", "p4"]
        np.testing.assert_allclose(hits[0].vectors["image"], image_vec(2), atol=1e-6)
        # a non-unit query gives the same cosine ranking
        assert ids(store.search("image", 7 * image_vec(6), limit=3)) == ["p6", "p5", "p7"]

    def test_search_batch_matches_single_searches(self, store):
        shoes = Filter(must=(Condition("category", "eq", "shoe"),))
        requests = [
            SearchRequest("image", image_vec(0), 3),
            SearchRequest("text", E0, 2, shoes, offset=1, with_vectors=["text"]),
            SearchRequest("image", image_vec(0), N, keys=["price"]),
        ]
        plain, filtered, slim = store.search_batch(requests)
        assert ids(plain) == ids(store.search("image", image_vec(0), 3)) == ["p0", "p1", "p2"]
        assert ids(filtered) == ["p4", "p2"] and set(filtered[0].vectors) == {"text"}
        np.testing.assert_allclose(filtered[0].vectors["text"], text_vec(4), atol=1e-6)
        assert slim[3].payload == {"price": 30.0, ID_KEY: "p3"} and slim[3].vectors is None
        assert store.search_batch([]) == []

    def test_search_restricted_to_ids_scores_exactly_those_items(self, store):
        (hits,) = store.search_batch([SearchRequest("text", E0, N, ids=["p1", "p6", "nope"], keys=[])])
        assert ids(hits) == ["p6", "p1"]
        np.testing.assert_allclose(
            [h.score for h in hits], [math.cos(math.radians(10)), math.cos(math.radians(60))], atol=1e-5
        )
        assert hits[0].payload == {ID_KEY: "p6"}
        shoes = Filter(must=(Condition("category", "eq", "shoe"),))
        (only_shoes,) = store.search_batch([SearchRequest("image", image_vec(0), N, shoes, ids=["p1", "p2"])])
        assert ids(only_shoes) == ["p2"]

    def test_search_union_scores_every_candidate_on_every_vector(self, store):
        # image e0 ranks p0, p1, ...; text e0 ranks p7, p6, ...: the top 2 of each make a union of 4.
        got = store.search_union({"image": image_vec(0), "text": E0}, limit=2)
        assert set(got) == {"image", "text"}
        assert ids(got["image"]) == ["p0", "p1", "p6", "p7"] and ids(got["text"]) == ["p7", "p6", "p1", "p0"]
        want = [math.cos(math.radians(10 * k)) for k in (0, 1, 6, 7)]
        np.testing.assert_allclose([h.score for h in got["image"]], want, atol=1e-5)
        np.testing.assert_allclose([h.score for h in got["text"]], want, atol=1e-5)
        assert got["text"][0].payload == {ID_KEY: "p7"}
        shoes = Filter(must=(Condition("category", "eq", "shoe"),))
        got = store.search_union({"image": image_vec(0), "text": E0}, limit=1, flt=shoes)
        assert ids(got["image"]) == ["p0", "p6"] and ids(got["text"]) == ["p6", "p0"]
        assert store.search_union({}, 3) == {}
        # A filter that matches nothing: every vector answers, with no hits.
        hats = Filter(must=(Condition("category", "eq", "hat"),))
        assert store.search_union({"image": image_vec(0), "text": E0}, limit=3, flt=hats) == {"image": [], "text": []}

    def test_id_only_results_follow_writes(self, backend, store):
        def id_only():
            (hits,) = store.search_batch([SearchRequest("image", image_vec(0), N + 1, keys=[])])
            union = store.search_union({"image": image_vec(0), "text": E0}, limit=N + 1)
            assert ids(hits) == ids(union["image"])
            assert all(h.payload == {ID_KEY: h.id} for h in hits)
            return ids(hits)

        assert id_only() == [f"p{i}" for i in range(N)]
        newcomer = Record("new one", payload(0), {"image": image_vec(0), "text": text_vec(0)})
        store.upsert([newcomer])
        store.delete(["p1"])
        got = id_only()
        assert got[:2] in (["p0", "new one"], ["new one", "p0"]) and "p1" not in got and len(got) == N
        store = backend.open()  # as a new process: what was written is named the same way
        assert id_only() == got

    def test_catalog_id_conditions(self, store):
        not_p0 = Filter(must_not=(Condition(ID_KEY, "eq", "p0"),))
        assert ids(store.search("image", image_vec(0), 2, not_p0)) == ["p1", "p2"]
        some = Filter(must=(Condition(ID_KEY, "in", ["p3", "p5", "nope"]),))
        assert ids(store.search("image", image_vec(0), N, some)) == ["p3", "p5"]
        assert store.count(some) == 2

    def test_retrieve_selected_vectors_and_keys(self, store):
        (rec,) = store.retrieve(["p2"], with_vectors=["image"], keys=["category"])
        assert set(rec.vectors) == {"image"} and rec.payload == {"category": "shoe", ID_KEY: "p2"}
        # keys=[]: the ids asked for name the records; repeated and missing ids as for any retrieve.
        recs = store.retrieve(["p5", "nope", "p2", "p5"], with_vectors=["text"], keys=[])
        assert [(r.id, r.payload, set(r.vectors)) for r in recs] == [
            ("p5", {ID_KEY: "p5"}, {"text"}),
            ("p2", {ID_KEY: "p2"}, {"text"}),
            ("p5", {ID_KEY: "p5"}, {"text"}),
        ]

    @pytest.mark.parametrize(
        "flt,expected",
        [
            (Filter(must=(Condition("category", "eq", "shoe"),)), {0, 2, 4, 6}),
            (Filter(must=(Condition("price", "eq", 20),)), {2}),
            (Filter(must=(Condition("stock", "eq", 3.0),)), {3}),
            (Filter(must=(Condition("category", "in", ["bag", "hat"]),)), {1, 3, 5, 7}),
            (Filter(must=(Condition("stock", "in", [1, 6, 99]),)), {1, 6}),
            (Filter(must=(Condition("price", "range", {"gte": 20, "lt": 50}),)), {2, 3, 4}),
            (Filter(must=(Condition("stock", "range", {"gt": 5}),)), {6, 7}),
            (Filter(must_not=(Condition("category", "eq", "shoe"),)), {1, 3, 5, 7}),
            (Filter(must_not=(Condition("stock", "in", [0, 1, 2]),)), {3, 4, 5, 6, 7}),
            (
                Filter(
                    must=(Condition("category", "eq", "shoe"), Condition("price", "range", {"lte": 40})),
                    must_not=(Condition("stock", "eq", 2),),
                ),
                {0, 4},
            ),
            (Filter(), set(range(N))),
        ],
    )
    def test_filters(self, store, flt, expected):
        assert store.count(flt) == len(expected)
        hits = store.search("image", image_vec(0), limit=N, flt=flt)
        assert ids(hits) == [f"p{i}" for i in sorted(expected)]

    @pytest.mark.parametrize(
        "cond",
        [
            Condition("category", "like", "s%"),
            Condition("category", "in", "shoe"),
            Condition("stock", "in", ["a", 1]),
            Condition("price", "range", {"between": 3}),
            Condition("price", "range", {"gt": "cheap"}),
            Condition("price", "eq", [1, 2]),
        ],
    )
    def test_bad_filters_are_store_errors(self, store, cond):
        with pytest.raises(StoreError, match=cond.key):
            store.count(Filter(must=(cond,)))

    def test_bool_equality(self, backend):
        s = backend.open()
        s.ensure_schema(SCHEMA)
        s.upsert(
            [
                Record("a", {"sale": True}, {"image": image_vec(0)}),
                Record("b", {"sale": 1}, {"image": image_vec(1)}),
            ]
        )
        flt = Filter(must=(Condition("sale", "eq", True),))
        if backend.kind == "edge":
            with pytest.raises(StoreError, match="true/false"):
                s.count(flt)
        else:
            assert ids(s.search("image", image_vec(0), 5, flt=flt)) == ["a"]

    def test_scroll(self, store):
        got = list(store.scroll(keys=["price"], batch=3))
        assert sorted(ids(got)) == [f"p{i}" for i in range(N)]
        by_id = {r.id: r for r in got}
        assert by_id["p4"].payload == {"price": 40.0, ID_KEY: "p4"}
        assert all(r.vectors == {} for r in got)
        full = {r.id: r for r in store.scroll()}
        assert full["p4"].payload == {**payload(4), ID_KEY: "p4"}

    def test_payload_indexes_recorded(self, backend, store):
        assert store.payload_indexes() == {}
        store.ensure_payload_index("category", "keyword")
        store.ensure_payload_index("price", "float")
        store.ensure_payload_index("stock", "integer")
        store.ensure_payload_index("stock", "integer")
        with pytest.raises(StoreError, match="unknown kind"):
            store.ensure_payload_index("title", "text")
        want = {"category": "keyword", "price": "float", "stock": "integer"}
        assert store.payload_indexes() == want
        reopened = backend.open()
        assert reopened.payload_indexes() == want
        flt = Filter(must=(Condition("category", "eq", "bag"), Condition("price", "range", {"gte": 30})))
        assert ids(reopened.search("image", image_vec(0), N, flt=flt)) == ["p3", "p5", "p7"]

    def test_optimize_keeps_results(self, store):
        store.ensure_payload_index("category", "keyword")
        store.optimize()
        assert store.count() == N
        assert ids(store.search("image", image_vec(0), N)) == [f"p{i}" for i in range(N)]
        flt = Filter(must=(Condition("category", "eq", "shoe"),))
        assert ids(store.search("text", E0, 2, flt=flt)) == ["p6", "p4"]
        store.upsert([Record("late", {"category": "shoe"}, {"image": image_vec(0)})])
        assert store.count(flt) == 5  # writes after optimize land too; a missing named vector is allowed

    def test_bulk_load_then_optimize_keeps_results(self, backend):
        store = backend.open()
        store.ensure_schema(SCHEMA)
        store.begin_bulk_load()
        store.upsert(ALL)
        expected = [f"p{i}" for i in range(N)]
        assert ids(store.search("image", image_vec(0), N)) == expected  # exact while the index waits
        store.optimize(progress=lambda done, total: None)
        assert ids(store.search("image", image_vec(0), N)) == expected
        assert store.count() == N

    def test_bad_vectors_name_the_item(self, store):
        bad = Record("p9", {}, {"image": np.ones(5, dtype=np.float32)})
        with pytest.raises(StoreError, match=r"'p9'.*'image'.*\(4,\)"):
            store.upsert([bad])
        with pytest.raises(StoreError, match="unknown vector 'colour'"):
            store.upsert([Record("p9", {}, {"colour": np.ones(4)})])
        with pytest.raises(StoreError, match="NaN"):
            store.upsert([Record("p9", {}, {"image": np.array([np.nan, 0, 0, 1])})])
        with pytest.raises(StoreError, match="unknown vector 'sound'"):
            store.search("sound", image_vec(0), 3)
        with pytest.raises(StoreError, match="query"):
            store.search("text", image_vec(0), 3)
        assert store.count() == N

    def test_numpy_payload_values(self, store):
        store.upsert([Record("np", {"price": np.float32(2.5), "stock": np.int64(4)}, {"image": image_vec(1)})])
        got = store.retrieve(["np"])[0].payload
        assert got["price"] == 2.5 and got["stock"] == 4
        assert store.count(Filter(must=(Condition("price", "eq", np.float64(2.5)),))) == 1


# -- embedded store only ------------------------------------------------------------------------


def test_edge_persists_across_reopen(tmp_path):
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_schema(SCHEMA)
        s.upsert(ALL)
        s.ensure_payload_index("category", "keyword")
        s.delete(["p1"])
    meta = json.loads((tmp_path / "s" / META_FILE).read_text())
    assert meta["vectors"] == SCHEMA.vectors and meta["models"] == SCHEMA.models
    assert meta["payload_indexes"] == {"category": "keyword"}
    with EdgeStore(tmp_path / "s") as s:
        assert s.count() == N - 1
        assert ids(s.search("image", image_vec(0), 3)) == ["p0", "p2", "p3"]
        assert s.payload_indexes() == {"category": "keyword"}


def test_edge_open_twice_is_a_clear_error(tmp_path):
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_schema(SCHEMA)
        with pytest.raises(StoreError, match="open in another process"):
            EdgeStore(tmp_path / "s")
    EdgeStore(tmp_path / "s").close()  # released on close


def test_edge_refuses_a_foreign_shard(tmp_path):
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_schema(SCHEMA)
    (tmp_path / "s" / META_FILE).unlink()
    with pytest.raises(StoreError, match="not made by lookalike"):
        EdgeStore(tmp_path / "s")


def test_edge_optimize_builds_hnsw(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((200, 4)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = rng.standard_normal((200, 8)).astype(np.float32)
    recs = [Record(f"r{i}", {}, {"image": image[i], "text": text[i]}) for i in range(200)]
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_schema(SCHEMA)
        s.upsert(recs)
        assert s._shard.info().indexed_vectors_count == 0
        s.optimize()
        assert s._shard.info().indexed_vectors_count == 400
        q = image[7]
        exact = [f"r{i}" for i in np.argsort(-(image @ q), kind="stable")[:5]]
        hits = s.search("image", q, 5)
        assert ids(hits) == exact
        # The graph is walked on int8 copies; the returned scores are rescored on the float32 vectors.
        assert [h.score for h in hits] == pytest.approx(sorted(image @ q, reverse=True)[:5], abs=1e-6)


def resolved_to_ids(store: EdgeStore, flt: Filter) -> bool:
    """Whether a fused query on ``store`` searches among the ids ``flt`` matches (edge_filters.resolved)."""
    from indexer import edge_config

    return isinstance(store._resolved(flt).must[0], type(edge_config.MODELS.has_id([])))


def test_edge_union_with_a_selective_filter_finds_what_the_engines_filter_finds(tmp_path, monkeypatch):
    """A filter matching few points is searched among their ids: the same hits and scores as the
    engine's own filtered search, which a filter matching many (over RESOLVED_MAX), or nearly all of
    its shortest posting list (under RESOLVED_WALK times fewer), or one whose shortest list the engine
    scans (KEYED_MAX points at most), still gets."""
    from indexer import edge_config

    rng = np.random.default_rng(1)
    image = rng.standard_normal((600, 4)).astype(np.float32)
    text = rng.standard_normal((600, 8)).astype(np.float32)
    colours = ["red", "blue", "green"]
    recs = [
        Record(f"r{i}", {"colour": colours[i % 3], "size": i % 7}, {"image": image[i], "text": text[i]})
        for i in range(600)
    ]
    filters = [
        Filter(must=(Condition("colour", "eq", "red"), Condition("size", "eq", 3))),  # 29 points
        Filter(must=(Condition("colour", "eq", "blue"),), must_not=(Condition("size", "in", [0, 1]),)),
        Filter(must=(Condition("colour", "eq", "mauve"),)),  # none
    ]
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_schema(SCHEMA)
        s.ensure_payload_index("colour", "keyword")
        s.ensure_payload_index("size", "integer")
        s.upsert(recs)
        s.optimize()

        def unions() -> list[dict[str, list[tuple[str, float]]]]:
            return [
                {n: [(h.id, round(h.score, 5)) for h in hits] for n, hits in union.items()}
                for union in (
                    s.search_union({"image": image[i], "text": text[i]}, 10, flt) for flt in filters for i in (0, 5)
                )
            ]

        # By default the 29 points of the first filter are a third of the 86 of its shortest list.
        # A value no point has: nothing to walk, nothing to resolve.
        assert [resolved_to_ids(s, f) for f in filters] == [False, False, False]
        monkeypatch.setattr(edge_config, "RESOLVED_WALK", 1)
        assert [resolved_to_ids(s, f) for f in filters] == [False, False, False]  # lists the engine scans
        monkeypatch.setattr(edge_config, "KEYED_MAX", 0)
        assert [resolved_to_ids(s, f) for f in filters] == [True, True, False]
        resolved = unions()
        monkeypatch.setattr(edge_config, "RESOLVED_MAX", 20)
        assert not any(resolved_to_ids(s, f) for f in filters)
        engine = unions()
    assert resolved == engine
    assert all(len(u["image"]) >= 10 for u in resolved[:4]) and resolved[4:] == [{"image": [], "text": []}] * 2
    assert all(h[0] in {f"r{i}" for i in range(600) if i % 3 == 0 and i % 7 == 3} for h in resolved[0]["image"])


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from tests.test_store_contract import ALL, SCHEMA
from indexer.store_edge import EdgeStore
s = EdgeStore(sys.argv[1])
s.ensure_schema(SCHEMA)
s.ensure_payload_index("category", "keyword")
for r in ALL:
    s.upsert([r])
s.delete(["p0"])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_edge_survives_kill_9_after_upsert(tmp_path):
    path = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(path), str(REPO)], cwd=REPO, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with EdgeStore(path) as s:  # also proves the dead process's lock is gone
        assert s.count() == N - 1
        assert s.payload_indexes() == {"category": "keyword"}
        assert ids(s.retrieve(["p0", "p7"])) == ["p7"]
        assert s.count(Filter(must=(Condition("category", "eq", "shoe"),))) == 3


def test_open_store_specs(tmp_path):
    s = open_store(f"edge:{tmp_path / 's'}")
    assert isinstance(s, EdgeStore)
    s.close()
    assert isinstance(open_store("qdrant:http://127.0.0.1:1"), QdrantStore)
    with pytest.raises(StoreError, match="unknown store spec"):
        open_store("redis:localhost")


# -- server adapter only: a real HTTP server on 127.0.0.1 stands in for Qdrant -------------------


class FakeQdrant(BaseHTTPRequestHandler):
    """Answers a fixed status per path; records every request."""

    routes: dict[tuple[str, str], tuple[int, dict]] = {}
    seen: list[tuple[str, str, dict | None]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = self.path.split("?")[0]
        self.seen.append((self.command, path, body))
        answer = self.routes.get((self.command, path), (404, {"status": {"error": "not found"}}))
        status, doc = answer() if callable(answer) else answer
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_qdrant():
    FakeQdrant.routes, FakeQdrant.seen = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeQdrant)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


FAST = QdrantOptions(attempts=3, backoff_s=0.01, backoff_max_s=0.02, timeout_s=5)


def ok(result) -> dict:
    return {"result": result, "status": "ok", "time": 0.0}


def test_server_errors_5xx_are_retried_then_reported(fake_qdrant):
    FakeQdrant.routes[("GET", "/collections/lookalike/exists")] = (503, {"status": {"error": "busy"}})
    store = QdrantStore(fake_qdrant, options=FAST)
    with pytest.raises(StoreError, match="gave up after 3 attempts"):
        store.count()
    assert len(FakeQdrant.seen) == 3


def test_client_errors_are_not_retried(fake_qdrant):
    FakeQdrant.routes[("GET", "/collections/lookalike/exists")] = (403, {"status": {"error": "bad key"}})
    with pytest.raises(StoreError, match="403"):
        QdrantStore(fake_qdrant, options=FAST).schema()
    assert len(FakeQdrant.seen) == 1


def test_unreachable_server_is_retried():
    store = QdrantStore("http://127.0.0.1:9", options=FAST)  # discard port: connection refused
    with pytest.raises(StoreError, match="gave up after 3 attempts"):
        store.count()


def test_cluster_collection_layout(fake_qdrant):
    peers = {str(i): {"uri": f"http://node{i}:6335/"} for i in (1, 2, 3)}
    cluster = {
        "status": "enabled",
        "peer_id": 1,
        "peers": peers,
        "raft_info": {
            "term": 1,
            "commit": 9,
            "pending_operations": 0,
            "leader": 1,
            "role": "Leader",
            "is_voter": True,
        },
        "consensus_thread_status": {
            "consensus_thread_status": "working",
            "last_update": "2024-01-01T00:00:00Z",
        },
        "message_send_failures": {},
    }
    FakeQdrant.routes.update(
        {
            ("GET", "/collections/lookalike/exists"): (200, ok({"exists": False})),
            ("GET", "/cluster"): (200, ok(cluster)),
            ("PUT", "/collections/lookalike"): (200, ok(True)),
        }
    )
    QdrantStore(fake_qdrant, options=FAST).ensure_schema(SCHEMA)
    body = next(b for m, p, b in FakeQdrant.seen if m == "PUT")
    assert body["shard_number"] == 6 and body["replication_factor"] == 2
    # A filter too rare for the graph is scanned: the threshold of store_codec.FULL_SCAN_POINTS vectors.
    scan = {"full_scan_threshold": store_codec.full_scan_kb(8)}
    assert body["vectors"]["text"] == {"size": 8, "distance": "Cosine", "hnsw_config": scan}
    assert body["hnsw_config"] == scan
    assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    assert body["metadata"]["lookalike"]["models"] == SCHEMA.models


def test_cluster_collection_with_vectors_on_disk(fake_qdrant):
    FakeQdrant.routes.update(
        {
            ("GET", "/collections/lookalike/exists"): (200, ok({"exists": False})),
            ("GET", "/cluster"): (200, ok({"status": "disabled"})),
            ("PUT", "/collections/lookalike"): (200, ok(True)),
        }
    )
    QdrantStore(fake_qdrant, options=FAST).ensure_schema(SCHEMA, StoreLayout(vectors_on_disk=True))
    body = next(b for m, p, b in FakeQdrant.seen if m == "PUT")
    assert body["vectors"]["text"]["on_disk"] is True
    assert body["quantization_config"]["scalar"]["always_ram"] is True  # the int8 copies stay in RAM


def collection_info(threshold: int, status: str, points: int, indexed: int) -> dict:
    """A collection's info as a server sends it, made by qdrant-client's own in-process server."""
    client = QdrantClient(":memory:")
    client.create_collection(
        "c", vectors_config={n: qm.VectorParams(size=s, distance="Cosine") for n, s in SCHEMA.vectors.items()}
    )
    info = client.get_collection("c").model_dump(mode="json", exclude_none=True)
    info["config"]["metadata"] = {"lookalike": store_codec.meta_to_json(SCHEMA, {})}
    info["config"]["optimizer_config"]["indexing_threshold"] = threshold
    info.update(status=status, points_count=points, indexed_vectors_count=indexed)
    return info


def test_cluster_bulk_load_turns_indexing_off_then_on_and_waits_with_progress(fake_qdrant):
    state = {"threshold": 20_000, "polls": 0}

    def info():
        # After indexing is turned back on: two polls while optimizing, then done.
        if state["threshold"]:
            state["polls"] += 1
        optimizing = state["threshold"] and state["polls"] <= 2
        indexed = 0 if not state["threshold"] else 50 * state["polls"] if optimizing else 200
        return 200, ok(collection_info(state["threshold"], "yellow" if optimizing else "green", 100, indexed))

    def patch():
        body = FakeQdrant.seen[-1][2]
        state["threshold"], state["polls"] = body["optimizers_config"]["indexing_threshold"], 0
        return 200, ok(True)

    FakeQdrant.routes.update(
        {
            ("GET", "/collections/lookalike/exists"): (200, ok({"exists": True})),
            ("GET", "/collections/lookalike"): info,
            ("PATCH", "/collections/lookalike"): patch,
        }
    )
    store = QdrantStore(fake_qdrant, options=FAST)
    store.begin_bulk_load()
    assert state["threshold"] == 0
    assert store.unindexed() == 100  # nothing is indexed while the load lasts
    seen = []
    store.optimize(progress=lambda done, total: seen.append((done, total)))
    assert state["threshold"] == 20_000
    assert seen[0][1] == 200 and seen[-1] == (200, 200) and len(seen) >= 3
    patches = [b["optimizers_config"]["indexing_threshold"] for m, p, b in FakeQdrant.seen if m == "PATCH"]
    assert patches == [0, 20_000]


def test_is_transient():
    from qdrant_client.http.exceptions import UnexpectedResponse

    def resp(code):
        return UnexpectedResponse(code, "x", b"", None)

    assert is_transient(resp(502)) and is_transient(resp(429))
    assert not is_transient(resp(400)) and not is_transient(ValueError("x"))


def test_in_order_follows_the_request():
    from indexer.store_codec import in_order

    recs = [Record(i, {}) for i in ("c", "a", "b")]  # a server may answer in any order
    assert [r.id for r in in_order(["a", "x", "b", "c"], recs)] == ["a", "b", "c"]


def test_point_id_is_uuid5_of_the_catalog_id():
    import uuid

    from indexer.store import _NAMESPACE, point_id

    for item_id in ["", "p1", "shoes/red sneaker.jpg", "ß-中-é", "x" * 300]:
        assert point_id(item_id) == str(uuid.uuid5(_NAMESPACE, item_id))
