"""The indexing pipeline on a real edge store with a tiny CLIP and the real MiniLM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_catalog
from PIL import Image

from indexer import (
    ImagePolicy,
    IndexOptions,
    SchemaMismatch,
    Tagger,
    TagVocab,
    build_models,
    index_catalog,
    open_store,
    read_catalog,
)
from indexer.store import HASH_KEY, ID_KEY

POLICY = ImagePolicy(max_bytes=5_000_000, max_pixels=4_000_000, url_timeout=2.0, allow_private_urls=False)
OPTIONS = IndexOptions(batch_size=4, workers=2, prefetch_batches=2)


def run_index(catalog: Path, data_dir: Path, models, options=OPTIONS):
    store = open_store(f"edge:{data_dir / 'store'}")
    try:
        report = index_catalog(read_catalog(catalog), store, models, options, POLICY, data_dir / "errors.jsonl")
        return report, store.count()
    finally:
        store.close()


def test_index_then_rerun_is_incremental(tmp_path, catalog_path, models):
    report, count = run_index(catalog_path, tmp_path / "data", models)
    assert (report.new, report.updated, report.unchanged, report.failed) == (12, 0, 0, 0)
    assert count == 12
    again, count = run_index(catalog_path, tmp_path / "data", models)
    assert (again.new, again.updated, again.unchanged, again.embedded) == (0, 0, 12, 0)
    assert again.summary().startswith("0 new, 0 updated, 12 unchanged")
    assert count == 12


def test_changing_one_item_re_embeds_exactly_one(tmp_path, catalog_path, models):
    run_index(catalog_path, tmp_path / "data", models)
    img = catalog_path.parent / "images" / "p003.jpg"
    Image.new("RGB", (48, 48), (200, 100, 0)).save(img)
    report, count = run_index(catalog_path, tmp_path / "data", models)
    assert (report.new, report.updated, report.unchanged) == (0, 1, 11)
    # A text-only edit also counts as a change.
    rows = [json.loads(line) for line in catalog_path.read_text().splitlines()]
    rows[5]["title"] = "a brand new title"
    catalog_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, _ = run_index(catalog_path, tmp_path / "data", models)
    assert (report.updated, report.unchanged) == (1, 11)


def test_prune_deletes_items_gone_from_the_catalog(tmp_path, catalog_path, models):
    run_index(catalog_path, tmp_path / "data", models)
    rows = catalog_path.read_text().splitlines()[:9]
    catalog_path.write_text("\n".join(rows) + "\n")
    kept, count = run_index(catalog_path, tmp_path / "data", models)
    assert (kept.pruned, count) == (0, 12)  # without --prune nothing is deleted
    pruned, count = run_index(catalog_path, tmp_path / "data", models, IndexOptions(batch_size=4, prune=True))
    assert (pruned.pruned, pruned.unchanged, count) == (3, 9, 9)


def test_stored_vectors_and_payload(tmp_path, catalog_path, models):
    data = tmp_path / "data"
    run_index(catalog_path, data, models)
    store = open_store(f"edge:{data / 'store'}")
    try:
        (rec,) = store.retrieve(["p004"], with_vectors=True)
        assert rec.payload[ID_KEY] == "p004" and len(rec.payload[HASH_KEY]) == 64
        assert rec.payload["colour"] == "black" and rec.payload["price"] == 14
        assert set(rec.vectors) == {"image", "text", "semantic", "lexical"}
        assert rec.vectors.pop("lexical") == models.lexical.document(rec.payload)
        for name, vec in rec.vectors.items():
            assert vec.dtype == np.float32
            assert abs(float(np.linalg.norm(vec)) - 1) < 1e-3, name
        assert rec.vectors["semantic"].shape == (384,)
        # The stored image vector is what the encoder gives for the same file.
        direct = models.clip.encode_images([Image.open(catalog_path.parent / "images/p004.jpg").convert("RGB")])
        assert float(direct[0] @ rec.vectors["image"]) > 0.999
        assert store.payload_indexes()["category"] == "keyword"
        assert store.payload_indexes()["price"] in {"integer", "float"}
    finally:
        store.close()


def test_bad_images_are_logged_and_never_abort(tmp_path, models):
    root = tmp_path / "catalog"
    catalog = make_catalog(root, n=6)
    (root / "images" / "empty.jpg").write_bytes(b"")
    (root / "images" / "text.jpg").write_text("this is not an image")
    good = (root / "images" / "p000.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (3000, 3000)).save(root / "images" / "huge.png")
    extra = [
        {"id": "empty", "title": "empty", "image": "images/empty.jpg"},
        {"id": "text", "title": "text", "image": "images/text.jpg"},
        {"id": "truncated", "title": "truncated", "image": "images/truncated.jpg"},
        {"id": "huge", "title": "huge", "image": "images/huge.png"},
        {"id": "gone", "title": "gone", "image": "images/missing.jpg"},
        {"id": "url", "title": "url", "image": "http://127.0.0.1:9/x.jpg"},
    ]
    with catalog.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    report, count = run_index(catalog, tmp_path / "data", models)
    assert (report.new, report.failed, count) == (6, 6, 6)
    errors = [json.loads(line) for line in (tmp_path / "data" / "errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == {r["id"] for r in extra}
    by_id = {e["id"]: e for e in errors}
    assert by_id["huge"]["reason"] in {"too_many_pixels", "decompression_bomb"}
    assert by_id["url"]["reason"] == "private_address"
    assert all(e["source"].startswith("catalog.jsonl:") for e in errors)
    # Failed items are retried on the next run; the good ones stay unchanged.
    again, _ = run_index(catalog, tmp_path / "data", models)
    assert (again.unchanged, again.failed) == (6, 6)


def test_schema_mismatch_is_a_clear_error(tmp_path, catalog_path, models, text_spec, cpu):
    run_index(catalog_path, tmp_path / "data", models)
    other = build_models("openclip:lookalike-mini/random", text_spec, cpu)
    with pytest.raises(SchemaMismatch, match="lookalike-mini"):
        run_index(catalog_path, tmp_path / "data", other)


def test_zero_shot_tags_are_stored_as_payload(tmp_path, catalog_path, models):
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text("colour: [red, green, blue]\ncategory:\n  labels: [dress, bag]\n  prompts: ['a {}']\n")
    vocab = TagVocab.load(vocab_file)
    tagged = type(models)(clip=models.clip, text=models.text, tagger=Tagger(vocab, models.clip))
    run_index(catalog_path, tmp_path / "data", tagged)
    store = open_store(f"edge:{tmp_path / 'data' / 'store'}")
    try:
        rec = store.retrieve(["p000"])[0]
        assert rec.payload["tag_colour"] in {"red", "green", "blue"}
        assert 0 < rec.payload["tag_colour_conf"] <= 1
        assert rec.payload["tag_category"] in {"dress", "bag"}
        assert store.payload_indexes()["tag_colour"] == "keyword"
    finally:
        store.close()


def test_kill_9_mid_run_loses_nothing_committed(tmp_path, tiny_clip_spec, text_spec):
    catalog = make_catalog(tmp_path / "catalog", n=400)
    data = tmp_path / "data"
    env = dict(os.environ)
    cfg_dir = Path(tiny_clip_spec.split("/", 1)[1]).parent / "configs"
    cmd = [
        sys.executable,
        "-c",
        f"import open_clip; open_clip.add_model_config({str(cfg_dir)!r}); from ui.cli import main; main()",
        "index", str(catalog), "--data-dir", str(data), "--model", tiny_clip_spec,
        "--text-model", text_spec, "--batch-size", "4", "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env, cwd=Path(__file__).parents[1])
    seen = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if max(_progress_counts(seen), default=0) >= 60:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]
    rerun = subprocess.run(cmd + ["--json", "--quiet"], capture_output=True, env=env, cwd=Path(__file__).parents[1])
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    report = json.loads(rerun.stdout)
    assert report["unchanged"] >= 40, report  # committed before the kill, not embedded again
    assert report["new"] + report["unchanged"] == 400 and report["failed"] == 0
    final = subprocess.run(cmd + ["--json", "--quiet"], capture_output=True, env=env, cwd=Path(__file__).parents[1])
    assert json.loads(final.stdout)["unchanged"] == 400


def _progress_counts(stderr: bytes) -> list[int]:
    """The 'done' numbers of the indexing bar's 'done/total' fields."""
    counts = []
    for line in stderr.replace(b"\r", b"\n").splitlines():
        if line.startswith(b"indexing"):
            counts += [int(x.split(b"/")[0]) for x in line.split() if re.fullmatch(rb"\d+/\d+", x)]
    return counts


