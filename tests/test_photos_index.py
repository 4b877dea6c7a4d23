"""Several photos per product through the indexing pipeline, on a real edge shard and on
``QdrantClient(":memory:")``, with a tiny CLIP and the real MiniLM: every photo embedded, per-photo
incremental re-runs, one bad photo reported while the rest of its product is indexed, and a store made
with main photos only upgraded without embedding those again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_catalog
from PIL import Image, ImageOps
from qdrant_client import QdrantClient

from indexer import ImagePolicy, IndexOptions, index_catalog, open_store, read_catalog
from indexer.photos import PHOTOS
from indexer.store import PHOTOS_KEY
from indexer.store_qdrant import QdrantStore

POLICY = ImagePolicy(max_bytes=5_000_000, max_pixels=4_000_000, url_timeout=2.0, allow_private_urls=False)
OPTIONS = IndexOptions(batch_size=4, workers=2, prefetch_batches=2)
N = 8


def add_photos(catalog: Path, photos: int = 3) -> None:
    """Give every product of a ``make_catalog`` catalog its mirror image and a close-up as further photos."""
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    for row in rows:
        main = catalog.parent / row["image"]
        shot = Image.open(main).convert("RGB")
        views = [ImageOps.mirror(shot).rotate(20), shot.crop((4, 4, 30, 30)).resize(shot.size)]
        row["images"] = [row["image"]]
        for k, view in enumerate(views[: photos - 1], start=2):
            name = f"images/{main.stem}-{k}.png"
            view.save(catalog.parent / name)
            row["images"].append(name)
    write(catalog, rows)


def write(catalog: Path, rows: list[dict]) -> None:
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))


class Stores:
    """Opens the store of one backend as each run of ``lookalike index`` would."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.client = QdrantClient(":memory:") if kind == "qdrant" else None

    def open(self):
        if self.kind == "edge":
            return open_store(f"edge:{self.path}")
        return QdrantStore.from_client(self.client, collection="photos")


@pytest.fixture(params=["edge", "qdrant"])
def stores(request, tmp_path):
    return Stores(request.param, tmp_path / "store")


def run(catalog: Path, stores: Stores, models, errors: Path):
    store = stores.open()
    try:
        report = index_catalog(read_catalog(catalog), store, models, OPTIONS, POLICY, errors)
        records = {r.id: r for r in store.retrieve([f"p{i:03d}" for i in range(N)], with_vectors=True)}
        return report, records, store.schema()
    finally:
        if stores.kind == "edge":
            store.close()


@pytest.fixture
def catalog(tmp_path) -> Path:
    path = make_catalog(tmp_path / "catalog", n=N)
    add_photos(path)
    return path


def test_every_photo_is_embedded_and_reruns_embed_only_the_photo_that_changed(tmp_path, catalog, stores, models):
    errors = tmp_path / "errors.jsonl"
    report, first, schema = run(catalog, stores, models, errors)
    assert (report.new, report.failed, report.photos_embedded) == (N, 0, 3 * N)
    assert schema.filled(PHOTOS)
    for record in first.values():
        rows = record.vectors[PHOTOS]
        assert rows.shape == (3, models.clip.dim)
        np.testing.assert_allclose(rows[0], record.vectors["image"], atol=1e-6)  # the main photo first
        assert len(record.payload[PHOTOS_KEY]) == 3 and not any(m.startswith("!") for m in record.payload[PHOTOS_KEY])
    again, _, _ = run(catalog, stores, models, errors)
    assert (again.new, again.updated, again.unchanged, again.photos_embedded) == (0, 0, N, 0)

    # New bytes for one photo: that product is updated, and only that photo goes through the model.
    Image.new("RGB", (48, 48), (10, 200, 30)).save(catalog.parent / "images" / "p003-3.png")
    report, after, _ = run(catalog, stores, models, errors)
    assert (report.updated, report.unchanged, report.photos_embedded) == (1, N - 1, 1)
    before_rows, after_rows = first["p003"].vectors[PHOTOS], after["p003"].vectors[PHOTOS]
    np.testing.assert_allclose(after_rows[:2], before_rows[:2], atol=1e-6)  # reused as stored
    assert not np.allclose(after_rows[2], before_rows[2], atol=1e-3)
    np.testing.assert_allclose(after["p004"].vectors[PHOTOS], first["p004"].vectors[PHOTOS], atol=1e-6)

    # A reordered gallery re-embeds nothing: every photo's bytes are known.
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    rows[5]["images"] = [rows[5]["images"][0], rows[5]["images"][2], rows[5]["images"][1]]
    write(catalog, rows)
    report, moved, _ = run(catalog, stores, models, errors)
    assert (report.updated, report.photos_embedded) == (1, 0)
    np.testing.assert_allclose(moved["p005"].vectors[PHOTOS], after["p005"].vectors[PHOTOS][[0, 2, 1]], atol=1e-6)


