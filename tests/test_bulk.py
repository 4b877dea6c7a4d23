"""Bulk loads: the vector index deferred and built once with progress, vectors on disk, and running out of memory."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import make_catalog
from typer.testing import CliRunner

from indexer import (
    ImagePolicy,
    IndexOptions,
    StoreError,
    StoreLayout,
    StoreSchema,
    bulk,
    index_catalog,
    read_catalog,
    store_codec,
)
from indexer.store import Record, SearchRequest
from indexer.store_codec import FULL_SCAN_POINTS
from indexer.store_edge import EdgeStore

SCHEMA = StoreSchema({"image": 4, "text": 8}, {"image": "m", "text": "m"})
POLICY = ImagePolicy(max_bytes=5_000_000, max_pixels=4_000_000, url_timeout=2.0, allow_private_urls=False)


def random_records(n: int, seed: int = 0) -> tuple[list[Record], np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n, 4)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = rng.standard_normal((n, 8)).astype(np.float32)
    return [Record(f"r{i}", {"n": i}, {"image": image[i], "text": text[i]}) for i in range(n)], image


def top(image: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    return [f"r{i}" for i in np.argsort(-(image @ q), kind="stable")[:k]]


def test_edge_bulk_load_searches_exactly_then_builds_once_with_progress(tmp_path):
    records, image = random_records(300)
    with EdgeStore(tmp_path / "s") as store:
        store.ensure_schema(SCHEMA)
        store.begin_bulk_load()
        store.upsert(records)
        assert store.unindexed() == 300
        # No graph yet: searches scan every point, and find what an exact scan finds.
        for i in (0, 7, 123):
            assert [h.id for h in store.search("image", image[i], 5)] == top(image, image[i], 5)
        seen: list[tuple[int, int]] = []
        store.optimize(progress=lambda done, total: seen.append((done, total)))
        assert seen[0] == (0, 600) and seen[-1] == (600, 600)
        assert store.unindexed() == 0 and store._shard.info().indexed_vectors_count == 600
        assert [h.id for h in store.search("image", image[7], 5)] == top(image, image[7], 5)
        store.upsert([Record("late", {}, {"image": image[0]})])  # the store is open again, and writable
        assert store.count() == 301


def test_a_filter_too_rare_for_the_graph_is_scanned(tmp_path):
    """The engine scans a filter's matches, rather than search its graph or inverted index for them,
    below FULL_SCAN_POINTS of them, whatever a vector's size: its default stops at 5,000 512-d vectors,
    where a 2M catalog's combined facet keys fall."""
    schema = StoreSchema({"image": 4, "text": 8}, {"image": "m", "text": "m"}, sparse={"lexical": "bm25"})
    with EdgeStore(tmp_path / "s") as store:
        store.ensure_schema(schema)
    config = json.loads((tmp_path / "s" / "edge_config.json").read_text())
    for name, size in schema.vectors.items():
        kb = config["vectors"][name]["hnsw_config"]["full_scan_threshold"]
        assert kb == store_codec.full_scan_kb(size) and FULL_SCAN_POINTS <= kb * 1024 // (4 * size) < 10_100
    assert config["hnsw_config"]["full_scan_threshold"] == store_codec.full_scan_kb(8)  # vectors added later
    assert config["sparse_vectors"]["lexical"]["full_scan_threshold"] == FULL_SCAN_POINTS


def built_store(path, records: list[Record], on_disk: bool) -> EdgeStore:
    """An open edge store holding ``records``, its graph built, its originals placed as ``on_disk`` says."""
    store = EdgeStore(path)
    store.ensure_schema(SCHEMA, StoreLayout(vectors_on_disk=on_disk))
    store.upsert(records)
    store.optimize()
    return store


def test_vectors_on_disk_are_memory_mapped_and_search_the_same(tmp_path):
    records, image = random_records(200, seed=1)
    results = {}
    for on_disk in (False, True):
        path = tmp_path / f"s-{on_disk}"
        with built_store(path, records, on_disk) as store:
            results[on_disk] = [(h.id, round(h.score, 6)) for h in store.search("image", image[3], 10)]
        vectors = json.loads((path / "edge_config.json").read_text())["vectors"]
        assert {v.get("memory") for v in vectors.values()} == ({"cold"} if on_disk else {None})
        # The int8 copies stay in RAM either way, as searches walk them: on the heap with the originals
        # in RAM, memory-mapped and pre-loaded with them on disk (out of the build's anonymous memory).
        scalar = [v["quantization_config"]["scalar"] for v in vectors.values()]
        if on_disk:
            assert all(s.get("memory") == "cached" and not s.get("always_ram") for s in scalar)
        else:
            assert all(s["always_ram"] for s in scalar)
    assert results[True] == results[False]


