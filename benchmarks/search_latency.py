"""Search latency on the optimized embedded store against qdrant-client's local mode, side by side.

Synthetic catalogs (random unit vectors with category/colour/brand/price payloads, titles and SKUs, and
their BM25 vectors) of 10k and 100k items.
For each store it prints p50/p95 of
- store side: the time one SearchEngine.search() spends inside store calls (text: 3 channels,
  image: a catalog item's own 3 vectors, composed: its probes, filtered: the text query with
  category and price filters), measured on the same queries as
- end to end: SearchEngine.search() including CLIP text encoding (lookalike-mini architecture; pass
  --model openclip:lookalike-mini/CKPT for the trained demo model: the speed is the same, or
  --model openclip:ViT-B-32/random for the real 512-d vectors).
These run with the lexical channel and query understanding off, as before them. On the embedded store a
second table gives text queries three ways, interleaved query by query: lexical off, the BM25 channel
on (words as typed), and the default (BM25 channel, price and facet words read as filters, codes looked up).

    python benchmarks/search_latency.py [--sizes 10000 100000] [--queries 100] [--local-max-items 20000]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer import Condition, Filter, Record, StoreSchema, build_models, open_store, resolve_device
from indexer.lexical import LEXICAL, LexicalConfig, LexicalEncoder
from indexer.store import HASH_KEY, ID_KEY
from indexer.store_qdrant import QdrantStore
from search import Query, SearchEngine, SearchSettings

CATEGORIES = ["dress", "coat", "shirt", "bag", "sneaker", "sandal", "trousers", "pullover", "t-shirt", "boot"]
STYLES = ["long", "short", "summer", "winter", "casual", "smart", "cotton", "wool", "light", "warm"]
COLOURS = ["red", "blue", "green", "black", "pink", "teal", "brown", "yellow", "orange", "purple"]
BRANDS = ["Kestrel", "Northwind", "Fjordline", "Urbanite", "Solstice", "Maple Lane"]
LEXICAL_FIELDS = ("title", "brand", "category", "colour", "id", "sku")


def unit_rows(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def payload(i: int) -> dict:
    category, colour = CATEGORIES[i % 10], COLOURS[i // 10 % 10]
    return {
        ID_KEY: f"item-{i}",
        HASH_KEY: "x",
        "category": category,
        "colour": colour,
        "brand": BRANDS[i // 100 % 6],
        "sku": f"SK-{i:07d}",
        "price": float(i % 200),
        "title": f"{colour} {STYLES[i // 1000 % 10]} {category}",
    }


def fill(store, n: int, dims: dict[str, int], lexical: LexicalEncoder, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    store.ensure_schema(StoreSchema(dims, {k: "synthetic" for k in dims}, {LEXICAL: lexical.model_id}))
    for key, kind in {"category": "keyword", "colour": "keyword", "brand": "keyword", "sku": "keyword"}.items():
        store.ensure_payload_index(key, kind)
    store.ensure_payload_index("price", "float")
    step = 2000
    for start in range(0, n, step):
        m = min(step, n - start)
        vecs = {name: unit_rows(rng, m, d) for name, d in dims.items()}
        records = []
        for i in range(m):
            p = payload(start + i)
            vectors = {name: vecs[name][i] for name in dims}
            records.append(Record(p[ID_KEY], p, {**vectors, LEXICAL: lexical.document(p)}))
        store.upsert(records)
    store.optimize()


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


class TimedStore:
    """The store with the time spent inside its calls added up: the store side of a query."""

    def __init__(self, store):
        self.store, self.spent = store, 0.0

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        return timed


def measure(engine: SearchEngine, timed: TimedStore, n_queries: int) -> dict[str, tuple[tuple, tuple]]:
    """Per query kind: (store-side p50/p95, end-to-end p50/p95) over the same queries."""
    flt = Filter(must=(Condition("category", "eq", "dress"), Condition("price", "range", {"lt": 100})))
    # (i, pattern word) -> query; i < 100 gives distinct texts and items.
    queries = {
        "text": lambda i, w: Query(text=f"{COLOURS[i % 10]} {w} {CATEGORIES[i // 10 % 10]}"),
        "image": lambda i, w: Query(like=f"item-{i * 7}"),
        "composed": lambda i, w: Query(like=f"item-{i * 7}", text=f"in {COLOURS[(i + 3) % 10]}"),
        "filtered": lambda i, w: Query(text=f"{STYLES[i // 10 % 10]} {COLOURS[i % 10]} {w} dress", filters=flt),
    }
    # A serving process is warm: its first queries fault in graph and vector pages. Warm up with
    # other queries than the ones measured (other words, other items).
    for make in queries.values():
        for i in range(20):
            engine.search(make(101 + i, "plain"))
    out = {}
    for kind, make in queries.items():
        store_times, total_times = [], []
        for i in range(n_queries):
            timed.spent = 0.0
            t0 = time.perf_counter()
            engine.search(make(i, "striped"))
            total_times.append(time.perf_counter() - t0)
            store_times.append(timed.spent)
        out[kind] = (percentiles(store_times), percentiles(total_times))
    return out


TEXT_WAYS = ("lexical off", "BM25 channel", "BM25 + understanding")


def measure_lexical(engines: dict[str, SearchEngine], timed: TimedStore, n_queries: int) -> dict[str, tuple]:
    """Text queries under each engine, interleaved query by query so the machine's drift hits all alike.
    Every fifth query holds an item code; a fifth more a price phrase."""

    def text(i: int) -> str:
        words = f"{COLOURS[i % 10]} {STYLES[i // 10 % 10]} {CATEGORIES[i // 10 % 10]}"
        return {0: f"SK-{i * 997:07d} {words}", 1: f"{words} under {20 + i} dollars"}.get(i % 5, words)

    for engine in engines.values():
        for i in range(20):
            engine.search(Query(text=text(101 + i)))
    store_times = {name: [] for name in engines}
    total_times = {name: [] for name in engines}
    for i in range(n_queries):
        for name, engine in engines.items():
            timed.spent = 0.0
            t0 = time.perf_counter()
            engine.search(Query(text=text(i)))
            total_times[name].append(time.perf_counter() - t0)
            store_times[name].append(timed.spent)
    return {name: (percentiles(store_times[name]), percentiles(total_times[name])) for name in engines}


def text_engines(data_dir: Path, store: TimedStore, models) -> dict[str, SearchEngine]:
    """One engine per way of running a text query (TEXT_WAYS), over the same store and models."""
    options = ({"lexical_weight": 0, "query_parser": "off"}, {"query_parser": "off"}, {})
    engines = {
        way: SearchEngine(SearchSettings(data_dir=data_dir, **o), store=store, models=models)
        for way, o in zip(TEXT_WAYS, options, strict=True)
    }
    for engine in engines.values():
        engine.calibration()  # fitted once per index and cached; not part of a query
    return engines


def print_ways(ways: dict[str, tuple], n: int) -> None:
    base = ways["lexical off"][1][1]
    print(f"\ntext queries on the edge store, {n:,} items: {'store':>15} {'end to end':>15} {'p95 ratio':>10}")
    for way, (st, ee) in ways.items():
        print(f"  {way:<22} {st[0]:6.1f} / {st[1]:6.1f} {ee[0]:6.1f} / {ee[1]:6.1f} {ee[1] / base:9.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--local-queries", type=int, default=20, help="Queries against the slow local mode.")
    ap.add_argument("--model", default="openclip:lookalike-mini/random")
    ap.add_argument(
        "--local-max-items",
        type=int,
        default=20_000,
        help="Skip local mode above this size (qdrant-client's own limit; filling it takes minutes per 10k past it).",
    )
    args = ap.parse_args()

    from qdrant_client import QdrantClient

    models = build_models(args.model, "st:all-MiniLM-L6-v2", resolve_device("cpu"))
    dims = {"image": models.clip.dim, "text": models.clip.dim, "semantic": models.text.dim}
    lexical = LexicalEncoder(LexicalConfig(fields=LEXICAL_FIELDS))
    print(f"vectors: {dims}; p50 / p95 in ms; {args.queries} queries (local mode: {args.local_queries})")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {"edge": open_store(f"edge:{Path(tmp) / 'store'}")}
            if n <= args.local_max_items:
                stores["local"] = QdrantStore.from_client(QdrantClient(":memory:"))
            results, ways = {}, {}
            for name, store in stores.items():
                t0 = time.perf_counter()
                fill(store, n, dims, lexical)
                load = time.perf_counter() - t0
                nq = args.queries if name == "edge" else args.local_queries
                timed = TimedStore(store)
                (Path(tmp) / name).mkdir()
                engines = text_engines(Path(tmp) / name, timed, models)
                gc.collect()
                gc.freeze()  # as `lookalike serve` does once loaded: full collections never walk the index
                measured = measure(engines["lexical off"], timed, nq)
                results[name] = ({k: v[0] for k, v in measured.items()}, {k: v[1] for k, v in measured.items()}, load)
                if name == "edge":
                    ways = measure_lexical(engines, timed, nq)
            local = results.get("local")
            loads = f"edge {results['edge'][2]:.1f}s, local " + (f"{local[2]:.1f}s" if local else "skipped")
            print(f"\n{n:,} items (load + optimize: {loads})")
            print(
                f"{'query':<10} {'edge store':>15} {'local store':>15} {'ratio p95':>10} "
                f"{'edge e2e':>15} {'local e2e':>15}"
            )
            for kind in ("text", "image", "composed", "filtered"):
                es, ee = results["edge"][0][kind], results["edge"][1][kind]
                if local:
                    ls, le = local[0][kind], local[1][kind]
                    rest = f"{ls[0]:6.1f} / {ls[1]:6.1f} {ls[1] / es[1]:9.1f}x", f"{le[0]:6.1f} / {le[1]:6.1f}"
                else:
                    rest = f"{'-':>15} {'-':>10}", f"{'-':>15}"
                print(f"{kind:<10} {es[0]:6.1f} / {es[1]:6.1f} {rest[0]} {ee[0]:6.1f} / {ee[1]:6.1f} {rest[1]}")
            print_ways(ways, n)
            for store in stores.values():
                store.close()


if __name__ == "__main__":
    main()