def test_a_bad_photo_is_reported_and_the_rest_of_its_product_indexed(tmp_path, catalog, stores, models):
    (catalog.parent / "images" / "p002-2.png").write_bytes(b"not a png at all")  # undecodable
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    rows[4]["images"][2] = "images/missing.png"  # a file that is not there
    rows[6]["image"] = rows[6]["images"][0] = "images/gone.jpg"  # the main photo itself
    write(catalog, rows)
    errors = tmp_path / "errors.jsonl"
    report, records, schema = run(catalog, stores, models, errors)
    assert (report.new, report.failed, report.photos_failed) == (N, 0, 3)
    assert "3 photos left out (their products indexed)" in report.summary()
    found = {(e["id"], e["photo"]): e for e in map(json.loads, errors.read_text().splitlines())}
    assert set(found) == {("p002", 1), ("p004", 2), ("p006", 0)}
    assert found[("p002", 1)]["source"].endswith("catalog.jsonl:3")
    assert found[("p002", 1)]["image"].endswith("p002-2.png")
    assert found[("p004", 2)]["source"].endswith("catalog.jsonl:5")
    assert records["p002"].vectors[PHOTOS].shape[0] == 2
    assert records["p002"].payload[PHOTOS_KEY][1].startswith("!")
    # Without its main photo a product is searched by the others; its next photo stands in as the main one.
    np.testing.assert_allclose(records["p006"].vectors["image"], records["p006"].vectors[PHOTOS][0], atol=1e-6)
    assert schema.filled(PHOTOS)
    # A re-run changes nothing and reports the same photos again: the errors file is each run's own.
    again, _, _ = run(catalog, stores, models, errors)
    assert (again.unchanged, again.photos_embedded, again.photos_failed) == (N, 0, 3)
    assert {(e["id"], e["photo"]) for e in map(json.loads, errors.read_text().splitlines())} == set(found)


def test_a_product_with_no_usable_photo_fails_as_a_whole(tmp_path, catalog, stores, models):
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    rows[1]["image"] = "images/none.jpg"
    rows[1]["images"] = ["images/none.jpg", "images/none-2.png"]
    write(catalog, rows)
    errors = tmp_path / "errors.jsonl"
    report, records, _ = run(catalog, stores, models, errors)
    assert (report.new, report.failed) == (N - 1, 1) and "p001" not in records
    (row,) = [json.loads(line) for line in errors.read_text().splitlines()]
    assert row["id"] == "p001" and "no photo could be used" in row["error"] and "photo" not in row


def test_a_main_photo_store_is_upgraded_without_embedding_its_photos_again(tmp_path, stores, models):
    catalog = make_catalog(tmp_path / "catalog", n=N)
    errors = tmp_path / "errors.jsonl"
    report, single, schema = run(catalog, stores, models, errors)
    assert PHOTOS not in schema.vectors and all(PHOTOS_KEY not in r.payload for r in single.values())
    add_photos(catalog, photos=2)
    report, upgraded, schema = run(catalog, stores, models, errors)
    # Every product changed (it has a new photo), but only the new photos went through the model.
    assert (report.updated, report.photos_embedded) == (N, N)
    assert schema.filled(PHOTOS)
    for item_id, record in upgraded.items():
        np.testing.assert_allclose(record.vectors[PHOTOS][0], single[item_id].vectors["image"], atol=1e-6)
        assert record.vectors[PHOTOS].shape[0] == 2
