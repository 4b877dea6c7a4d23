"""``lookalike models list`` and ``pull`` against a Hugging Face cache filled by hand, and the serving paths
(ask, vary, the API's VLM re-ranker, the UI) failing at once, naming the pull command, when weights are missing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image
from support.tiny_hf import fill_hub_cache, open_clip_hub_files
from typer.testing import CliRunner

from indexer import ImagePolicy, IndexManifest, IndexOptions, index_catalog, open_store, read_catalog
from ui.cli import app

CLIP = "openclip:hf-hub:lookalike-test/tiny-clip"
SD = "diffusers:lookalike-test/tiny-sd"
VLM = "hf:lookalike-test/tiny-vlm"


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def configured(hub_cache, monkeypatch, tmp_path):
    """Settings naming a CLIP model that is in the cache, a VLM that is not, and a generator whose base pipeline
    is there but whose ControlNet is not (its IP-Adapter is turned off)."""
    from conftest import TINY_CLIP

    fill_hub_cache(hub_cache, "lookalike-test/tiny-clip", open_clip_hub_files(TINY_CLIP, _file(tmp_path, b"w")))
    fill_hub_cache(hub_cache, "lookalike-test/tiny-sd", pipeline_files())
    for key, value in {"CLIP_MODEL": CLIP, "VLM": VLM, "GENERATOR": SD, "IP_ADAPTER": "none"}.items():
        monkeypatch.setenv(f"LOOKALIKE_{key}", value)
    return tmp_path / "data"


def pipeline_files() -> dict[str, str | bytes]:
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "image_encoder": [None, None],
    }
    # No safety_checker folder: the loader passes safety_checker=None, so it is never needed.
    return {
        "model_index.json": json.dumps(index),
        "unet/config.json": "{}",
        "unet/diffusion_pytorch_model.safetensors": b"weights",
        "tokenizer/vocab.json": "{}",
    }


def _file(root: Path, data: bytes) -> Path:
    path = root / "weights.bin"
    path.write_bytes(data)
    return path


def by_role(report: dict) -> dict[str, dict]:
    return {row["role"]: row for row in report["models"]}


def test_list_shows_what_is_present_and_what_is_missing(configured, hub_cache):
    result = cli("models", "list", "--data-dir", str(configured), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cache"] == str(hub_cache)
    rows = by_role(report)
    assert rows["clip"]["spec"] == CLIP and rows["clip"]["present"]
    assert rows["text"]["present"] and rows["text"]["sources"][0]["kind"] == "local"
    assert rows["vlm"] == {**rows["vlm"], "present": False, "missing": ["lookalike-test/tiny-vlm"]}
    # The base pipeline is here; its family's canny ControlNet is not.
    generator = rows["generator"]
    assert [s["source"] for s in generator["sources"]] == [
        "lookalike-test/tiny-sd",
        "lllyasviel/control_v11p_sd15_canny",
    ]
    assert generator["missing"] == ["lllyasviel/control_v11p_sd15_canny"]

    text = cli("models", "list", "--data-dir", str(configured)).stdout
    assert f"clip       present  {CLIP}" in text and f"vlm        missing  {VLM}" in text
    assert "lookalike models pull SPEC" in text


def test_list_reports_the_index_models_unless_a_setting_names_others(configured, monkeypatch):
    IndexManifest(clip_model="openclip:ViT-B-32/openai", text_model="st:all-MiniLM-L6-v2", store="edge:x").save(
        configured
    )
    rows = by_role(json.loads(cli("models", "list", "--data-dir", str(configured), "--json").stdout))
    assert rows["clip"]["spec"] == CLIP  # LOOKALIKE_CLIP_MODEL names it, as `lookalike index` would use it
    monkeypatch.delenv("LOOKALIKE_CLIP_MODEL")
    rows = by_role(json.loads(cli("models", "list", "--data-dir", str(configured), "--json").stdout))
    assert rows["clip"]["spec"] == "openclip:ViT-B-32/openai" and not rows["clip"]["present"]


def test_pull_offline_reports_what_is_here_and_refuses_the_rest(configured):
    result = cli("models", "pull", CLIP, "--data-dir", str(configured), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pulled"] == [
        {"spec": CLIP, "source": "lookalike-test/tiny-clip", "status": "present"}
    ]
    result = cli("models", "pull", VLM, "--data-dir", str(configured))
    assert result.exit_code == 2
    assert "cannot download lookalike-test/tiny-vlm: downloads are off (HF_HUB_OFFLINE=1)" in result.output
    # No spec: every configured one, so the missing ControlNet stops it.
    result = cli("models", "pull", "--data-dir", str(configured))
    assert result.exit_code == 2 and "lookalike-test/tiny-vlm" in result.output


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip:ViT-B-32", "cannot read model spec 'clip:ViT-B-32'"),
        ("openclip:ViT-B-32/./no-such.pt", "no-such.pt does not exist; a local path is used as it is"),
    ],
)
def test_pull_refuses_what_it_cannot_fetch(configured, spec, message):
    result = cli("models", "pull", spec, "--data-dir", str(configured))
    assert result.exit_code == 2 and message in result.output


def test_pull_fetches_what_the_loader_reads_and_falls_back_to_bin_weights(hub_cache, monkeypatch, tmp_path):
    """Against a stand-in hub: the files snapshot_download would fetch, filtered by the patterns asked for."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    remote = {
        "lookalike-test/remote-clip": ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"],
        "lookalike-test/bin-only": ["config.json", "pytorch_model.bin", "tokenizer.json"],
    }
    real = huggingface_hub.snapshot_download
    asked: list[tuple[str, list[str] | None]] = []

    def fake(repo_id, *, local_files_only=False, allow_patterns=None, ignore_patterns=None, **kwargs):
        if local_files_only:
            return real(repo_id, local_files_only=True, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        asked.append((repo_id, allow_patterns))
        files = filter_repo_objects(remote[repo_id], allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        return str(fill_hub_cache(hub_cache, repo_id, {name: b"x" for name in files}))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = cli("models", "pull", "hf:lookalike-test/remote-clip", "hf:lookalike-test/bin-only", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert [d["status"] for d in json.loads(result.stdout)["pulled"]] == ["downloaded", "downloaded"]
    snapshot = hub_cache / "models--lookalike-test--remote-clip" / "snapshots" / ("0" * 40)
    assert sorted(p.name for p in snapshot.rglob("*") if p.is_file()) == ["config.json", "model.safetensors"]
    bin_only = hub_cache / "models--lookalike-test--bin-only" / "snapshots" / ("0" * 40)
    assert (bin_only / "pytorch_model.bin").is_file()
    assert [repo for repo, _ in asked] == [
        "lookalike-test/remote-clip",
        "lookalike-test/bin-only",
        "lookalike-test/bin-only",
    ]
    again = cli("models", "pull", "hf:lookalike-test/remote-clip", "-q", "--json")
    assert [d["status"] for d in json.loads(again.stdout)["pulled"]] == ["up to date"]


# -- serving never downloads -----------------------------------------------------------------------------------------


@pytest.fixture
def downloads_on(monkeypatch):
    """As on a user's machine: downloads allowed until a serving command turns them off."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def test_ask_turns_downloads_off_and_names_the_pull_command(configured, downloads_on, tmp_path):
    image = tmp_path / "q.png"
    Image.new("RGB", (32, 32), "red").save(image)
    started = time.perf_counter()
    result = cli("ask", "What colour is it?", "--image", str(image), "--data-dir", str(configured))
    assert time.perf_counter() - started < 10
    assert result.exit_code == 2
    assert f"`lookalike models pull {VLM}`" in result.output and "LOOKALIKE_VLM" in result.output
    assert downloads_on.HF_HUB_OFFLINE is True


def test_vary_with_a_missing_generator_names_the_pull_command(hub_cache, downloads_on, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")
    image = tmp_path / "q.png"
    Image.new("RGB", (32, 32), "red").save(image)
    started = time.perf_counter()
    result = cli("vary", str(image), "in blue", "--generator", SD, "--data-dir", str(tmp_path / "data"))
    assert time.perf_counter() - started < 10
    assert result.exit_code == 2
    assert "lookalike-test/tiny-sd not in the Hugging Face cache" in result.output
    assert f"`lookalike models pull {SD}`" in result.output
    assert downloads_on.HF_HUB_OFFLINE is True


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, models):
    from conftest import make_catalog

    root = tmp_path_factory.mktemp("weights-index")
    store = open_store(f"edge:{root / 'data' / 'store'}")
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
    catalog = read_catalog(make_catalog(root / "catalog", n=6))
    index_catalog(catalog, store, models, IndexOptions(batch_size=8), policy, root / "errors.jsonl")
    yield root / "data", store
    store.close()


def test_the_api_answers_503_when_the_vlm_reranker_has_no_weights(small_index, models, hub_cache):
    from fastapi.testclient import TestClient

    from search import SearchEngine, SearchSettings
    from search.api import create_app
    from search.jobs import JobRunner
    from vlm import VLMSettings, vlm_reranker

    data, store = small_index
    vlm_settings = VLMSettings(data_dir=data, vlm=VLM, vlm_cache=False, device="cpu")
    engine = SearchEngine(
        SearchSettings(data_dir=data, device="cpu"),
        store=store,
        models=models,
        rerankers={"vlm": vlm_reranker(vlm_settings)},
    )
    client = TestClient(create_app(engine, JobRunner(engine)))
    assert client.post("/search", json={"text": "red dress", "k": 3}).status_code == 200
    started = time.perf_counter()
    response = client.post("/search", json={"text": "red dress", "k": 3, "rerank": "vlm"})
    assert time.perf_counter() - started < 10
    assert response.status_code == 503
    assert response.json()["error"] == "weights_missing"
    assert f"`lookalike models pull {VLM}`" in response.json()["detail"]


def test_the_ui_shows_the_pull_command(hub_cache):
    import gradio as gr

    from generation import GeneratorSettings, make_generator
    from indexer import resolve_device
    from ui.app import friendly

    @friendly
    def create_click():
        make_generator(GeneratorSettings(generator=SD), resolve_device("cpu"))

    with pytest.raises(gr.Error) as caught:
        create_click()
    assert f"lookalike models pull {SD}" in str(caught.value.message)
