"""Index jobs through the REST API: progress, report, errors, searches while indexing, restarts."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from test_api import running_server

from indexer import IndexManifest
from search import SearchSettings
from search.api import app_from_settings
from search.jobs import Job, JobRunner


def add_bad_image(catalog) -> None:
    """Append an item whose image file is not an image."""
    bad = catalog.parent / "images" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg" * 20)
    row = {"id": "broken", "title": "broken", "image": "images/broken.jpg", "category": "bag", "price": 1}
    with catalog.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def wait_for(server, job_id: str, timeout: float = 60) -> dict:
    """The job as ``GET /jobs/ID`` reports it once its thread has finished."""
    client, app, _ = server
    app.state.jobs.wait(job_id, timeout=timeout)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] not in ("queued", "running"), f"job {job_id} still {job['status']} after {timeout}s"
    return job


def pause_jobs_at(monkeypatch, done: int) -> tuple[threading.Event, threading.Event]:
    """Make the next index job stop once ``done`` items are processed; it goes on when ``resume`` is set.

    Returns ``(paused, resume)``. Whatever the machine's speed, the job is then certainly running, with
    part of the catalog stored, for as long as the test needs.
    """
    import search.jobs

    paused, resume = threading.Event(), threading.Event()
    index_into = search.jobs.index_into

    def pausing(*args, progress, **kwargs):
        def progress_then_pause(n: int, total: int) -> None:
            progress(n, total)
            if n == done:
                paused.set()
                assert resume.wait(60), "the test never resumed the job"

        return index_into(*args, progress=progress_then_pause, **kwargs)

    monkeypatch.setattr(search.jobs, "index_into", pausing)
    return paused, resume


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_spec, text_spec):
    """The API over a data dir with no index yet, built the way ``lookalike serve`` builds it."""
    root = tmp_path_factory.mktemp("jobs")
    settings = SearchSettings(
        data_dir=root / "data",
        clip_model=tiny_clip_spec,
        text_model=text_spec,
        device="cpu",
        batch_size=8,
        workers=2,
    )
    app = app_from_settings(settings)
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, app, root
    # the lifespan closed the engine and stopped the runner


def test_index_job_on_a_new_data_dir(server):
    from conftest import make_catalog

    client, app, root = server
    assert client.get("/health").json()["status"] == "empty"
    r = client.post("/search", json={"text": "red dress"})
    assert r.status_code == 409 and "POST /index" in r.json()["detail"]

    catalog = make_catalog(root / "first", n=30)
    add_bad_image(catalog)
    r = client.post("/index", json={"catalog": str(catalog)})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["url"] == f"/jobs/{job_id}"

    job = wait_for(server, job_id)
    assert job["status"] == "done", job
    assert job["done"] == job["total"] == 31
    assert job["images_per_s"] > 0 and job["eta_s"] == 0
    assert job["started"] and job["finished"] >= job["started"]
    report = job["report"]
    assert (report["new"], report["failed"], report["unchanged"]) == (30, 1, 0)
    assert job["errors_total"] == 1
    (error,) = job["errors"]
    assert error["id"] == "broken" and error["reason"] == "not_an_image" and "broken.jpg" in error["image"]
    # The job names its files relative to the data dir: no server path of the index in the answer.
    assert job["errors_path"] == job["report"]["errors_path"] == f"jobs/{job_id}.errors.jsonl"
    assert str(root / "data") not in client.get(f"/jobs/{job_id}").text

    manifest = IndexManifest.load(root / "data")
    assert manifest is not None and manifest.clip_model == app.state.engine.models.clip.spec
    assert manifest.last_run["catalog"] == str(catalog) and manifest.last_run["new"] == 30

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 30 and health["fields"]["colour"] == "keyword"
    r = client.post("/search", json={"text": "red dress", "filters": ["colour=red"], "k": 5})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and all(h["payload"]["colour"] == "red" for h in hits)
    assert [j["id"] for j in client.get("/jobs").json()] == [job_id]


def test_concurrent_searches_while_a_job_runs(server, monkeypatch):
    from conftest import make_catalog

    client, app, root = server
    runner: JobRunner = app.state.jobs
    catalog = make_catalog(root / "second", n=160)  # p000-p029 are stored already; 130 are new
    # Held once 80 items are through (30 unchanged, 50 new, most of them stored) until three searches have
    # run during the job: how many overlap no longer depends on how fast the job or the searches are.
    paused, resume = pause_jobs_at(monkeypatch, done=80)
    results: list[tuple[int, bool]] = []
    overlapping = threading.Semaphore(0)
    stop = threading.Event()

    def search_loop(i: int) -> None:
        queries = [
            {"text": "red dress", "k": 5},
            {"text": "bag", "filters": ["price<100"], "k": 5},
            {"like": "p001", "k": 3},
        ]
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            n = 0
            while not stop.is_set():
                before = runner.running() is not None
                r = own.post("/search", json=queries[(i + n) % len(queries)])
                overlapped = before and runner.running() is not None
                results.append((r.status_code, overlapped))
                if overlapped:
                    overlapping.release()
                n += 1

    threads = [threading.Thread(target=search_loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        r = client.post("/index", json={"catalog": str(catalog)})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        again = client.post("/index", json={"catalog": str(catalog)})
        assert again.status_code == 409 and again.json()["job_id"] == job_id
        assert client.get("/health").json()["job"] == job_id
        assert paused.wait(60), "the job never got halfway"
        for _ in range(3):
            assert overlapping.acquire(timeout=60), "no search ran while the job indexed"
        # What a crash mid-run would leave behind; nothing rewrites it while the job is held.
        snapshot = json.loads((root / "data" / "jobs" / f"{job_id}.json").read_text())
        resume.set()
        job = wait_for(server, job_id)
    finally:
        resume.set()
        stop.set()
        for t in threads:
            t.join(30)

    assert job["status"] == "done", job
    assert (job["report"]["new"], job["report"]["unchanged"]) == (130, 30)
    assert results and all(status == 200 for status, _ in results), {s for s, _ in results}
    # the new items are searchable, with their payload fields
    r = client.post("/search", json={"text": "dress", "filters": ["price>=150"], "k": 50, "dedup": False})
    assert r.status_code == 200 and r.json()["hits"]
    assert {h["id"] for h in r.json()["hits"]} <= {f"p{i:03d}" for i in range(140, 160)}
    assert client.get("/items/p159").status_code == 200
    assert client.get("/health").json()["items"] == 160

    # A job that dies mid-run leaves its last saved state, "running", behind.
    assert snapshot["status"] == "running"
    crashed = Job.from_dict({**snapshot, "id": "crashed0000"})
    (root / "data" / "jobs" / "crashed0000.json").write_text(json.dumps(crashed.to_dict()))
    restarted = JobRunner(app.state.engine)
    assert restarted.get(job_id) == runner.get(job_id)
    assert restarted.get("crashed0000").status == "interrupted"
    assert "submit the catalog again" in restarted.get("crashed0000").error
    assert {j.id for j in restarted.recent()} == {j["id"] for j in client.get("/jobs").json()} | {"crashed0000"}


def test_job_failures_are_reported(server, tmp_path):
    client, app, _ = server
    tags = tmp_path / "tags.yaml"
    tags.write_text("colour: [red]\n")  # one label is not a label set
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "x", "image": "x.jpg"}\n')
    r = client.post("/index", json={"catalog": str(catalog), "tags": str(tags)})
    assert r.status_code == 400 and r.json()["error"] == "tags" and "at least two" in r.json()["detail"]
    r = client.post("/index", json={"catalog": str(catalog), "tags": str(tmp_path / "none.yaml")})
    assert r.status_code == 400 and "does not exist" in r.json()["detail"]
    r = client.post("/index", json={"catalog": str(catalog), "prune": "sometimes"})
    assert r.status_code == 422
    # a catalog whose only image is missing: the job runs, and reports the failed item
    job = wait_for(server, client.post("/index", json={"catalog": str(catalog)}).json()["job_id"])
    assert job["status"] == "done" and job["report"]["failed"] == 1
    assert job["errors"][0]["reason"] == "not_found"


def test_closing_the_runner_interrupts_its_job(server, tmp_path):
    from conftest import make_catalog

    _, app, root = server
    runner = JobRunner(app.state.engine)
    runner.close()  # as on server shutdown: a job still running stops at its next item
    job = runner.submit(make_catalog(tmp_path, n=5))
    job = runner.wait(job.id, timeout=30)
    assert job.status == "interrupted" and "shutdown" in job.error
    assert job.done == 0 and job.finished
    saved = json.loads((root / "data" / "jobs" / f"{job.id}.json").read_text())
    assert saved["status"] == "interrupted"
