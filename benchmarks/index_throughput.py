"""Index throughput: the full pipeline against a naive one-image-at-a-time loop, side by side.

Both use the same CLIP architecture with random weights (real speed, no download). The pipeline
goes from JPEG files on disk to vectors stored (image + CLIP text + MiniLM text vectors, upserted
into an edge store); the naive loop opens, preprocesses and encodes one image at a time.

    python benchmarks/index_throughput.py [--items 256] [--arch ViT-B-32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer import (
    ImagePolicy,
    IndexOptions,
    build_models,
    index_catalog,
    open_store,
    read_catalog,
    resolve_device,
)


def make_jpegs(root: Path, n: int, size: int) -> Path:
    """Photo-like JPEGs (smooth gradients plus noise), the size of typical product shots."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n):
        base = np.stack([np.sin(xx * 6 + i), np.cos(yy * 5 - i), xx * yy], axis=-1)
        noise = rng.normal(0, 0.08, (size, size, 3))
        pixels = ((base + noise).clip(-1, 1) * 127 + 128).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:05d}.jpg", quality=90)
        rows.append(
            {"id": f"{i:05d}", "title": f"product {i}", "description": "a photo", "image": f"images/{i:05d}.jpg"}
        )
    path = root / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def naive(paths: list[Path], encoder) -> float:
    t0 = time.perf_counter()
    for p in paths:
        image = Image.open(p).convert("RGB")
        encoder.encode_pixels(encoder.preprocess(image).unsqueeze(0))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--naive-items", type=int, default=None, help="Images for the naive loop (default: all).")
    args = ap.parse_args()

    device = resolve_device(args.device)
    models = build_models(f"openclip:{args.arch}/random", "st:all-MiniLM-L6-v2", device)
    policy = ImagePolicy(max_bytes=50_000_000, max_pixels=100_000_000, url_timeout=5, allow_private_urls=False)
    with tempfile.TemporaryDirectory() as tmp:
        catalog_path = make_jpegs(Path(tmp) / "catalog", args.items, args.image_size)
        catalog = read_catalog(catalog_path)
        paths = [Path(item.image) for item in catalog.items][: args.naive_items or args.items]
        naive(paths[:4], models.clip)  # warm-up: allocator, kernels
        naive_s = naive(paths, models.clip)
        store = open_store(f"edge:{Path(tmp) / 'store'}")
        options = IndexOptions(batch_size=args.batch_size, workers=args.workers, optimize_threshold=10**9)
        report = index_catalog(catalog, store, models, options, policy, Path(tmp) / "errors.jsonl")
        store.close()

    naive_rate = len(paths) / naive_s
    print(
        f"device: {device}  arch: {args.arch}  items: {args.items}  jpeg: {args.image_size}px  "
        f"threads: {torch.get_num_threads()}"
    )
    print(f"naive loop      : {naive_rate:8.1f} images/s  (image vectors only)")
    print(f"lookalike index : {report.images_per_s:8.1f} images/s  (image + text + semantic vectors, stored)")
    print(f"speed-up        : {report.images_per_s / naive_rate:8.2f}x")
    other = max(report.seconds - report.encode_seconds - report.wait_seconds, 0.0)
    print(
        f"pipeline time   : {report.seconds:.2f}s = models {report.encode_seconds:.2f}s "
        f"+ waiting on decode {report.wait_seconds:.2f}s + store/other {other:.2f}s"
    )


if __name__ == "__main__":
    main()
