"""Filtered search on the embedded store: recall@10 against an exact search, and time, per filter.

A store of scale.py's synthetic catalog (512/512/384-d vectors clustered by category and colour, its
payloads; built here unless ``--store`` names one made by this script or scale.py). Each filter is
searched on one dense channel with queries near 20 catalog items, four ways, side by side:
- ``graph``: the engine's filtered graph search as it is (the int8 copies, rescored);
- ``filtered``: as the store searches a filter (edge_config.RESCORED_FILTERED: ACORN and a wider beam);
- each again without the combined facet keys (facet_keys.py) in the filter, to show what they save.
A filter that matches fewer points than the engine's full-scan threshold (store_codec.FULL_SCAN_POINTS: 10,000) is
scanned exactly either way; a larger one is searched on the graph.

    python benchmarks/filter_recall.py [--items 300000] [--store DIR] [--vector image]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scale  # noqa: E402

from indexer import StoreLayout, StoreSchema, edge_config, open_store  # noqa: E402
from indexer.lexical import LEXICAL, LexicalEncoder  # noqa: E402
from indexer.store import Condition, Filter  # noqa: E402


def eq(key: str, value: str) -> Condition:
    return Condition(key, "eq", value)


FILTERS = {
    "category": (eq("category", "dress"),),
    "colour + pattern": (eq("colour", "red"), eq("pattern", "plain")),
    "category + price": (eq("category", "dress"), Condition("price", "range", {"lt": 100})),
    "in stock + brand": (eq("in_stock", "true"), eq("brand", scale.BRANDS[0])),
    "category + colour": (eq("category", "dress"), eq("colour", "red")),
    "cat + colour + pattern": (eq("category", "dress"), eq("colour", "red"), eq("pattern", "plain")),
}
MODES = {"graph": edge_config.RESCORED, "filtered": edge_config.RESCORED_FILTERED}


def build(path: Path, items: int) -> None:
    store = open_store(f"edge:{path}")
    lexical = LexicalEncoder()
    schema = StoreSchema(scale.DIMS, dict.fromkeys(scale.DIMS, "synthetic"), sparse={LEXICAL: lexical.model_id})
    store.ensure_schema(schema, StoreLayout(vectors_on_disk=True))
    load_s, build_s = scale.fill(store, items, 0.5, lexical)
    print(f"built {items:,} items in {path}: load {load_s:.0f} s, build {build_s:.0f} s", flush=True)
    store.close()


def search(shard, vector: str, q: np.ndarray, condition, params) -> tuple[set, float]:
    request = qe.QueryRequest(
        limit=10,
        query=qe.Query.Nearest(q.tolist(), using=vector),
        filter=condition,
        params=params,
        with_payload=False,
        with_vector=False,
    )
    started = time.perf_counter()
    hits = shard.query(request)
    return {h.id for h in hits}, (time.perf_counter() - started) * 1000


def measure(store, vector: str, queries: np.ndarray) -> None:
    shard, combined = store._shard, store._combined
    print(f"{'filter':<24}{'matches':>9}  " + "  ".join(f"{m + k:>24}" for k in ("", " -keys") for m in MODES))
    print(f"{'':<24}{'':>9}  " + "  ".join(f"{'recall  p50/p95 ms':>24}" for _ in range(2 * len(MODES))))
    for name, must in FILTERS.items():
        flt = Filter(must=must)
        cells = []
        for keys in (combined, []):
            store._combined = keys
            condition = store._filter(flt)
            exact = [search(shard, vector, q, condition, edge_config.EXACT)[0] for q in queries]
            for params in MODES.values():
                found = [search(shard, vector, q, condition, params) for q in queries]
                recall = np.mean([len(f & e) / max(len(e), 1) for (f, _), e in zip(found, exact, strict=True)])
                ms = np.percentile([t for _, t in found], [50, 95])
                cells.append(f"{recall:>8.2f} {ms[0]:>6.1f}/{ms[1]:>6.1f}")
        store._combined = combined
        print(f"{name:<24}{store.count(flt):>9,}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--store", type=Path, help="a store this script or scale.py built (else a temp dir)")
    ap.add_argument("--vector", default="image", choices=sorted(scale.DIMS))
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="filter-recall-") as tmp:
        path = args.store or Path(tmp) / "store"
        if not (path / "edge_config.json").exists():
            build(path, args.items)
        store = open_store(f"edge:{path}")
        n = store.count()
        rng = np.random.default_rng(3)
        ids = [f"item-{i}" for i in rng.integers(0, n, args.queries)]
        near = np.array([r.vectors[args.vector] for r in store.retrieve(ids, with_vectors=[args.vector])])
        queries = near + 0.02 * rng.standard_normal(near.shape).astype(np.float32)
        print(f"{n:,} items, {args.vector} vectors ({near.shape[1]}-d), {len(queries)} queries near catalog items")
        measure(store, args.vector, queries)
        store.close()


if __name__ == "__main__":
    main()
