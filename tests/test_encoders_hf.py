"""``hf:`` encoders (transformers CLIP, SigLIP, SigLIP 2) built from config, and indexing with one end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from indexer import Encoder, EncoderError, make_encoder, resolve_device
from search import Query, SearchEngine, SearchSettings
from ui.cli import app

TEXTS = ["a red dress", "a blue shirt for every day, a black bag, a yellow coat and a green shoe"]


@pytest.fixture(scope="module")
def encoders(tiny_hf_clip, tiny_hf_siglip, tiny_hf_siglip2, cpu):
    return {
        "clip": make_encoder(f"hf:{tiny_hf_clip}", cpu),
        "siglip": make_encoder(f"hf:{tiny_hf_siglip}", cpu),
        "siglip2": make_encoder(f"hf:{tiny_hf_siglip2}", cpu),
    }


def images() -> list[Image.Image]:
    return [Image.new("RGB", (48, 36), "red"), Image.new("RGB", (40, 40), (30, 60, 220))]


@pytest.mark.parametrize("family", ["clip", "siglip", "siglip2"])
def test_unit_float32_vectors_through_the_encoder_protocol(encoders, family):
    enc = encoders[family]
    assert isinstance(enc, Encoder) and enc.modalities == {"image", "text"}
    image_vecs, text_vecs = enc.encode_images(images()), enc.encode_texts(TEXTS)
    for vecs in (image_vecs, text_vecs):
        assert vecs.dtype == np.float32 and vecs.shape == (2, enc.dim)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(image_vecs[0], image_vecs[1]) and not np.allclose(text_vecs[0], text_vecs[1])
    assert enc.encode_images([]).shape == (0, enc.dim) and enc.encode_texts([]).shape == (0, enc.dim)
    # The index pipeline preprocesses in its pool, then encodes the stacked batch: the same vectors.
    stacked = enc.encode_pixels(torch.stack([enc.preprocess(im) for im in images()]))
    np.testing.assert_allclose(stacked, image_vecs, atol=1e-6)
    assert enc.image_size == 32 and enc.model_id.startswith("hf:model@")


@pytest.mark.parametrize("family", ["clip", "siglip", "siglip2"])
def test_a_text_encodes_the_same_alone_and_in_a_batch(encoders, family):
    # SigLIP pools its last position, so this holds only with its fixed-length padding; CLIP pads to the longest.
    enc = encoders[family]
    np.testing.assert_allclose(enc.encode_texts(TEXTS[:1])[0], enc.encode_texts(TEXTS)[0], atol=1e-5)


def test_clip_pads_to_the_longest_text_and_passes_the_mask(encoders, tiny_hf_clip):
    from transformers import AutoModel, AutoProcessor

    enc = encoders["clip"]
    assert (enc.text_rule.padding, enc.text_rule.max_length, enc.text_rule.attention_mask) == ("longest", 77, True)
    model, tokenizer = AutoModel.from_pretrained(tiny_hf_clip), AutoProcessor.from_pretrained(tiny_hf_clip).tokenizer
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    expected = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(TEXTS), expected, atol=1e-5)
    long_text = " ".join(["dress"] * 200)  # truncated at 77 tokens, not an error
    assert enc.encode_texts([long_text]).shape == (1, enc.dim)


def test_siglip_pads_to_64_tokens_without_a_mask_and_lowercases(encoders, tiny_hf_siglip):
    from transformers import AutoModel, AutoProcessor

    enc = encoders["siglip"]
    assert (enc.text_rule.padding, enc.text_rule.max_length, enc.text_rule.attention_mask) == ("max_length", 64, False)
    model = AutoModel.from_pretrained(tiny_hf_siglip)
    tokenizer = AutoProcessor.from_pretrained(tiny_hf_siglip).tokenizer
    ids = tokenizer([t.lower() for t in TEXTS], padding="max_length", max_length=64, return_tensors="pt").input_ids
    assert ids.shape == (2, 64)
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    expected = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(["A Red DRESS"]), enc.encode_texts(["a red dress"]), atol=1e-6)


def test_siglip2_naflex_pads_images_to_a_square_grid(encoders):
    enc = encoders["siglip2"]
    wide, tall = enc.preprocess(Image.new("RGB", (64, 16), "red")), enc.preprocess(Image.new("RGB", (16, 64), "red"))
    assert wide.shape == tall.shape == (16, 8 * 8 * 3)  # 16 patches of 8x8 RGB: one grid for every image
    assert enc._grid["spatial_shapes"].tolist() == [[4, 4]]


def test_bfloat16_gives_float32_unit_vectors_close_to_float32(tiny_hf_clip, encoders):
    enc = make_encoder(f"hf:{tiny_hf_clip}", resolve_device("cpu", "bfloat16"))
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    vecs, reference = enc.encode_texts(TEXTS), encoders["clip"].encode_texts(TEXTS)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert (vecs * reference).sum(axis=1).min() > 0.98


def test_a_model_that_is_no_clip_is_refused(tmp_path, cpu):
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderError, match="bert model; hf: encoders take CLIP, SigLIP and SigLIP 2"):
        make_encoder(f"hf:{tmp_path / 'bert'}", cpu)


def test_index_and_search_a_catalog_with_an_hf_model(tmp_path, catalog_path, text_spec, tiny_hf_clip):
    model, data = tiny_hf_clip, tmp_path / "data"
    args = ["index", str(catalog_path), "--data-dir", str(data), "--model", f"hf:{model}", "--text-model", text_spec]
    result = CliRunner().invoke(app, [*args, "-q", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["new"] == 12 and report["failed"] == 0
    engine = SearchEngine(SearchSettings(data_dir=data, device="cpu"))
    try:
        assert engine.models.clip.spec == f"hf:{model}"
        hits = engine.search(Query(like="p003", k=3))
        assert len(hits) == 3 and "p003" not in [h.id for h in hits]
        # As typed: understood facets (colour red, category dress) would narrow the page to the red dresses.
        assert len(engine.search(Query(text="red dress", k=5, literal=True))) == 5
    finally:
        engine.close()
    # A re-run finds nothing changed: the model id is stable.
    again = CliRunner().invoke(app, [*args, "-q", "--json"])
    assert json.loads(again.stdout)["unchanged"] == 12
