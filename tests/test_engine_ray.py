"""The ray engine on a local Ray (2 CPUs), against the local engine on the same catalog and models.

One Ray instance serves every test here. The models are lookalike-mini with random weights: its
architecture ships with lookalike, so Ray's worker processes can build it as the driver does.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import make_catalog
from PIL import Image

from indexer import EngineError, ImagePolicy, IndexOptions, RayOptions, index_catalog, open_store
from indexer import read_catalog as read
from indexer.engine_ray import WriteStage, _plan, connect, index_catalog_ray
from indexer.engines import WorkerSpec
from indexer.store import Record, StoreSchema

ray = pytest.importorskip("ray")

MINI = "openclip:lookalike-mini/random"
POLICY = ImagePolicy(max_bytes=5_000_000, max_pixels=4_000_000, url_timeout=2.0, allow_private_urls=False)
OPTIONS = IndexOptions(batch_size=4, workers=2)


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mini(models, cpu):
    """lookalike-mini beside the session's MiniLM (loaded once for the whole suite)."""
    from indexer import Models, make_encoder

    return Models(clip=make_encoder(MINI, cpu), text=models.text)


def spec_for(store_spec: str, text_spec: str) -> WorkerSpec:
    return WorkerSpec(clip_model=MINI, text_model=text_spec, device="cpu", dtype="float32", store=store_spec)


def run_engine(engine: str, catalog: Path, data: Path, models, text_spec: str, progress=None):
    spec = f"edge:{data / 'store'}"
    store = open_store(spec)
    try:
        args = (read(catalog), store, models, OPTIONS, POLICY, data / "errors.jsonl", progress)
        if engine == "local":
            return index_catalog(*args)
        return index_catalog_ray(*args, workers=spec_for(spec, text_spec), ray_options=RayOptions())
    finally:
        store.close()


def stored(data: Path) -> dict[str, Record]:
    store = open_store(f"edge:{data / 'store'}")
    try:
        ids = [r.id for r in store.scroll(keys=[])]
        return {r.id: r for r in store.retrieve(ids, with_vectors=True)}
    finally:
        store.close()


def catalog_with_bad_rows(root: Path, n: int) -> Path:
    catalog = make_catalog(root, n=n)
    (root / "images" / "empty.jpg").write_bytes(b"")
    with catalog.open("a") as f:
        f.write(json.dumps({"id": "empty", "title": "empty", "image": "images/empty.jpg"}) + "\n")
        f.write(json.dumps({"id": "gone", "title": "gone", "image": "images/missing.jpg"}) + "\n")
    return catalog


def errors(data: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (data / "errors.jsonl").read_text().splitlines()]
    return {r["id"]: (r["reason"], r["source"]) for r in rows}


def test_ray_engine_stores_what_the_local_engine_stores_and_reports_the_same(tmp_path, local_ray, mini, text_spec):
    from typer.testing import CliRunner

    from ui.cli import app

    catalog = catalog_with_bad_rows(tmp_path / "catalog", n=12)
    local = run_engine("local", catalog, tmp_path / "local", mini, text_spec)
    data = tmp_path / "ray"
    args = ["index", str(catalog), "--data-dir", str(data), "--model", MINI, "--text-model", text_spec]
    first = CliRunner().invoke(app, [*args, "--engine", "ray", "--batch-size", "4", "--json"])
    assert first.exit_code == 0, first.output
    on_ray = json.loads(first.stdout)
    assert "indexing" in first.stderr and "14/14" in first.stderr  # the same bar as the local engine's
    counts = (on_ray["new"], on_ray["updated"], on_ray["unchanged"], on_ray["failed"])
    assert counts == (local.new, local.updated, local.unchanged, local.failed) == (12, 0, 0, 2)
    assert on_ray["failures"] == local.failures
    assert errors(data) == errors(tmp_path / "local")
    want, got = stored(tmp_path / "local"), stored(data)
    assert got.keys() == want.keys() and len(got) == 12
    for item_id, record in want.items():
        assert got[item_id].payload == record.payload  # the content hash included
        for name in ("image", "text", "semantic"):
            np.testing.assert_allclose(got[item_id].vectors[name], record.vectors[name], rtol=0, atol=1e-6)
    # The same incremental rule: one changed title re-embeds that item alone; failures are retried.
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    rows[3]["title"] = "a new title"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = CliRunner().invoke(app, [*args, "--engine", "ray", "--quiet"])
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("0 new, 1 updated, 11 unchanged, 2 failed, 0 pruned"), again.stdout


