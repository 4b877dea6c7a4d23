"""Who may write, rate limits and budgets, /metrics, request ids and CORS, on a real server over a real index."""

from __future__ import annotations

import json
import logging
import re
import uuid

import httpx
import pytest
from asgi_correlation_id import CorrelationIdFilter
from conftest import make_catalog
from pydantic import SecretStr
from starlette.testclient import TestClient
from test_api import running_server

from indexer import ImagePolicy, IndexOptions, index_catalog, open_store, read_catalog
from search import SearchEngine, SearchSettings
from search.access import AccessDenied, WriteGuard, client_key
from search.api import create_app
from search.jobs import JobRunner
from search.limits import DailyBudget, LimitExceeded, RateLimits

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def index(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("access")
    catalog = make_catalog(root / "catalogs" / "first", n=24)
    store = open_store(f"edge:{root / 'data' / 'store'}")
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
    index_catalog(read_catalog(catalog), store, models, IndexOptions(batch_size=8), policy, root / "errors.jsonl")
    yield root, store, models
    store.close()


def make_app(index, **settings):
    root, store, models = index
    engine = SearchEngine(SearchSettings(data_dir=root / "data", device="cpu", **settings), store=store, models=models)
    runner = JobRunner(engine)
    return create_app(engine, runner), runner


@pytest.fixture
def serve(index):
    """``serve(**settings)``: a real uvicorn server on 127.0.0.1 over the shared index, as a client."""
    started = []

    def start(**settings):
        app, runner = make_app(index, **settings)
        server = running_server(app)
        base = server.__enter__()
        started.append((server, runner))
        return httpx.Client(base_url=base, timeout=30), runner

    yield start
    for server, runner in started:
        runner.close()
        server.__exit__(None, None, None)


# -- the write policy, as pure rules ---------------------------------------------------------------


def test_write_policy_rules():
    local = WriteGuard(None, "127.0.0.1")
    local.check("127.0.0.1", None)
    local.check("::1", None)
    with pytest.raises(AccessDenied, match="from this machine only") as denied:
        local.check("203.0.113.7", None)
    assert denied.value.status == 403
    with pytest.raises(AccessDenied, match="LOOKALIKE_ADMIN_TOKEN") as denied:
        WriteGuard(None, "0.0.0.0").check("127.0.0.1", None)  # even a loopback client, on a public bind
    assert denied.value.status == 403 and "0.0.0.0" in str(denied.value)
    guarded = WriteGuard(SecretStr(TOKEN), "0.0.0.0")
    guarded.check("203.0.113.7", TOKEN)
    with pytest.raises(AccessDenied) as denied:
        guarded.check("127.0.0.1", None)
    assert denied.value.status == 401
    with pytest.raises(AccessDenied, match="wrong admin token") as denied:
        guarded.check("127.0.0.1", TOKEN + "x")
    assert denied.value.status == 403
    with pytest.raises(AccessDenied, match="LOOKALIKE_CATALOG_ROOT"):
        guarded.check_server_path(None)
    guarded.check_server_path("/catalog")
    local.check_server_path(None)  # a loopback-only server may read any path its user can
    assert client_key("10.0.0.1", f"Bearer {TOKEN}") == client_key("10.0.0.2", f"bearer {TOKEN}")
    assert client_key("10.0.0.1", None) != client_key("10.0.0.2", None)


# -- writes over HTTP --------------------------------------------------------------------------------


def test_with_a_token_writes_need_it_and_reads_stay_public(serve, index):
    root, _, _ = index
    client, runner = serve(admin_token=TOKEN, host="0.0.0.0", catalog_root=root / "catalogs")
    catalog = str(root / "catalogs" / "first" / "catalog.jsonl")
    r = client.post("/index", json={"catalog": catalog})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["error"] == "unauthorized"
    r = client.post("/index", json={"catalog": catalog, "prune": True}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["detail"] == "wrong admin token"
    assert client.get("/jobs").json() == []  # nothing was started
    for path in ("/health", "/items/p001", "/items/p001/image", "/items/p001/similar"):
        assert client.get(path).status_code == 200, path
    assert client.post("/search", json={"text": "red dress"}).status_code == 200
    r = client.post("/index", json={"catalog": catalog}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202, r.text
    job = runner.wait(r.json()["job_id"], timeout=120)
    assert job.status == "done" and job.report["unchanged"] == 24


def test_a_public_server_without_a_token_refuses_every_write(serve, index):
    root, _, _ = index
    client, _ = serve(host="0.0.0.0")
    r = client.post("/index", json={"catalog": str(root / "catalogs" / "first" / "catalog.jsonl")})
    assert r.status_code == 403 and "LOOKALIKE_ADMIN_TOKEN" in r.json()["detail"]
    client, _ = serve(host="0.0.0.0", admin_token=TOKEN)  # a token, but no folder to fence server paths to
    r = client.post("/index", json={"catalog": "/etc/passwd"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "LOOKALIKE_CATALOG_ROOT" in r.json()["detail"]


def test_a_loopback_server_takes_writes_from_this_machine_only(index):
    root, _, _ = index
    app, runner = make_app(index)
    catalog = str(root / "catalogs" / "first" / "catalog.jsonl")
    with TestClient(app, client=("203.0.113.9", 40000)) as remote:
        r = remote.post("/index", json={"catalog": catalog})
        assert r.status_code == 403 and "this machine only" in r.json()["detail"]
        assert remote.post("/search", json={"text": "red dress"}).status_code == 200
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        r = local.post("/index", json={"catalog": catalog})
        assert r.status_code == 202, r.text
    assert runner.wait(r.json()["job_id"], timeout=120).status == "done"
    runner.close()


# -- rate limits and budgets ------------------------------------------------------------------------


def test_a_client_over_its_search_limit_gets_429_with_retry_after(serve):
    client, _ = serve(rate_limit_search="3/minute")
    for _ in range(3):
        assert client.post("/search", json={"text": "red dress"}).status_code == 200
    r = client.get("/items/p001/similar")
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60 and "3 per 1 minute" in r.json()["detail"]
    # Another client (a bearer token names one) has its own allowance; reads of items are not limited.
    other = client.post("/search", json={"text": "red dress"}, headers={"Authorization": "Bearer shopper-2"})
    assert other.status_code == 200 and client.get("/items/p001").status_code == 200


def test_vlm_reranks_count_against_the_vlm_limit(serve):
    client, _ = serve(rate_limit_vlm="1/hour")
    first = client.post("/search", json={"text": "red dress", "rerank": "vlm"})
    assert first.status_code == 400 and "re-ranker" in first.json()["detail"]  # counted, then refused: no VLM here
    second = client.post("/search", json={"text": "red dress", "rerank": "vlm"})
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 60
    assert client.post("/search", json={"text": "red dress"}).status_code == 200


def test_rate_limit_settings_are_checked():
    with pytest.raises(ValueError, match="write it like '60/minute'"):
        RateLimits({"search": "lots"})
    RateLimits({"search": "", "vlm": None}).hit("search", "anyone")  # empty: no limit


def test_a_daily_budget_counts_tokens_per_utc_day_and_survives_a_restart(tmp_path):
    budget = DailyBudget(tmp_path / "budget.json", 100, "the VLM")
    budget.check()
    budget.spend(60)
    budget.check()
    DailyBudget(tmp_path / "budget.json", 100, "the VLM").spend(45)  # another process, the same file
    with pytest.raises(LimitExceeded, match="daily budget of 100 tokens for the VLM is spent") as spent:
        budget.check()
    assert 0 < spent.value.retry_after <= 86400
    data = json.loads((tmp_path / "budget.json").read_text())
    (tmp_path / "budget.json").write_text(json.dumps({**data, "day": "2000-01-01"}))  # yesterday's spending
    budget.check()
    assert budget.spent() == 0


# -- observability ------------------------------------------------------------------------------------


def test_metrics_count_routes_searches_and_jobs(serve):
    import vlm  # noqa: F401  (the servers load the vlm package, which adds its figures)

    client, _ = serve()
    client.post("/search", json={"text": "red dress"})
    client.post("/search", json={"like": "p001"})
    client.get("/items/p001")
    text = client.get("/metrics").text
    assert re.search(r'lookalike_search_seconds_count\{kind="text"\} [1-9]', text)
    assert re.search(r'lookalike_search_seconds_count\{kind="image"\} [1-9]', text)
    assert re.search(r'lookalike_http_requests_total\{handler="/search",method="POST",status="2xx"\} [1-9]', text)
    assert 'handler="/items/{item_id:path}"' in text
    assert 'lookalike_index_job_items{state="done"} 0.0' in text and "lookalike_index_failed_items" in text
    assert "# HELP lookalike_vlm_calls_total" in text and "# HELP lookalike_vlm_tokens_total" in text
    assert "process_resident_memory_bytes" in text


def test_every_response_and_log_line_carries_the_request_id(serve, caplog):
    client, _ = serve()
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(record.correlation_id)  # type: ignore[method-assign]
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    logger = logging.getLogger("search")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="search"):
            r = client.post("/search", json={"text": "red dress", "filters": ["colour=red"]})
            mine = str(uuid.uuid4())
            echoed = client.get("/health", headers={"X-Request-ID": mine})
    finally:
        logger.removeHandler(handler)
    request_id = r.headers["x-request-id"]
    assert uuid.UUID(request_id) and echoed.headers["x-request-id"] == mine
    assert request_id in seen  # the engine's log lines of that search carry its id


def test_cors_is_off_by_default_and_names_the_allowed_origins(serve):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    client, _ = serve()
    r = client.options("/search", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    client, _ = serve(cors_origins=["https://shop.example"])
    r = client.options("/search", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    r = client.options("/search", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
