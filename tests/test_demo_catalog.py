"""Demo catalog generation on synthetic IDX files: no Debian dataset needed, and the split a photo came
from is visible in its label."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.demo_catalog import (
    CATEGORIES,
    COLOUR_TABLE,
    PATTERNS,
    DemoCatalogConfig,
    build_demo_catalog,
    gtin13,
    load_fashion_mnist,
    pattern_mask,
)

TRAIN_LABELS = (0, 1, 2, 3, 4)  # the fake train split only holds these categories ...
TEST_LABELS = (5, 6, 7, 8, 9)  # ... and the fake t10k split only these


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def fake_dataset(tmp_path_factory) -> Path:
    """A garment-like bright blob with some shading, 40 train and 30 test photos."""
    root = tmp_path_factory.mktemp("fmnist")
    yy, xx = np.mgrid[0:28, 0:28]
    blob = (((yy - 14) / 11.0) ** 2 + ((xx - 14) / 8.0) ** 2 < 1).astype(np.float32)
    photo = (blob * (160 + 80 * (yy / 27.0))).astype(np.uint8)
    for prefix, n, labels in (("train", 40, TRAIN_LABELS), ("t10k", 30, TEST_LABELS)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.repeat(photo[None], n, axis=0), 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.resize(np.array(labels), n), 2049)
    return root


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def config(dataset: Path, **kw) -> DemoCatalogConfig:
    return DemoCatalogConfig(
        **{"items": 12, "seed": 1, "split": "test", "image_size": 40, "dataset_dir": dataset, **kw}
    )


def test_test_split_comes_only_from_t10k(fake_dataset, tmp_path):
    test_names = {CATEGORIES[i].name for i in TEST_LABELS}
    train_names = {CATEGORIES[i].name for i in TRAIN_LABELS}
    test = rows(build_demo_catalog(tmp_path / "test", config(fake_dataset, items=30)))
    assert {r["category"] for r in test} <= test_names
    train = rows(build_demo_catalog(tmp_path / "train", config(fake_dataset, items=40, split="train")))
    assert {r["category"] for r in train} <= train_names
    assert len({r["id"] for r in test} & {r["id"] for r in train}) == 0


def test_rows_have_the_indexer_fields_and_sane_values(fake_dataset, tmp_path):
    catalog = build_demo_catalog(tmp_path / "c", config(fake_dataset))
    for row in rows(catalog):
        assert set(row) == {"id", "title", "description", "image", "category", "colour", "pattern"} | {
            "price",
            "brand",
            "in_stock",
            "sku",
            "gtin",
        }
        assert row["sku"] == f"LK-TE{row['id'][-5:]}" and gtin13(row["gtin"][:12]) == row["gtin"]
        cat = next(c for c in CATEGORIES if c.name == row["category"])
        assert cat.price_range[0] <= row["price"] <= cat.price_range[1] + 1
        assert row["colour"] in row["title"].lower() and row["colour"] in row["description"].lower()
        assert Image.open(catalog.parent / row["image"]).size == (40, 40)
        assert not Path(row["image"]).is_absolute()


def test_gtin13_check_digit():
    assert gtin13("400638133393") == "4006381333931"  # a real EAN-13
    assert gtin13("201000000000") == "2010000000007"


def test_a_bigger_build_extends_a_smaller_one(fake_dataset, tmp_path):
    small = rows(build_demo_catalog(tmp_path / "s", config(fake_dataset, items=5)))
    big = rows(build_demo_catalog(tmp_path / "b", config(fake_dataset, items=20)))
    assert big[:5] == small


def test_garment_pixels_carry_the_colour_and_background_stays_white(fake_dataset, tmp_path):
    catalog = build_demo_catalog(tmp_path / "c", config(fake_dataset, items=30))
    base = {name: np.array(rgb, np.float32) for name, rgb, _ in COLOUR_TABLE}
    for row in rows(catalog):
        px = np.asarray(Image.open(catalog.parent / row["image"]), np.float32)
        assert px[0, 0].min() > 250, "corners are background"
        centre = px[16:24, 16:24].reshape(-1, 3)
        if row["pattern"] == "plain":
            # Shading only scales the colour: the centre is the named colour, darkened at most to 62%.
            ratio = centre.mean(0) / np.maximum(base[row["colour"]], 1)
            bright = base[row["colour"]] > 60
            assert np.all((ratio[bright] > 0.55) & (ratio[bright] < 1.05)), row
        nearest = min(base, key=lambda c: np.abs(np.median(centre, 0) - base[c]).sum())
        if row["pattern"] == "plain":
            assert nearest == row["colour"]


@pytest.mark.parametrize("size", [32, 96])
def test_patterns_are_distinguishable_at_any_size(size):
    masks = {p: pattern_mask(p, size, (0.3, 0.6)) for p in PATTERNS}
    assert masks["plain"].max() == 0
    striped, dotted, checked = masks["striped"], masks["dotted"], masks["checked"]
    # Stripes are horizontal: constant along a row, varying down a column.
    assert striped.std(axis=1).max() < 1e-6 and striped[:, 0].std() > 0.3
    # Checks vary along both axes; dots cover far less of the garment than stripes or checks.
    assert checked.std(axis=0).mean() > 0.1 and checked.std(axis=1).mean() > 0.1
    assert 0.08 < dotted.mean() < 0.35 < striped.mean() < 0.6
    for p in ("striped", "dotted", "checked"):
        assert 0 <= masks[p].min() and masks[p].max() <= 1


def test_refuses_to_mix_builds_or_overwrite_foreign_files(fake_dataset, tmp_path):
    build_demo_catalog(tmp_path / "c", config(fake_dataset))
    with pytest.raises(FileExistsError, match="seed"):
        build_demo_catalog(tmp_path / "c", config(fake_dataset, seed=2))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_catalog(foreign, config(fake_dataset))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_killed_build_leaves_no_catalog_and_resumes(fake_dataset, tmp_path, monkeypatch):
    from indexer import demo_catalog

    calls = {"n": 0}
    real = demo_catalog.render_item

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(demo_catalog, "render_item", dying)
    with pytest.raises(OSError, match="No space"):
        build_demo_catalog(tmp_path / "c", config(fake_dataset))
    assert not (tmp_path / "c" / "catalog.jsonl").exists()
    assert len(list((tmp_path / "c" / "images").glob("*.png"))) == 6
    # The re-run renders only what is missing, and ends with the same catalog as an uninterrupted build.
    calls["n"] = -100
    resumed = build_demo_catalog(tmp_path / "c", config(fake_dataset))
    assert calls["n"] == -100 + 6
    assert rows(resumed) == rows(build_demo_catalog(tmp_path / "fresh", config(fake_dataset)))


def test_bad_idx_file_and_too_many_items(fake_dataset, tmp_path):
    with pytest.raises(ValueError, match="more than the 30"):
        build_demo_catalog(tmp_path / "c", config(fake_dataset, items=31))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (broken / name).write_bytes(gzip.compress(b"\x00\x00\x09\x99 not really"))
    with pytest.raises(ValueError, match="not an IDX file"):
        load_fashion_mnist(broken, "test")


def test_config_validation():
    with pytest.raises(ValueError, match="split"):
        DemoCatalogConfig(split="valid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="items"):
        DemoCatalogConfig(items=0)


# --------------------------------------------------------------------------- shop formats


@pytest.mark.parametrize("fmt", ["shopify", "gmc", "gmc-xml"])
def test_shop_formats_read_back_as_the_same_products_with_all_their_photos(fake_dataset, tmp_path, fmt):
    from indexer.catalog import detect_format, read_catalog

    plain = {i.id: i for i in read_catalog(build_demo_catalog(tmp_path / "c", config(fake_dataset))).items}
    feed = build_demo_catalog(tmp_path / "c", config(fake_dataset, format=fmt))
    assert feed.name == {"shopify": "products.csv", "gmc": "feed.tsv", "gmc-xml": "feed.xml"}[fmt]
    if fmt != "gmc-xml":
        header = feed.read_text().splitlines()[0].split("\t" if fmt == "gmc" else ",")
        assert detect_format(header) == fmt
    items = read_catalog(feed).items  # the layout is detected, not named
    assert [i.id for i in items] == list(plain)
    for item in items:
        same = plain[item.id]
        assert (item.title, item.description, item.image) == (same.title, same.description, same.image)
        assert item.payload["price"] == same.payload["price"] and item.payload["brand"] == same.payload["brand"]
        assert len(item.images) == 3 and all(Path(p).is_file() for p in item.images)
        main, mirrored, detail = (np.asarray(Image.open(p)) for p in item.images)
        assert np.array_equal(mirrored, main[:, ::-1]) and not np.array_equal(detail, main)
    if fmt == "shopify":
        shirt = next(i for i in items if i.payload["product_type"] == "shirt")
        assert shirt.payload["size"] == ["S", "M", "L"] and len(shirt.payload["sku"]) == 3
        assert shirt.payload["price_max"] == pytest.approx(shirt.payload["price"] + 5)
    else:
        assert {i.payload["currency"] for i in items} == {"USD"}
        assert all(len(i.payload["gtin"]) == 13 for i in items)


def test_plain_demo_catalog_has_one_photo_per_product(fake_dataset, tmp_path):
    catalog = build_demo_catalog(tmp_path / "c", config(fake_dataset))
    assert sorted(p.name for p in (tmp_path / "c" / "images").iterdir()) == sorted(
        Path(r["image"]).name for r in rows(catalog)
    )
    with pytest.raises(ValueError, match="format"):
        DemoCatalogConfig(format="excel")  # type: ignore[arg-type]


def test_ean13_check_digits():
    from indexer.demo_feeds import ean13

    assert ean13(0) == "2000000000008" and ean13(107) == "2000000001074"
    for n in (0, 5, 123, 99_999):
        code = [int(d) for d in ean13(n)]
        assert len(code) == 13 and (sum(code[0::2]) + 3 * sum(code[1::2])) % 10 == 0