def test_ray_engine_indexes_every_photo_as_the_local_engine_does(tmp_path, local_ray, mini, text_spec):
    from test_photos_index import add_photos

    catalog = make_catalog(tmp_path / "catalog", n=8)
    add_photos(catalog)
    (catalog.parent / "images" / "p002-2.png").write_bytes(b"not a png")
    local = run_engine("local", catalog, tmp_path / "local", mini, text_spec)
    on_ray = run_engine("ray", catalog, tmp_path / "ray", mini, text_spec)
    counts = (on_ray.new, on_ray.failed, on_ray.photos_failed)
    assert counts == (local.new, local.failed, local.photos_failed) == (8, 0, 1)
    rows = [json.loads(line) for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert [(r["id"], r["photo"]) for r in rows] == [("p002", 1)]
    want, got = stored(tmp_path / "local"), stored(tmp_path / "ray")
    for item_id, record in want.items():
        assert got[item_id].payload == record.payload  # the photo marks included
        np.testing.assert_allclose(got[item_id].vectors["photos"], record.vectors["photos"], rtol=0, atol=1e-6)
    # One photo's new bytes: that product alone is updated (its photos all embedded: the encoders hold no store).
    Image.new("RGB", (48, 48), (10, 200, 30)).save(catalog.parent / "images" / "p004-3.png")
    again = run_engine("ray", catalog, tmp_path / "ray", mini, text_spec)
    assert (again.new, again.updated, again.unchanged, again.photos_failed) == (0, 1, 7, 1)


def test_a_stopped_run_resumes_and_a_killed_worker_loses_no_item(tmp_path, local_ray, mini, text_spec):
    catalog = make_catalog(tmp_path / "catalog", n=120)
    data = tmp_path / "data"

    class Stop(Exception):
        pass

    def stop_after_12(done: int, total: int) -> None:
        if done >= 12:
            raise Stop

    with pytest.raises(Stop):
        run_engine("ray", catalog, data, mini, text_spec, progress=stop_after_12)
    committed = len(stored(data))
    assert 12 <= committed < 120

    killed: list[int] = []

    def kill_the_encoder_once(done: int, total: int) -> None:
        if killed:
            return
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("EncodeStage" in part for part in proc.info["cmdline"] or []):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(done)
                return

    report = run_engine("ray", catalog, data, mini, text_spec, progress=kill_the_encoder_once)
    assert killed and killed[0] < 120, "the encoder was not killed mid-run"
    assert (report.unchanged, report.new, report.failed) == (committed, 120 - committed, 0)
    assert len(stored(data)) == 120


def test_an_address_where_no_ray_answers_fails_within_seconds():
    started = time.monotonic()
    with pytest.raises(EngineError, match="no Ray cluster answers at 127.0.0.1:9"):  # the discard port
        connect(RayOptions(address="127.0.0.1:9", connect_timeout_s=2))
    with pytest.raises(EngineError, match="expected auto or HOST:PORT"):
        connect(RayOptions(address=":80"))
    # Ray Data's executor does not run through Ray Client: refused at once, with what to do instead.
    with pytest.raises(EngineError, match="ray start --address"):
        connect(RayOptions(address="ray://head:10001"))
    assert time.monotonic() - started < 10


def test_the_cli_names_an_unanswering_address_before_loading_any_model(tmp_path):
    from typer.testing import CliRunner

    from ui.cli import app

    catalog = make_catalog(tmp_path / "catalog", n=2)
    started = time.monotonic()
    args = ["index", str(catalog), "--data-dir", str(tmp_path / "data"), "--engine", "ray"]
    result = CliRunner().invoke(app, [*args, "--ray-address", "127.0.0.1:9", "--model", "openclip:nowhere/none"])
    assert result.exit_code == 2 and "no Ray cluster answers at 127.0.0.1:9" in result.stderr, result.output
    assert time.monotonic() - started < 10


class FakeRay:
    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 64.0, "GPU": self.gpus} if self.gpus else {"CPU": 2.0}


def test_plan_puts_one_encoder_on_each_gpu_and_many_writers_on_a_cluster_store():
    edge, cluster = WorkerSpec(MINI, "st:x", store="edge:/d"), WorkerSpec(MINI, "st:x", store="qdrant:http://q:6333")
    cpu = _plan(FakeRay(0), RayOptions(), edge)
    assert (cpu.encoders, cpu.gpus_per_encoder, cpu.writers) == (1, 0.0, 0)
    assert 0 < cpu.encoder_cpus < 1  # else on 2 CPUs the decode tasks starve and the run hangs
    gpus = _plan(FakeRay(4), RayOptions(), cluster)
    assert (gpus.encoders, gpus.gpus_per_encoder, gpus.writers) == (4, 1.0, RayOptions().writers)
    assert _plan(FakeRay(4), RayOptions(gpus_per_worker=0.5), cluster).encoders == 8
    assert _plan(FakeRay(4), RayOptions(workers=2), cluster).encoders == 2
    with pytest.raises(EngineError, match="has 0"):
        _plan(FakeRay(0), RayOptions(gpus_per_worker=1), edge)


def test_write_stage_commits_its_batch_and_passes_the_outcomes_on():
    import pickle

    from qdrant_client import QdrantClient

    from indexer.store_qdrant import QdrantStore

    store = QdrantStore.from_client(QdrantClient(":memory:"))
    store.ensure_schema(StoreSchema({"image": 2}, {"image": "m"}))
    stage = WriteStage.__new__(WriteStage)
    stage.store = store
    records = [pickle.dumps(Record(f"p{i}", {"n": i}, {"image": np.array([1.0, i], np.float32)})) for i in range(3)]
    batch = {"id": np.array(["p0", "p1", "p2", "x"], dtype=object), "record": np.array([*records, b""], dtype=object)}
    out = stage(batch)
    assert store.count() == 3 and [r.payload["n"] for r in store.retrieve(["p2"])] == [2]
    assert list(out["id"]) == ["p0", "p1", "p2", "x"] and not any(out["record"])


@pytest.mark.parametrize("kind", ["openclip", "hf-clip", "hf-siglip2"])
def test_decode_tasks_get_the_encoders_preprocessing_without_its_model(kind, request, mini, cpu):
    import pickle

    from PIL import Image

    from indexer import make_encoder
    from indexer.engine_ray import image_transform

    if kind == "openclip":
        encoder = mini.clip
    else:
        path = request.getfixturevalue("tiny_hf_clip" if kind == "hf-clip" else "tiny_hf_siglip2")
        encoder = make_encoder(f"hf:{path}", cpu)
    shipped = pickle.dumps(image_transform(encoder))
    assert len(shipped) < 5_000_000  # the transforms and the tokenizer, not the weights
    image = Image.new("RGB", (61, 47), (200, 30, 90))
    assert pickle.loads(shipped)(image).equal(encoder.preprocess(image))
