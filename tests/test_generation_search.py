"""Variants scored and searched against a real small index, and the `lookalike vary` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.random_diffusers import write_random_sd15
from typer.testing import CliRunner

from generation import Generated, VariantCache, VaryRequest, vary
from search import SearchEngine, SearchSettings
from ui.cli import app


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return write_random_sd15(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip_spec, text_spec):
    """A 20-item catalog indexed through the CLI, so the data dir has its manifest like a user's."""
    from conftest import make_catalog

    root = tmp_path_factory.mktemp("vary-index")
    catalog = make_catalog(root / "catalog", n=20)
    data = root / "data"
    result = CliRunner().invoke(
        app,
        ["index", str(catalog), "--data-dir", str(data), "--model", tiny_clip_spec, "--text-model", text_spec, "-q"],
    )
    assert result.exit_code == 0, result.output
    return catalog, data


@pytest.fixture
def engine(indexed):
    eng = SearchEngine(SearchSettings(data_dir=indexed[1]))
    yield eng
    eng.close()


def catalog_image(catalog: Path, item: str) -> Image.Image:
    return Image.open(catalog.parent / "images" / f"{item}.jpg").convert("RGB")


class Echo:
    """A generator whose variants are given pictures: the search results can then be checked by hand."""

    spec = "echo"

    def __init__(self, images):
        self.images = images

    def describe(self, req):
        return {**req.parameters(), "backend": "echo"}

    def generate(self, req):
        return [Generated(self.images[i % len(self.images)], req.seed + i) for i in range(req.n)]


def test_each_variant_reports_scores_and_its_nearest_real_products(engine, indexed):
    catalog, _ = indexed
    source = catalog_image(catalog, "p000")
    blue_bag = catalog_image(catalog, "p002")
    req = VaryRequest(source, "in blue", n=2, seed=5)
    result = vary(Echo([source, blue_bag]), req, engine=engine, k=3)
    same, changed = result.variants
    clip = engine.models.clip
    # The scores are the index CLIP's cosines.
    text_vec = clip.encode_texts(["in blue"])[0]
    assert changed.clip_text == pytest.approx(float(clip.encode_images([blue_bag])[0] @ text_vec), abs=1e-5)
    assert same.source_similarity == pytest.approx(1.0, abs=1e-4)
    assert changed.source_similarity < same.source_similarity
    assert [v.seed for v in result.variants] == [5, 6]
    for v in result.variants:
        assert 1 <= len(v.lookalikes) <= 3
        assert all(h.id.startswith("p0") and 0 <= h.relevance <= 1 for h in v.lookalikes)
    # A variant that shows a catalog product finds it (p017 is the same picture, so either may be kept).
    top = changed.lookalikes[0]
    assert top.id in {"p002", "p017"} and (top.payload["colour"], top.payload["category"]) == ("blue", "bag")
    data = result.to_dict()
    assert data["variants"][1]["lookalikes"][0]["payload"]["title"]
    assert data["settings"]["text"] == "in blue"


def test_the_source_product_is_not_its_own_lookalike(engine, indexed):
    catalog, _ = indexed
    source = catalog_image(catalog, "p002")
    result = vary(Echo([source]), VaryRequest(source, "in blue", n=1), engine=engine, k=5, exclude_id="p002")
    ids = [h.id for h in result.variants[0].lookalikes]
    assert ids and "p002" not in ids


def test_flagged_variants_are_neither_scored_nor_searched(engine, indexed):
    catalog, _ = indexed
    source = catalog_image(catalog, "p000")

    class Flagging(Echo):
        def generate(self, req):
            return [Generated(source, 0, flagged=True), Generated(source, 1)]

    result = vary(Flagging([source]), VaryRequest(source, "in blue", n=2), engine=engine)
    assert result.variants[0].lookalikes == [] and result.variants[0].clip_text is None
    assert result.variants[1].lookalikes


