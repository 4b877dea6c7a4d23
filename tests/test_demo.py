"""The demo catalog (real Fashion-MNIST photos), training, and the eval harness end to end."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from indexer import read_catalog
from indexer.demo_catalog import (
    COLOUR_TABLE,
    FASHION_MNIST_DIR,
    DemoCatalogConfig,
    DemoDatasetMissing,
    build_demo_catalog,
    write_tag_vocab,
)
from indexer.tags import TagVocab
from indexer.training import TrainConfig, TrainError, encode_texts_grouped, train_clip

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="needs Debian dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "catalog"
    return build_demo_catalog(out, DemoCatalogConfig(items=48, seed=3, split="test", image_size=48))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_catalog_is_deterministic_for_a_seed(small_catalog, tmp_path):
    again = build_demo_catalog(tmp_path / "again", DemoCatalogConfig(items=48, seed=3, split="test", image_size=48))
    assert rows(again) == rows(small_catalog)
    a = np.asarray(Image.open(small_catalog.parent / "images" / "test-00007.png"))
    b = np.asarray(Image.open(again.parent / "images" / "test-00007.png"))
    assert np.array_equal(a, b)
    other = build_demo_catalog(tmp_path / "other", DemoCatalogConfig(items=48, seed=4, split="test", image_size=48))
    assert rows(other) != rows(small_catalog)


def test_catalog_reads_back_with_typed_payload(small_catalog):
    catalog = read_catalog(small_catalog)
    assert len(catalog.items) == 48
    assert catalog.fields["price"] == "float" and catalog.fields["category"] == "keyword"
    item = catalog.items[0]
    assert {"category", "colour", "pattern", "price", "brand", "in_stock"} <= set(item.payload)
    assert Path(item.image).is_file()


def test_pixels_carry_the_named_colour(small_catalog):
    """The garment's dominant hue is the catalog colour's hue (checked on the generated pixels)."""
    table = {name: base for name, base, _ in COLOUR_TABLE}
    checked = 0
    for row in rows(small_catalog):
        if row["colour"] in {"black", "brown"}:
            continue  # hue is meaningless for near-black, and brown shares orange's hue
        px = np.asarray(Image.open(small_catalog.parent / row["image"]).convert("RGB"), dtype=np.float32) / 255
        flat = px.reshape(-1, 3)
        sat = flat.max(1) - flat.min(1)
        garment = flat[sat > 0.25]
        assert len(garment) > 20, row["id"]
        hues = np.array([colorsys.rgb_to_hsv(*p)[0] for p in garment])
        expected = colorsys.rgb_to_hsv(*(np.array(table[row["colour"]]) / 255))[0]
        diff = np.minimum(np.abs(hues - expected), 1 - np.abs(hues - expected))
        assert np.median(diff) < 0.04, (row["id"], row["colour"])
        checked += 1
    assert checked >= 20


def test_test_split_uses_only_t10k_and_train_differs(tmp_path):
    train = build_demo_catalog(tmp_path / "train", DemoCatalogConfig(items=5, split="train", image_size=32))
    assert all(r["id"].startswith("train-") for r in rows(train))
    test = build_demo_catalog(tmp_path / "test", DemoCatalogConfig(items=5, split="test", image_size=32))
    assert all(r["id"].startswith("test-") for r in rows(test))


def test_interrupted_build_resumes(tmp_path):
    config = DemoCatalogConfig(items=12, split="test", image_size=32)
    full = build_demo_catalog(tmp_path / "a", config)
    # Simulate a kill: the catalog file (written last) is missing and two images are gone or half-written.
    full.unlink()
    (tmp_path / "a" / "images" / "test-00003.png").unlink()
    (tmp_path / "a" / "images" / "test-00004.png").write_bytes(b"")
    resumed = build_demo_catalog(tmp_path / "a", config)
    assert rows(resumed) == rows(build_demo_catalog(tmp_path / "b", config))
    assert Image.open(tmp_path / "a" / "images" / "test-00004.png").size == (32, 32)


def test_missing_dataset_names_the_debian_package(tmp_path):
    with pytest.raises(DemoDatasetMissing, match="apt-get install dataset-fashion-mnist"):
        build_demo_catalog(tmp_path / "x", DemoCatalogConfig(items=3, dataset_dir=tmp_path / "nowhere"))


def test_tag_vocab_loads(tmp_path):
    vocab = TagVocab.load(write_tag_vocab(tmp_path / "tags.yaml"))
    names = {s.name: s for s in vocab.sets}
    assert set(names) == {"colour", "category", "pattern"} and "teal" in names["colour"].labels


# -- training ------------------------------------------------------------------------------------------


def test_two_step_train_gives_a_checkpoint_that_loads_through_the_encoder_spec(
    small_catalog, tmp_path, tiny_clip_spec, cpu
):
    from indexer import make_encoder

    out = tmp_path / "models" / "model.pt"  # a folder that does not exist yet
    report = train_clip(
        TrainConfig(catalog=small_catalog, out=out, model="lookalike-tiny", epochs=1, batch_size=24, save_every=1)
    )
    assert report.steps == 2 and out.is_file() and report.spec == f"openclip:lookalike-tiny/{out}"
    assert np.isfinite(report.final_loss)
    encoder = make_encoder(report.spec, cpu)
    vecs = encoder.encode_texts(["red dress"])
    assert vecs.shape == (1, 32) and abs(float(np.linalg.norm(vecs)) - 1) < 1e-4
    # The weights changed from the random initialisation: training really happened.
    torch.manual_seed(0)
    fresh = open_clip.create_model("lookalike-tiny").state_dict()
    trained = torch.load(out, map_location="cpu")["state_dict"]
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_training_resumes_from_its_saved_state(small_catalog, tmp_path, tiny_clip_spec):
    out = tmp_path / "model.pt"
    config = TrainConfig(catalog=small_catalog, out=out, model="lookalike-tiny", epochs=2, batch_size=24, save_every=1)
    first = train_clip(config)
    assert first.resumed_from_step == 0 and first.steps == 4
    # A later run of the same command finds the state of the finished run and has nothing left to do.
    again = train_clip(config)
    assert again.resumed_from_step == 4
    # A longer run (another config) starts afresh rather than mixing states.
    longer = train_clip(TrainConfig(catalog=small_catalog, out=out, model="lookalike-tiny", epochs=3, batch_size=24))
    assert longer.resumed_from_step == 0 and longer.steps == 6


def test_grouped_text_encoding_gives_the_padded_batch_vectors(tiny_clip_spec):
    torch.manual_seed(0)
    model = open_clip.create_model("lookalike-tiny")
    tokenizer = open_clip.get_tokenizer("lookalike-tiny")
    texts = ["red dress", "A blue striped shirt with a checked collar and long sleeves, by Kestrel.", "bag", "tee"]
    tokens = tokenizer(texts * 3)
    grouped = encode_texts_grouped(model, tokens)
    assert grouped.shape == (12, 32)
    assert torch.allclose(grouped, model.encode_text(tokens), atol=1e-5)
    # Gradients reach the text tower through both groups.
    grouped.sum().backward()
    assert model.token_embedding.weight.grad is not None and model.token_embedding.weight.grad.abs().sum() > 0


def test_train_errors(small_catalog, tmp_path):
    with pytest.raises(TrainError, match="precision 'float16'"):
        train_clip(
            TrainConfig(catalog=small_catalog, out=tmp_path / "m.pt", model="lookalike-tiny", precision="float16")
        )
    with pytest.raises(TrainError, match="unknown architecture"):
        train_clip(TrainConfig(catalog=small_catalog, out=tmp_path / "m.pt", model="no-such-arch"))
    with pytest.raises(TrainError, match="does not exist"):
        train_clip(TrainConfig(catalog=small_catalog, out=tmp_path / "m.pt", model="openclip:ViT-B-32/missing.pt"))


# -- evaluation ----------------------------------------------------------------------------------------


def test_eval_end_to_end_on_a_small_index(small_catalog, tmp_path, tiny_clip_spec, text_spec):
    from typer.testing import CliRunner

    from ui.cli import app

    runner = CliRunner()
    data = tmp_path / "index"
    tags = write_tag_vocab(tmp_path / "tags.yaml")
    args = ["index", str(small_catalog), "--data-dir", str(data), "--model", tiny_clip_spec, "--tags", str(tags), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(data), "--per-type", "10", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((data / "eval.json").read_text())
    types = set(report["metrics"])
    assert {"image: same category", "text fusion: rrf", "text fusion: calibrated", "image fusion: rrf"} <= types
    # Catalog-item queries are repeated as uploads of the item's photo (pixels only).
    assert "image: same category [upload]" in types
    assert ("composed (structured)" in types) == ("composed (structured) [upload]" in types)
    assert "composed (arithmetic) [upload]" not in types
    for metrics in report["metrics"].values():
        assert 0 <= metrics["p@10"] <= 1 and 0 <= metrics["mrr"] <= 1 and metrics["n"] >= 1
    assert set(report["tagging"]) == {"colour", "category", "pattern"}
    assert "P@10" in result.output and "zero-shot tagging accuracy" in result.output
    # A query file works on any catalog.
    qfile = tmp_path / "queries.jsonl"
    first = rows(small_catalog)[0]
    qfile.write_text(json.dumps({"text": first["title"], "relevant": [first["id"]], "type": "known item"}) + "\n")
    result = runner.invoke(app, ["eval", str(data), "--queries", str(qfile), "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert "known item" in json.loads(result.stdout)["metrics"]
    qfile.write_text("{not json\n")
    result = runner.invoke(app, ["eval", str(data), "--queries", str(qfile), "-q"])
    assert result.exit_code == 2 and "queries.jsonl:1" in result.output


def test_demo_starts_the_ui_command():
    """`make demo` ends in the UI: the command it calls must exist with the arguments it passes."""
    import inspect

    from ui.cli_serve import ui_command

    assert {"data_dir", "host", "port"} <= set(inspect.signature(ui_command).parameters)