def test_a_union_is_scored_exactly_in_ram_and_on_the_int8_copies_on_disk(tmp_path):
    """Originals on disk are read from disk for each vector scored, so a union's candidates (and a list
    of ids) are scored on the int8 copies there; in RAM, exactly. Reopening keeps the store's way."""
    records, image = random_records(400, seed=2)
    text = np.stack([r.vectors["text"] for r in records])
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    query = {"image": image[5], "text": text[9]}
    errors = {}
    for on_disk in (False, True):
        path = tmp_path / f"s-{on_disk}"
        built_store(path, records, on_disk).close()
        with EdgeStore(path) as store:  # reopened: the placement is read back from the shard
            union = store.search_union(query, 20)
            (listed,) = store.search_batch([SearchRequest("text", text[9], 30, ids=[f"r{i}" for i in range(30)])])
            # A search that returns the vectors it searched: scored exactly on them, in both placements.
            (read,) = store.search_batch([SearchRequest("text", text[9], 15, with_vectors=["text"])])
        own = [float(p.vectors["text"] @ text[9] / np.linalg.norm(p.vectors["text"])) for p in read]
        assert [p.id for p in read][0] == "r9" and len(read) == 15
        assert np.allclose([p.score for p in read], own, atol=1e-5) and own == sorted(own, reverse=True)
        assert len(union["image"]) == len(union["text"]) > 20  # the union of two top-20s, on both vectors
        exact = {"image": image, "text": text}
        errs = [abs(p.score - float(exact[n][int(p.id[1:])] @ query[n])) for n in exact for p in union[n]]
        errs += [abs(p.score - float(text[int(p.id[1:])] @ text[9])) for p in listed]
        errors[on_disk] = max(errs)
        assert union["image"][0].id == "r5" and union["text"][0].id == "r9"
    assert errors[False] < 1e-5
    assert 1e-5 < errors[True] < 0.05


def test_cli_bulk_load_defers_the_index_and_draws_the_build_bar(tmp_path, tiny_clip_spec, text_spec, monkeypatch):
    from ui.cli import app

    monkeypatch.setenv("LOOKALIKE_OPTIMIZE_THRESHOLD", "5")
    monkeypatch.setenv("LOOKALIKE_VECTORS_ON_DISK", "true")
    catalog = make_catalog(tmp_path / "catalog", n=8)
    data = tmp_path / "data"
    args = ["index", str(catalog), "--data-dir", str(data), "--model", tiny_clip_spec, "--text-model", text_spec]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["new"] == 8 and report["optimized"] is True
    assert "building index" in result.stderr and "24/24" in result.stderr
    vectors = json.loads((data / "store" / "edge_config.json").read_text())["vectors"]
    assert {v["memory"] for v in vectors.values()} == {"cold"}
    with EdgeStore(data / "store") as store:
        assert store.unindexed() == 0
    # Two new items are no bulk load: no build, no bar.
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    more = make_catalog(tmp_path / "more", n=10)
    extra = [json.loads(line) for line in more.read_text().splitlines()][8:]
    for row in extra:
        row["id"] += "-more"
        row["image"] = str(more.parent / row["image"])
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    again = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(again.stdout)["new"] == 2 and "building index" not in again.stderr


class FailingStore:
    """An edge store whose writes fail as a store out of memory does."""

    def __init__(self, store: EdgeStore, error: BaseException) -> None:
        self.store, self.error = store, error

    def upsert(self, records) -> None:
        raise self.error

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        StoreError("store /x: Cannot allocate memory (os error 12)"),
        type("OutOfMemoryError", (Exception,), {})(),
    ],
)
def test_out_of_memory_during_a_load_names_the_on_disk_option(tmp_path, catalog_path, models, error):
    with EdgeStore(tmp_path / "store") as edge:
        with pytest.raises(StoreError, match="LOOKALIKE_VECTORS_ON_DISK=true") as info:
            index_catalog(
                read_catalog(catalog_path),
                FailingStore(edge, error),
                models,
                IndexOptions(batch_size=4, workers=1),
                POLICY,
                tmp_path / "errors.jsonl",
            )
        assert "out of memory during the load" in str(info.value)


def test_other_store_errors_pass_unchanged(tmp_path, catalog_path, models):
    with EdgeStore(tmp_path / "store") as edge:
        with pytest.raises(StoreError, match="^disk on fire$"):
            index_catalog(
                read_catalog(catalog_path),
                FailingStore(edge, StoreError("disk on fire")),
                models,
                IndexOptions(batch_size=4, workers=1),
                POLICY,
                tmp_path / "errors.jsonl",
            )


def test_a_build_killed_for_memory_names_the_on_disk_option_and_keeps_the_store(tmp_path, monkeypatch):
    records, image = random_records(50)
    monkeypatch.setattr(bulk, "_BUILD_SCRIPT", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with EdgeStore(tmp_path / "s") as store:
        store.ensure_schema(SCHEMA)
        store.upsert(records)
        with pytest.raises(StoreError, match="killed.*LOOKALIKE_VECTORS_ON_DISK=true"):
            store.optimize(progress=lambda done, total: None)
        assert store.count() == 50 and store.unindexed() == 50  # reopened, nothing lost, still to build
        assert [h.id for h in store.search("image", image[4], 3)] == top(image, image[4], 3)


def test_a_load_that_will_not_fit_warns_with_the_option(monkeypatch, caplog):
    import psutil

    class Free:
        available = 1_000_000_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Free())
    schema = StoreSchema({"image": 512, "text": 512, "semantic": 384}, {})
    with caplog.at_level(logging.WARNING, logger="indexer.bulk"):
        bulk.warn_if_tight(2_000_000, schema, vectors_on_disk=False)
        bulk.warn_if_tight(1_000, schema, vectors_on_disk=False)
    assert len(caplog.records) == 1 and "LOOKALIKE_VECTORS_ON_DISK" in caplog.text
    # On disk, 2M items of the real shapes need a fifth of the RAM: int8 copies, graph and ids.
    in_ram, on_disk = (bulk.ram_needed(2_000_000, schema, d) for d in (False, True))
    assert 14e9 < in_ram < 16e9 and 3e9 < on_disk < 5e9


def test_what_counts_as_a_bulk_load():
    assert bulk.is_bulk(20_000, 20_000) and not bulk.is_bulk(19_999, 20_000)
    assert not bulk.is_bulk(10**6, 0)  # a threshold of 0 builds after every load instead