def test_trimmed_text_encoding_matches_open_clip(models):
    """Cutting the padding after the last end-of-text token changes no CLIP text vector."""
    import torch

    from indexer.encoders import encode_text_trimmed

    clip = models.clip
    texts = ["red", "a yellow striped dress with long sleeves, cotton, by Kestrel", ""]
    tokens = clip._tokenizer(texts)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    with torch.inference_mode():
        full = clip.model.encode_text(tokens)
        trimmed = encode_text_trimmed(clip.model, tokens)
        alone = torch.cat([encode_text_trimmed(clip.model, clip._tokenizer([t])) for t in texts])
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-4)


def test_dtype_setting_resolves_or_names_the_setting():
    import torch

    from indexer import EncoderError, resolve_device

    assert resolve_device("cpu").dtype == torch.float32
    assert resolve_device("cpu", "bf16").dtype == torch.bfloat16
    assert resolve_device("cpu", "BFloat16").dtype == torch.bfloat16
    for bad in ("float8", "fp16"):  # unknown, and float16 on a CPU
        with pytest.raises(EncoderError, match="LOOKALIKE_DTYPE"):
            resolve_device("cpu", bad)


def test_bfloat16_index_stores_float32_unit_vectors_close_to_float32(tmp_path, catalog_path, tiny_clip_spec, text_spec):
    from indexer import resolve_device

    stored = {}
    for dtype in ("float32", "bfloat16"):
        models = build_models(tiny_clip_spec, text_spec, resolve_device("cpu", dtype))
        for model in (models.clip.model, models.text.model):
            assert str(next(model.parameters()).dtype) == f"torch.{dtype}"
        report, count = run_index(catalog_path, tmp_path / dtype, models)
        assert report.new == count > 0
        store = open_store(f"edge:{tmp_path / dtype / 'store'}")
        try:
            ids = sorted(r.payload[ID_KEY] for r in store.scroll(keys=[ID_KEY]))
            stored[dtype] = {r.payload[ID_KEY]: r.vectors for r in store.retrieve(ids, with_vectors=True)}
        finally:
            store.close()
    assert stored["float32"].keys() == stored["bfloat16"].keys()
    for key, full in stored["float32"].items():
        half = stored["bfloat16"][key]
        for name in ("image", "text", "semantic"):
            a, b = np.asarray(full[name]), np.asarray(half[name])
            assert b.dtype == np.float32 and abs(np.linalg.norm(b) - 1) < 1e-5
            assert float(a @ b) > 0.98, (key, name, float(a @ b))
