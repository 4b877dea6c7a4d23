"""Model specs: parsing, open_clip's ``hf-hub:`` form read from a filled Hugging Face cache, and the query
language that reaches nllb-clip tokenizers, through the settings, the index command and the search engine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.tiny_hf import build_tiny_nllb_clip, fill_hub_cache, open_clip_hub_files
from typer.testing import CliRunner

from indexer import EncoderError, EncoderOptions, EncoderWeightsMissing, Settings, make_encoder
from indexer.specs import EncoderSpec, encoder_sources, parse_spec
from indexer.weights import HubRepo, OpenClipPretrained
from search import Query, SearchEngine, SearchSettings
from ui.cli import app

TEXTS = ["a red dress", "a blue shirt"]
HUB_ID = "lookalike-test/tiny-clip"


# -- parsing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("openclip:ViT-B-32/laion2b_s34b_b79k", EncoderSpec("openclip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("openclip:hf-hub:Marqo/marqo-fashionSigLIP", EncoderSpec("openclip", "hf-hub:Marqo/marqo-fashionSigLIP")),
        ("openclip:lookalike-mini/models/demo.pt", EncoderSpec("openclip", "lookalike-mini", "models/demo.pt")),
        ("hf:google/siglip-base-patch16-224", EncoderSpec("hf", "google/siglip-base-patch16-224")),
        ("st:all-MiniLM-L6-v2", EncoderSpec("st", "all-MiniLM-L6-v2")),
    ],
)
def test_specs_parse(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec, message",
    [
        ("openclip:hf-hub:Marqo", "expected openclip:hf-hub:ORG/NAME"),
        ("openclip:ViT-B-32", "expected openclip:ARCH/PRETRAINED_TAG"),
        ("hf:", "no backend prefix"),
        ("clip:ViT-B-32/openai", "unknown backend 'clip'; use openclip:, hf: or st:"),
    ],
)
def test_bad_specs_name_the_forms(spec, message):
    with pytest.raises(EncoderError, match=message):
        parse_spec(spec)


def test_multilingual_open_clip_models_pull_their_text_tower_config_and_tokenizer():
    sources = encoder_sources("openclip:xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k")
    assert sources[0] == OpenClipPretrained("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")
    assert [s.repo_id for s in sources[1:] if isinstance(s, HubRepo)] == ["xlm-roberta-base"]
    (nllb,) = encoder_sources("openclip:nllb-clip-base/v1")[1:]
    assert nllb.repo_id == "facebook/nllb-200-distilled-600M" and ("config.json",) in nllb.required


# -- open_clip hf-hub ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_weights(tmp_path_factory, tiny_clip_spec) -> Path:
    """The tiny CLIP checkpoint's weights as the safetensors file an open_clip hub repo holds."""
    from safetensors.torch import save_file

    checkpoint = Path(tiny_clip_spec.split("/", 1)[1])
    path = tmp_path_factory.mktemp("hub-weights") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(checkpoint)["state_dict"].items()}, path)
    return path


def test_open_clip_hub_model_loads_from_the_cache_through_open_clip(hub_cache, hub_weights, tiny_clip_spec, cpu):
    from conftest import TINY_CLIP

    fill_hub_cache(hub_cache, HUB_ID, open_clip_hub_files(TINY_CLIP, hub_weights), revision="ab" * 20)
    hub = make_encoder(f"openclip:hf-hub:{HUB_ID}", cpu)
    local = make_encoder(tiny_clip_spec, cpu)
    # The same weights as the checkpoint file: read from the cache, not random.
    np.testing.assert_allclose(hub.encode_texts(TEXTS), local.encode_texts(TEXTS), atol=1e-6)
    image = [Image.new("RGB", (40, 40), "red")]
    np.testing.assert_allclose(hub.encode_images(image), local.encode_images(image), atol=1e-6)
    assert hub.model_id == f"openclip:hf-hub:{HUB_ID}@{'ab' * 6}"


def test_open_clip_hub_config_without_weights_is_missing_not_random(hub_cache, cpu):
    from conftest import TINY_CLIP

    files = open_clip_hub_files(TINY_CLIP, Path("unused"))
    fill_hub_cache(hub_cache, HUB_ID, {"open_clip_config.json": files["open_clip_config.json"]})
    with pytest.raises(EncoderWeightsMissing, match=f"lookalike models pull openclip:hf-hub:{HUB_ID}"):
        make_encoder(f"openclip:hf-hub:{HUB_ID}", cpu)


