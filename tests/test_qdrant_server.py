"""``qdrant:URL`` over real HTTP: a Qdrant server that goes away mid-session, and comes back.

There is no Qdrant binary here, so :class:`QdrantStandIn` (tests/support) serves Qdrant's REST API on
127.0.0.1 with qdrant-client's in-process engine behind it. Over it run the store contract (the remote
client's requests and responses, against the same cases as the edge store and the in-process client)
and the REST API: a search while the server is gone answers 503 with the reason, quickly, and the same
search answers as before once the server is back, without restarting lookalike.
"""

from __future__ import annotations

import time

import httpx
import pytest
import test_store_contract as contract
from support.qdrant_standin import QdrantStandIn
from test_api import running_server

from indexer import ImagePolicy, IndexOptions, index_catalog, open_store, read_catalog
from indexer.store_qdrant import QdrantOptions, QdrantStore
from search import SearchEngine, SearchSettings
from search.api import create_app
from search.jobs import JobRunner

pytestmark = [
    # The in-process engine behind the stand-in searches exactly and keeps no payload indexes, and says so.
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

# Few, short retries: a refused connection is answered in well under a second, and the test says so.
FAST = QdrantOptions(attempts=3, backoff_s=0.05, backoff_max_s=0.1, timeout_s=5)
ANSWER_WITHIN_S = 3.0
N_ITEMS = 24  # enough to fit the score calibration, so a warm search makes no calibration calls
QUERY = {"text": "red dress", "k": 5}


# -- the store contract, through the remote client and HTTP -------------------------------------


class HttpBackend:
    """Opens stores on one stand-in server, each with its own HTTP client, as a new process would."""

    kind = "qdrant"

    def __init__(self) -> None:
        self.standin = QdrantStandIn().start()
        self.stores: list[QdrantStore] = []

    def open(self) -> QdrantStore:
        store = QdrantStore(self.standin.url, collection="products", options=FAST)
        self.stores.append(store)
        return store

    def close(self) -> None:
        for store in self.stores:
            store.close()
        self.standin.close()


@pytest.fixture
def backend():
    b = HttpBackend()
    yield b
    b.close()


store = contract.store  # the contract's own fixture: a store on this module's backend, holding its 8 products


class TestContractOverHttp(contract.TestContract):
    """Every contract case, with the server adapter's remote code path: REST requests, parsed responses."""


# -- the REST API over a server that goes away --------------------------------------------------


@pytest.fixture(scope="module")
def qdrant():
    with QdrantStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def api(tmp_path_factory, models, qdrant):
    from conftest import make_catalog

    root = tmp_path_factory.mktemp("qdrant-api")
    catalog = make_catalog(root / "catalog", n=N_ITEMS)
    indexing = open_store(f"qdrant:{qdrant.url}")
    try:
        policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
        options = IndexOptions(batch_size=8)
        report = index_catalog(read_catalog(catalog), indexing, models, options, policy, root / "errors.jsonl")
    finally:
        indexing.close()
    assert report.new == N_ITEMS and report.failed == 0
    (root / "data").mkdir()
    settings = SearchSettings(data_dir=root / "data", device="cpu")
    engine = SearchEngine(settings, store=QdrantStore(qdrant.url, options=FAST), models=models)
    with (
        running_server(create_app(engine, JobRunner(engine))) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client
    engine.close()


@pytest.fixture
def served(api, qdrant):
    """The API client, with the stand-in running before and after each test."""
    if not qdrant.running:
        qdrant.start()
    yield api
    if not qdrant.running:
        qdrant.start()


def ranked(response: httpx.Response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(h["id"], h["score"]) for h in response.json()["hits"]]


def timed(send) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


def assert_store_unavailable(response: httpx.Response, elapsed: float, qdrant: QdrantStandIn) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "store"
    assert f"collection 'lookalike' at {qdrant.url}" in body["detail"]
    assert "Connection refused" in body["detail"] and "gave up after 3 attempts" in body["detail"]
    assert elapsed < ANSWER_WITHIN_S, f"503 took {elapsed:.1f} s"


def test_search_over_qdrant_http(served, qdrant):
    hits = ranked(served.post("/search", json=QUERY))
    assert len(hits) == QUERY["k"]
    health = served.get("/health")
    assert health.status_code == 200 and health.json()["items"] == N_ITEMS
    assert ("POST", "/collections/lookalike/points/query/batch") in qdrant.seen


def test_server_gone_answers_503_and_search_recovers(served, qdrant):
    before = ranked(served.post("/search", json=QUERY))
    port = qdrant.port
    qdrant.stop()

    response, elapsed = timed(lambda: served.post("/search", json=QUERY))
    assert_store_unavailable(response, elapsed, qdrant)
    response, elapsed = timed(lambda: served.get("/health"))
    assert_store_unavailable(response, elapsed, qdrant)

    qdrant.start()
    assert qdrant.port == port
    assert ranked(served.post("/search", json=QUERY)) == before
    health = served.get("/health")
    assert health.status_code == 200 and health.json()["items"] == N_ITEMS


def test_server_dying_during_a_search_answers_503_and_search_recovers(served, qdrant):
    before = ranked(served.post("/search", json=QUERY))
    first = len(qdrant.seen)
    qdrant.vanish_after(1)

    response, elapsed = timed(lambda: served.post("/search", json=QUERY))
    # The candidates were found; the server died on the next call (the page's payloads), without answering.
    calls = qdrant.seen[first:]
    assert calls[0] == ("POST", "/collections/lookalike/points/query/batch") and len(calls) == 2, calls
    assert not qdrant.running
    assert_store_unavailable(response, elapsed, qdrant)

    qdrant.start()
    assert ranked(served.post("/search", json=QUERY)) == before


def test_settings_say_how_long_a_gone_server_is_tried(tmp_path):
    from indexer import Settings, StoreError

    with QdrantStandIn() as standin:
        url = standin.url
    settings = Settings(data_dir=tmp_path, qdrant_attempts=2, qdrant_timeout_s=4)
    store = open_store(f"qdrant:{url}", settings.server_access())
    assert (store.options.attempts, store.options.timeout_s) == (2, 4)
    started = time.monotonic()
    with pytest.raises(StoreError, match="gave up after 2 attempts"):
        store.count()
    assert time.monotonic() - started < ANSWER_WITHIN_S
    store.close()