def test_real_pipeline_variants_are_searched(engine, indexed, tiny_sd, tmp_path):
    from generation import GeneratorSettings, make_generator
    from indexer import resolve_device

    catalog, _ = indexed
    settings = GeneratorSettings(data_dir=tmp_path, **tiny_sd.settings(), gen_resolution=64)
    gen = make_generator(settings, resolve_device("cpu"))
    req = VaryRequest(catalog_image(catalog, "p001"), "in navy blue leather", n=2, steps=2, seed=9)
    result = vary(gen, req, engine=engine, cache=VariantCache(tmp_path / "variants"), k=4, exclude_id="p001")
    assert len(result.variants) == 2 and not result.cached
    for v in result.variants:
        assert v.image.size == (64, 64) and v.path.is_file()
        assert -1 <= v.clip_text <= 1 and -1 <= v.source_similarity <= 1
        assert 1 <= len(v.lookalikes) <= 4 and "p001" not in [h.id for h in v.lookalikes]
    again = vary(gen, req, engine=engine, cache=VariantCache(tmp_path / "variants"), k=4, exclude_id="p001")
    assert again.cached and [h.id for h in again.variants[0].lookalikes] == [
        h.id for h in result.variants[0].lookalikes
    ]


# -- the command -------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch, tiny_sd):
    for key, value in {**tiny_sd.settings(), "gen_resolution": "64"}.items():
        monkeypatch.setenv(f"LOOKALIKE_{key.upper()}", value)
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")


def run(*args: str):
    return CliRunner().invoke(app, ["vary", *args])


def test_vary_command_writes_pngs_and_prints_lookalikes(cli_env, indexed, tmp_path):
    _, data = indexed
    out = tmp_path / "out"
    args = ["p003", "in navy blue leather", "--n", "2", "--steps", "2", "--seed", "4", "--out", str(out)]
    result = run(*args, "--data-dir", str(data), "--json", "--k", "3")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == {"item": "p003"} and not report["cached"]
    assert [v["seed"] for v in report["variants"]] == [4, 5]
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["p003-01-seed4.png", "p003-02-seed5.png"]
    assert Image.open(files[0]).size == (64, 64)
    for v in report["variants"]:
        assert v["file"] and isinstance(v["clip_text"], float) and isinstance(v["source_similarity"], float)
        assert 1 <= len(v["lookalikes"]) <= 3 and "p003" not in [h["id"] for h in v["lookalikes"]]
    assert report["settings"]["steps"] == 2 and report["settings"]["control"] == "canny"

    text = run(*args, "--data-dir", str(data))
    assert text.exit_code == 0, text.output
    assert "variant 1  seed 4  clip(text)" in text.stdout and "(cached)" in text.stdout
    first = np.asarray(Image.open(out / "p003-01-seed4.png"))
    assert np.array_equal(first, np.asarray(Image.open(files[0])))


def test_vary_command_takes_an_image_file(cli_env, indexed, tmp_path):
    catalog, data = indexed
    image = catalog.parent / "images" / "p004.jpg"
    result = run(str(image), "in red", "--n", "1", "--steps", "2", "--out", str(tmp_path), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p004-01-seed0.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope-123", "in red"], "unknown item id 'nope-123'"),
        (["missing/photo.jpg", "in red"], "image file not found"),
        (["p000", "in red", "--n", "9"], "n=9 is over the cap"),
        (["p000", "in red", "--steps", "500"], "steps=500 is over the cap"),
        (["p000", "in red", "--control", "depth"], "LOOKALIKE_DEPTH_MODEL"),
    ],
)
def test_vary_command_errors(cli_env, indexed, tmp_path, args, message):
    result = run(*args, "--out", str(tmp_path), "--data-dir", str(indexed[1]))
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_vary_command_refuses_unreadable_and_oversized_images(cli_env, indexed, tmp_path, monkeypatch):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    result = run(str(bad), "in red", "--data-dir", str(indexed[1]), "--out", str(tmp_path))
    assert result.exit_code == 2 and "bad.png" in result.stderr
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    monkeypatch.setenv("LOOKALIKE_MAX_IMAGE_PIXELS", "1000")
    result = run(str(big), "in red", "--data-dir", str(indexed[1]), "--out", str(tmp_path))
    assert result.exit_code == 2 and "big.png" in result.stderr