@pytest.mark.parametrize(
    "spec, repo",
    [
        ("hf:lookalike-test/no-such-clip", "lookalike-test/no-such-clip"),
        ("openclip:hf-hub:Marqo/marqo-fashionSigLIP", "Marqo/marqo-fashionSigLIP"),
    ],
)
def test_weights_not_in_the_cache_fail_at_once_naming_the_pull_command(hub_cache, cpu, spec, repo):
    import open_clip  # noqa: F401  # imports are not what is timed
    from transformers import AutoModel, AutoProcessor  # noqa: F401

    started = time.perf_counter()
    with pytest.raises(EncoderWeightsMissing) as caught:
        make_encoder(spec, cpu)
    assert time.perf_counter() - started < 10
    assert f"{repo} not in the Hugging Face cache ({hub_cache})" in str(caught.value)
    assert f"`lookalike models pull {spec}`" in str(caught.value)


# -- query language --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nllb_spec(tmp_path_factory) -> str:
    return f"openclip:{build_tiny_nllb_clip(tmp_path_factory.mktemp('nllb-clip'))}/random"


def first_token(encoder) -> int:
    return int(encoder._tokenizer(["ein rotes kleid"])[0, 0])


def test_the_language_reaches_the_nllb_tokenizer(nllb_spec, cpu):
    german = make_encoder(nllb_spec, cpu, EncoderOptions(language="deu_Latn"))
    french = make_encoder(nllb_spec, cpu, EncoderOptions(language="fra_Latn"))
    default = make_encoder(nllb_spec, cpu)
    codes = german._tokenizer.tokenizer
    assert first_token(german) == codes.convert_tokens_to_ids("deu_Latn")
    assert first_token(french) == codes.convert_tokens_to_ids("fra_Latn")
    assert first_token(default) == codes.convert_tokens_to_ids("eng_Latn")  # the tokenizer's own default
    # Same weights, another language token: another vector.
    assert float(german.encode_texts(TEXTS[:1])[0] @ french.encode_texts(TEXTS[:1])[0]) < 0.999


def test_an_unknown_language_is_refused_naming_the_setting(nllb_spec, cpu):
    with pytest.raises(EncoderError) as caught:
        make_encoder(nllb_spec, cpu, EncoderOptions(language="german"))
    assert "unknown language 'german' (LOOKALIKE_QUERY_LANGUAGE)" in str(caught.value)
    assert "takes 202 codes, e.g. eng_Latn, deu_Latn, fra_Latn, spa_Latn, zho_Hans" in str(caught.value)


def test_models_without_a_language_ignore_it(tiny_clip_spec, cpu):
    plain = make_encoder(tiny_clip_spec, cpu)
    told = make_encoder(tiny_clip_spec, cpu, EncoderOptions(language="deu_Latn"))
    np.testing.assert_allclose(plain.encode_texts(TEXTS), told.encode_texts(TEXTS))


def test_the_setting_reaches_the_index_command_and_the_search_engine(
    nllb_spec, text_spec, catalog_path, tmp_path, monkeypatch
):
    assert Settings(query_language="").encoder_options() == EncoderOptions()
    assert Settings(query_language="deu_Latn").encoder_options() == EncoderOptions(language="deu_Latn")

    data = tmp_path / "data"
    monkeypatch.setenv("LOOKALIKE_QUERY_LANGUAGE", "deu_Latn")
    args = ["index", str(catalog_path), "--data-dir", str(data), "--model", nllb_spec, "--text-model", text_spec]
    result = CliRunner().invoke(app, [*args, "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 12
    monkeypatch.setenv("LOOKALIKE_QUERY_LANGUAGE", "fra_Latn")
    engine = SearchEngine(SearchSettings(data_dir=data, device="cpu"))
    try:
        assert engine.models.clip._tokenizer.tokenizer.src_lang == "fra_Latn"
        assert len(engine.search(Query(text="une robe rouge", k=3))) == 3
    finally:
        engine.close()
