"""Index throughput: the full pipeline against a naive one-image-at-a-time loop, side by side.

Both use the same CLIP architecture with random weights (real speed, no download). The pipeline
goes from JPEG files on disk to vectors stored (image + CLIP text + MiniLM text vectors, upserted
into an edge store); the naive loop opens, preprocesses and encodes one image at a time, at the device's
default dtype. The pipeline runs once per ``--dtypes`` entry (default: the device's default, plus bfloat16 on a
CPU with native bf16), so the dtype's share of the speed-up is shown apart from the pipeline's.

    python benchmarks/index_throughput.py [--items 256] [--arch ViT-B-32] [--device auto] [--dtypes auto,bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer import (
    Device,
    ImagePolicy,
    IndexOptions,
    build_models,
    cpu_has_native_bf16,
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
    ap.add_argument("--dtypes", default=None, help="Comma-separated dtypes for the pipeline runs.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--naive-items", type=int, default=96, help="Images for each naive round.")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating rounds; ratios are per round.")
    args = ap.parse_args()

    device = resolve_device(args.device)
    dtypes = (args.dtypes or default_dtypes(device)).split(",")
    policy = ImagePolicy(max_bytes=50_000_000, max_pixels=100_000_000, url_timeout=5, allow_private_urls=False)
    options = IndexOptions(batch_size=args.batch_size, workers=args.workers, optimize_threshold=10**9)
    devices = [resolve_device(args.device, dtype) for dtype in dtypes]
    models = [build_models(f"openclip:{args.arch}/random", "st:all-MiniLM-L6-v2", d) for d in devices]
    same = [m for d, m in zip(devices, models, strict=True) if d == device]
    naive_models = same[0] if same else build_models(f"openclip:{args.arch}/random", "st:all-MiniLM-L6-v2", device)
    print(
        f"device: {device.device}  arch: {args.arch}  items: {args.items}  jpeg: {args.image_size}px  "
        f"threads: {torch.get_num_threads()}  batch: {args.batch_size}  workers: {args.workers}"
    )
    ratios: dict[str, list[float]] = {str(d.dtype): [] for d in devices}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = read_catalog(make_jpegs(Path(tmp) / "catalog", args.items, args.image_size))
        paths = [Path(item.image) for item in catalog.items][: args.naive_items]
        naive(paths[:4], naive_models.clip)  # warm-up: allocator, kernels
        for r in range(args.rounds):
            # Naive and pipeline runs alternate, so a slow spell on a shared machine hits both.
            naive_rate = len(paths) / naive(paths, naive_models.clip)
            print(f"round {r + 1}: naive loop ({dtype_name(device)}): {naive_rate:6.1f} images/s (image vectors only)")
            for n, (run_device, run_models) in enumerate(zip(devices, models, strict=True)):
                store = open_store(f"edge:{Path(tmp) / f'store-{r}-{n}'}")
                try:
                    report = index_catalog(catalog, store, run_models, options, policy, Path(tmp) / "errors.jsonl")
                finally:
                    store.close()
                ratio = report.images_per_s / naive_rate
                ratios[str(run_device.dtype)].append(ratio)
                other = max(report.seconds - report.encode_seconds - report.wait_seconds, 0.0)
                print(
                    f"round {r + 1}: lookalike ({dtype_name(run_device)}): {report.images_per_s:6.1f} images/s "
                    f"= {ratio:.2f}x naive  (image + text + semantic vectors, stored; {report.seconds:.2f}s = models "
                    f"{report.encode_seconds:.2f}s + waiting on decode {report.wait_seconds:.2f}s "
                    f"+ store/other {other:.2f}s)"
                )
    for run_device in devices:
        per_round = ratios[str(run_device.dtype)]
        print(
            f"speed-up, lookalike ({dtype_name(run_device)}) over naive ({dtype_name(device)}): "
            f"median {statistics.median(per_round):.2f}x  (rounds: {', '.join(f'{x:.2f}' for x in per_round)})"
        )


def dtype_name(device: Device) -> str:
    return str(device.dtype).removeprefix("torch.")


def default_dtypes(device: Device) -> str:
    return "auto,bfloat16" if device.device.type == "cpu" and cpu_has_native_bf16() else "auto"


if __name__ == "__main__":
    main()
