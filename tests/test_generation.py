"""Generation through the real ``diffusers:PATH`` loader, on tiny random SD 1.5 + ControlNet + IP-Adapter folders."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from support.random_diffusers import write_random_sd15

from generation import (
    GeneratorError,
    GeneratorSettings,
    RequestError,
    VariantCache,
    VaryRequest,
    make_generator,
    vary,
)
from generation.cache import META
from generation.conditions import canny_condition, square_reference
from generation.diffusers_backend import run_with_oom_fallback, weights_id
from generation.generator import fit_size


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return write_random_sd15(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def cpu_device():
    from indexer import resolve_device

    return resolve_device("cpu")


def settings_for(tiny_sd, tmp_path, **overrides) -> GeneratorSettings:
    return GeneratorSettings(data_dir=tmp_path, **{**tiny_sd.settings(), "gen_resolution": 64, **overrides})


@pytest.fixture(scope="session")
def generator(tiny_sd, cpu_device, tmp_path_factory):
    """One generator for the module: its pipelines load once and are reused, as in the app."""
    return make_generator(settings_for(tiny_sd, tmp_path_factory.mktemp("gen-data")), cpu_device)


def product(size=(64, 64), colour="red") -> Image.Image:
    img = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(img).rectangle([w // 5, h // 5, w - w // 5, h - h // 5], fill=colour)
    return img


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def request(**kw) -> VaryRequest:
    return VaryRequest(**{"image": product(), "text": "in navy blue leather", "n": 2, "steps": 2, **kw})


# -- the pipeline ------------------------------------------------------------------------------------------


def test_variants_have_the_requested_count_size_and_seeds(generator):
    out = generator.generate(request(n=3, seed=7))
    assert [g.seed for g in out] == [7, 8, 9]
    assert all(g.image.size == (64, 64) and g.image.mode == "RGB" for g in out)
    assert not any(g.flagged for g in out)
    # Each seed draws other noise: no two variants alike.
    assert all(np.abs(pixels(a.image) - pixels(b.image)).max() > 10 for a, b in zip(out, out[1:], strict=False))


def test_same_seed_same_pixels(generator):
    first = generator.generate(request(seed=11))
    again = generator.generate(request(seed=11))
    other = generator.generate(request(seed=12))
    assert all(np.array_equal(pixels(a.image), pixels(b.image)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(pixels(first[0].image), pixels(other[0].image))
    # A variant is reproducible from its seed alone, whatever batch it was made in (up to rounding).
    single = generator.generate(request(seed=12, n=1))[0]
    assert np.abs(pixels(single.image) - pixels(first[1].image)).max() <= 2


def test_source_aspect_is_kept(generator):
    out = generator.generate(request(image=product((96, 48)), resolution=128, n=1))
    assert out[0].image.size == (128, 64)
    assert fit_size(300, 500, 512) == (320, 512)
    assert fit_size(10, 1000, 512) == (64, 512)


def test_structure_and_style_knobs_reach_the_pipeline(generator):
    base = pixels(generator.generate(request(n=1, structure=0.8, style=0.6))[0].image)
    no_structure = pixels(generator.generate(request(n=1, structure=0.0, style=0.6))[0].image)
    no_style = pixels(generator.generate(request(n=1, structure=0.8, style=0.0))[0].image)
    assert np.abs(base - no_structure).max() > 0
    assert np.abs(base - no_style).max() > 0


def test_control_kinds_share_one_loaded_pipeline(generator):
    none = generator.generate(request(control="none", n=1))
    canny = generator.generate(request(control="canny", n=1))
    assert none[0].image.size == canny[0].image.size == (64, 64)
    pipes = generator._pipes
    assert type(pipes["none"]).__name__ == "StableDiffusionPipeline"
    assert type(pipes["canny"]).__name__ == "StableDiffusionControlNetPipeline"
    assert pipes["none"].unet is pipes["canny"].unet  # loaded once
    assert type(pipes["canny"].scheduler).__name__ == "DPMSolverMultistepScheduler"
    d = generator.describe(request(control="none"))
    assert d["structure"] is None and d["models"]["controlnet"] is None


def test_description_names_every_setting_and_model(generator, tiny_sd):
    d = generator.describe(request(seed=5))
    assert d["family"] == "sd15" and d["backend"] == "diffusers"
    assert d["models"]["base"] == weights_id(str(tiny_sd.base)) and d["models"]["base"].startswith("base@")
    assert d["models"]["ip_adapter"].endswith("models/ip-adapter_sd15.safetensors")
    assert d["models"]["controlnet"].startswith("controlnet-canny@")
    assert {d["seed"], d["steps"], d["width"], d["height"], d["structure"], d["style"]} == {5, 2, 64, 0.8, 0.6}
    assert d["negative_prompt"] and d["scheduler"] == "dpm" and d["dtype"] == "float32"


def test_canny_condition_and_reference():
    edges = canny_condition(product((80, 40)), (128, 64))
    arr = np.asarray(edges)
    assert edges.size == (128, 64) and arr.shape == (64, 128, 3)
    assert arr.max() == 255 and (arr > 0).mean() < 0.2  # edges only where the rectangle's border is
    assert arr[32, 64].max() == 0  # inside the rectangle: flat, no edge
    ref = square_reference(product((80, 40)))
    assert ref.size == (80, 80) and ref.getpixel((40, 5)) == (255, 255, 255)


# -- cache -------------------------------------------------------------------------------------------------


class Counting:
    def __init__(self, inner):
        self.inner, self.spec, self.calls = inner, inner.spec, 0

    def describe(self, req):
        return self.inner.describe(req)

    def generate(self, req):
        self.calls += 1
        return self.inner.generate(req)


def test_second_request_is_served_from_the_cache(generator, tmp_path):
    counting = Counting(generator)
    cache = VariantCache(tmp_path / "variants")
    first = vary(counting, request(seed=3), cache=cache)
    second = vary(counting, request(seed=3), cache=cache)
    assert counting.calls == 1 and not first.cached and second.cached
    for a, b in zip(first.variants, second.variants, strict=True):
        assert a.path == b.path and a.path.is_file() and a.seed == b.seed
        assert np.array_equal(pixels(a.image), pixels(b.image))
    # Anything that changes the pixels is another entry.
    for changed in (request(seed=4), request(seed=3, text="in red suede"), request(seed=3, structure=0.5)):
        assert not vary(counting, changed, cache=cache).cached
    assert counting.calls == 4
    assert second.settings["seed"] == 3 and second.settings["models"]["base"].startswith("base@")


def test_the_cache_evicts_the_least_recently_used_entries_past_its_limit(generator, tmp_path):
    probe = VariantCache(tmp_path / "probe")
    vary(generator, request(seed=30, n=1), cache=probe)
    entry_bytes = sum(f.stat().st_size for f in next((tmp_path / "probe").glob("*/*")).iterdir())
    cache = VariantCache(tmp_path / "variants", max_bytes=int(entry_bytes * 2.5))  # room for two entries
    first = vary(generator, request(seed=31, n=1), cache=cache)
    second = vary(generator, request(seed=32, n=1), cache=cache)
    # Recency is the entry's mtime. Dated an hour and half an hour back, the first is older than the second
    # whatever the file system's mtime resolution or the time between the steps.
    now = time.time()
    os.utime(first.variants[0].path.parent / META, (now - 3600, now - 3600))
    os.utime(second.variants[0].path.parent / META, (now - 1800, now - 1800))
    assert vary(generator, request(seed=31, n=1), cache=cache).cached  # the hit makes the first the most recent
    vary(generator, request(seed=33, n=1), cache=cache)  # over the limit: the second goes
    assert first.variants[0].path.is_file() and not second.variants[0].path.exists()
    assert len(list((tmp_path / "variants").glob("*/*/meta.json"))) == 2
    assert not vary(generator, request(seed=32, n=1), cache=cache).cached


def test_a_half_written_cache_entry_is_a_miss(generator, tmp_path):
    cache = VariantCache(tmp_path / "variants")
    result = vary(generator, request(seed=21, n=1), cache=cache)
    (result.variants[0].path.parent / "meta.json").unlink()
    assert not vary(generator, request(seed=21, n=1), cache=cache).cached


# -- limits and errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n": 9}, "n=9 is over the cap.*LOOKALIKE_MAX_VARIANTS"),
        ({"n": 0}, "n=0"),
        ({"steps": 51}, "steps=51 is over the cap.*LOOKALIKE_MAX_STEPS"),
        ({"resolution": 2048}, "resolution 2048 is over the cap.*LOOKALIKE_MAX_RESOLUTION"),
        ({"text": "  "}, "give the change"),
        ({"structure": -1}, "structure must be between"),
        ({"control": "sketch"}, "unknown control 'sketch'"),
    ],
)
def test_requests_over_the_caps_are_refused(generator, kw, message):
    with pytest.raises(RequestError, match=message):
        generator.generate(request(**kw))
    with pytest.raises(RequestError, match=message):
        vary(generator, request(**kw))


def test_depth_without_a_depth_model_names_the_setting(generator):
    with pytest.raises(GeneratorError, match="LOOKALIKE_DEPTH_MODEL"):
        generator.generate(request(control="depth"))


def test_missing_weights_name_the_setting_and_what_was_tried(tiny_sd, tmp_path, cpu_device):
    with pytest.raises(GeneratorError) as err:
        make_generator(GeneratorSettings(data_dir=tmp_path), cpu_device)
    text = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in text and "LOOKALIKE_GENERATOR" in text
    assert "local folder" in text

    with pytest.raises(GeneratorError, match="is not a folder"):
        make_generator(GeneratorSettings(generator=f"diffusers:{tmp_path / 'nope'}"), cpu_device)

    missing = tmp_path / "no-controlnet"
    gen = make_generator(settings_for(tiny_sd, tmp_path, controlnet=str(missing)), cpu_device)
    with pytest.raises(GeneratorError) as err:
        gen.generate(request())
    assert "LOOKALIKE_CONTROLNET" in str(err.value) and str(missing) in str(err.value)

    gen = make_generator(settings_for(tiny_sd, tmp_path, ip_adapter_weight="ip-adapter_sdxl.safetensors"), cpu_device)
    with pytest.raises(GeneratorError, match="IP-Adapter.*ip-adapter_sdxl.safetensors.*LOOKALIKE_IP_ADAPTER"):
        gen.generate(request(control="none"))


def test_settings_that_cannot_be_honoured_fail_clearly(tiny_sd, tmp_path, cpu_device):
    with pytest.raises(GeneratorError, match="no backend prefix"):
        make_generator(GeneratorSettings(generator="sd15"), cpu_device)
    with pytest.raises(GeneratorError, match="unknown backend 'comfy'"):
        make_generator(GeneratorSettings(generator="comfy:x"), cpu_device)
    with pytest.raises(GeneratorError, match="no safety checker for sdxl"):
        make_generator(settings_for(tiny_sd, tmp_path, safety_checker=True, generator_family="sdxl"), cpu_device)
    gen = make_generator(settings_for(tiny_sd, tmp_path, safety_checker=True), cpu_device)
    with pytest.raises(GeneratorError, match="has no safety_checker folder"):
        gen.generate(request())
    try:
        import peft  # noqa: F401
    except ImportError:
        gen = make_generator(settings_for(tiny_sd, tmp_path, lora=[str(tmp_path / "style.safetensors")]), cpu_device)
        with pytest.raises(GeneratorError, match="needs the peft package"):
            gen.generate(request())


def test_out_of_memory_retries_once_with_offload_then_fails_clearly():
    info = {"n": 4, "width": 512, "height": 512}
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "images"

    offloads = []
    assert run_with_oom_fallback(flaky, lambda: offloads.append(1) or True, info) == "images"
    assert len(attempts) == 2 and len(offloads) == 1

    def always():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(GeneratorError, match="even with model CPU offload.*4 variant.*512x512"):
        run_with_oom_fallback(always, lambda: True, info)
    with pytest.raises(GeneratorError, match="CPU offload already on"):
        run_with_oom_fallback(always, lambda: False, info)


@pytest.fixture(scope="session")
def base_with_safety_checker(tiny_sd, tmp_path_factory):
    """The tiny base folder plus a tiny safety checker that flags every image."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd.base)
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        vision_config={**vision, "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1},
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # below any cosine: every image is flagged
    pipe.register_modules(safety_checker=checker, feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    target = tmp_path_factory.mktemp("sd-with-checker")
    pipe.save_pretrained(target)
    return target


def test_safety_checker_withholds_flagged_variants(tiny_sd, base_with_safety_checker, tmp_path, cpu_device):
    settings = settings_for(tiny_sd, tmp_path, generator=f"diffusers:{base_with_safety_checker}", safety_checker=True)
    gen = make_generator(settings, cpu_device)
    out = gen.generate(request(n=2))
    assert [g.flagged for g in out] == [True, True]
    assert all(np.asarray(g.image).max() == 0 for g in out)  # diffusers blanks what it flags
    assert gen.describe(request())["safety_checker"] is True
    result = vary(gen, request(n=2))
    assert all(v.flagged and v.lookalikes == [] for v in result.variants)
