"""The two engines side by side on one machine, and the CPU work an encoder needs beside it.

1. Decode rate: the read-hash-decode-preprocess stage alone (pipeline.prepare_item, the stage both engines
   run), on one thread, over photo-like JPEGs: images/s per core, so a GPU that encodes r images/s needs
   r / rate cores of decode tasks beside it.
2. Local engine against the ray engine (a local Ray on this machine's CPUs), alternating rounds on the same
   catalog and models, each into a new store; the ratio per round.

    python benchmarks/engines.py [--items 256] [--arch ViT-B-32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # index_throughput, beside this file

from index_throughput import make_jpegs  # noqa: E402

from indexer import (  # noqa: E402
    ImagePolicy,
    IndexOptions,
    RayOptions,
    build_models,
    index_catalog,
    open_store,
    read_catalog,
    resolve_device,
)
from indexer.engine_ray import index_catalog_ray  # noqa: E402
from indexer.engines import WorkerSpec  # noqa: E402
from indexer.pipeline import ItemPrep, Ready, prepare_item  # noqa: E402

TEXT = "st:all-MiniLM-L6-v2"


def decode_rate(catalog, models, policy: ImagePolicy) -> float:
    prep = ItemPrep.for_models(models, policy)
    started = time.perf_counter()
    results = [prepare_item(item, None, prep) for item in catalog.items]
    assert all(isinstance(r, Ready) for r in results)
    return len(results) / (time.perf_counter() - started)


def run(engine: str, catalog, models, options: IndexOptions, policy: ImagePolicy, root: Path, spec: str) -> float:
    store_spec = f"edge:{root / 'store'}"
    store = open_store(store_spec)
    try:
        args = (catalog, store, models, options, policy, root / "errors.jsonl")
        if engine == "local":
            report = index_catalog(*args)
        else:
            workers = WorkerSpec(spec, TEXT, device="cpu", dtype="float32", store=store_spec)
            report = index_catalog_ray(*args, workers=workers, ray_options=RayOptions())
    finally:
        store.close()
    assert report.new == len(catalog.items), report.summary()
    return report.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray

    spec = f"openclip:{args.arch}/random"
    models = build_models(spec, TEXT, resolve_device("cpu"))
    policy = ImagePolicy(max_bytes=50_000_000, max_pixels=100_000_000, url_timeout=5, allow_private_urls=False)
    options = IndexOptions(batch_size=args.batch_size, workers=4, optimize_threshold=10**9)
    ray.init(include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    with tempfile.TemporaryDirectory() as tmp:
        catalog = read_catalog(make_jpegs(Path(tmp) / "catalog", args.items, args.image_size))
        rate = decode_rate(catalog, models, policy)
        print(f"decode + preprocess ({args.image_size} px JPEG -> {args.arch} input), one thread: {rate:.0f} images/s")
        ratios = []
        for r in range(args.rounds):
            local = run("local", catalog, models, options, policy, Path(tmp) / f"local-{r}", spec)
            on_ray = run("ray", catalog, models, options, policy, Path(tmp) / f"ray-{r}", spec)
            ratios.append(on_ray / local)
            print(
                f"round {r + 1}: {args.items} items, {args.arch}: local {local:.1f}s, ray ({cpus} CPUs) {on_ray:.1f}s "
                f"= {on_ray / local:.2f}x the local engine's time"
            )
        if ratios:
            print(f"ray / local time, median of {args.rounds} rounds: {statistics.median(ratios):.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
