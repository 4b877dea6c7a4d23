"""Several photos per product, two store layouts side by side, in real optimized qdrant-edge shards:

- multivector: one point per product, its photos in one max-sim multivector (``photos``);
- per photo: one point per photo carrying its product's id; a search asks for k x photos hits (the
  fewest that always hold k distinct products) and keeps each product's first, best, hit.

Synthetic catalogs: each product has a random direction, its photos are that direction plus noise (as
a shot, its mirror and a close-up are near one another), and each query is a noisy copy of one
product's photo, so a query has near neighbours as a real one does. For each layout it prints the time
to load and build the HNSW index, the search latency (p50 and p95, the store call plus the grouping),
and recall@k against the exact max-sim top k computed with numpy. Both layouts rank by the same max
over photos; what can differ is what the graph search finds, and at what cost.

    python benchmarks/photo_layouts.py [--products 10000] [--photos 3] [--dims 128 512] [--queries 200] [--exact]

``--exact`` leaves the graph unbuilt, as an index run does below 20,000 new items: searches are brute force.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer import Record, StoreSchema
from indexer.store import ID_KEY, SearchRequest
from indexer.store_edge import EdgeStore

MODEL = "synthetic"
NOISE = 0.6  # photo spread around the product's direction: photos of one product have cosine ~0.75


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def catalog(products: int, photos: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = unit(rng.normal(size=(products, 1, dim)))
    shots = unit(centre + NOISE * unit(rng.normal(size=(products, photos, dim))))
    picked = shots[rng.integers(0, products, queries), rng.integers(0, photos, queries)]
    return shots, unit(picked + NOISE * unit(rng.normal(size=picked.shape)))


def exact_top(shots: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    best = (shots @ query).max(axis=1)
    return np.argsort(-best, kind="stable")[:k].tolist()


def build_multi(path: Path, shots: np.ndarray, optimize: bool = True) -> EdgeStore:
    dim = shots.shape[2]
    store = EdgeStore(path)
    store.ensure_schema(StoreSchema({"photos": dim}, {"photos": MODEL}, multi={"photos": "filled"}))
    records = [Record(str(i), {ID_KEY: str(i)}, {"photos": shots[i]}) for i in range(len(shots))]
    for start in range(0, len(records), 1000):
        store.upsert(records[start : start + 1000])
    if optimize:
        store.optimize()
    return store


def build_per_photo(path: Path, shots: np.ndarray, optimize: bool = True) -> EdgeStore:
    dim = shots.shape[2]
    store = EdgeStore(path)
    store.ensure_schema(StoreSchema({"image": dim}, {"image": MODEL}))
    records = [
        Record(f"{i}#{p}", {ID_KEY: f"{i}#{p}", "product": str(i)}, {"image": shots[i, p]})
        for i in range(len(shots))
        for p in range(shots.shape[1])
    ]
    for start in range(0, len(records), 1000):
        store.upsert(records[start : start + 1000])
    if optimize:
        store.optimize()
    return store


def search_multi(store: EdgeStore, query: np.ndarray, k: int, photos: int) -> list[int]:
    (hits,) = store.search_batch([SearchRequest("photos", query, k, keys=[])])
    return [int(h.id) for h in hits]


def search_multi_wide(store: EdgeStore, query: np.ndarray, k: int, photos: int) -> list[int]:
    # The graph asked for as many hits as the per-photo layout asks for: the same breadth of search.
    (hits,) = store.search_batch([SearchRequest("photos", query, k * photos, keys=[])])
    return [int(h.id) for h in hits[:k]]


def search_per_photo(store: EdgeStore, query: np.ndarray, k: int, photos: int) -> list[int]:
    (hits,) = store.search_batch([SearchRequest("image", query, k * photos, keys=[])])
    seen: dict[int, None] = {}
    for h in hits:
        seen.setdefault(int(h.id.partition("#")[0]), None)
        if len(seen) == k:
            break
    return list(seen)


LAYOUTS = {
    "multivector": (build_multi, (search_multi, search_multi_wide)),
    "per photo": (build_per_photo, (search_per_photo,)),
}


def measure(dim: int, args: argparse.Namespace) -> None:
    shots, queries = catalog(args.products, args.photos, dim, args.queries)
    truth = [exact_top(shots, q, args.k) for q in queries]
    print(f"\n{args.products} products x {args.photos} photos, {dim}-d, {args.queries} queries, k={args.k}")
    print(f"{'layout':<32} {'points':>7} {'build s':>8} {'p50 ms':>7} {'p95 ms':>7} {'recall@k':>9}")
    for name, (build, searches) in LAYOUTS.items():
        with tempfile.TemporaryDirectory(prefix="photo-layouts-") as tmp:
            t0 = time.perf_counter()
            store = build(Path(tmp) / "store", shots, not args.exact)
            built = time.perf_counter() - t0
            for search in searches:
                p50, p95, recall = _run(store, search, queries, truth, args)
                label = f"{name}, asks {args.k * args.photos}" if search is search_multi_wide else name
                print(f"{label:<32} {store.count():>7} {built:>8.1f} {p50:>7.2f} {p95:>7.2f} {recall:>9.3f}")
            store.close()


def _run(store, search, queries, truth, args) -> tuple[float, float, float]:
    for q in queries[:10]:  # warm the caches
        search(store, q, args.k, args.photos)
    times, found = [], 0
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        got = search(store, q, args.k, args.photos)
        times.append((time.perf_counter() - t0) * 1000)
        found += len(set(got) & set(want))
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95), found / (args.k * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=40, help="the engine asks each channel for 40 candidates")
    parser.add_argument("--exact", action="store_true", help="no HNSW graph: brute-force searches")
    args = parser.parse_args()
    for dim in args.dims:
        measure(dim, args)


if __name__ == "__main__":
    main()
