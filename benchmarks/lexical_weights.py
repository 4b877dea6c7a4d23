"""Choose the lexical channel's weight, the fusion and the facet mode by measurement, on an index's eval.

Runs every generated text query type (the attribute rows and the shopper rows of ``lookalike eval``)
once per setting, on one open index, and prints nP@10 per type (MRR for code lookups), so the
defaults can be read off one table:

    python benchmarks/lexical_weights.py demo-data/index [--per-type 150] [--weights 0 0.1 0.2 0.4]
        [--fusions calibrated rrf] [--understanding on off] [--facet-modes filter boost]
"""

from __future__ import annotations

import argparse
import itertools
import time

from search import SearchEngine, SearchSettings
from search.evaluate import attribute_queries, catalog_items, run_eval
from search.evaluate_shopper import shopper_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--per-type", type=int, default=150)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    ap.add_argument("--fusions", nargs="+", default=["calibrated", "rrf"])
    ap.add_argument("--understanding", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--facet-modes", nargs="+", default=["filter"], choices=["filter", "boost"])
    ap.add_argument("--facet-boost", type=float, default=0.5)
    args = ap.parse_args()

    settings = SearchSettings(data_dir=args.data_dir)
    base = SearchEngine(settings)
    items = catalog_items(base)
    queries = attribute_queries(items, per_type=args.per_type) + shopper_queries(items, per_type=args.per_type)
    queries = [q for q in queries if q.query.kind == "text"]
    types = list(dict.fromkeys(q.type for q in queries))
    print(f"{len(queries)} text queries on {len(items)} items; nP@10 per type (code lookup: MRR)\n")
    head = f"{'understanding':<13} {'facets':<7} {'fusion':<10} {'lexical':>7} {'s':>5}  "
    print(head + "  ".join(f"{t.removeprefix('text: ')[:16]:>16}" for t in types))
    grid = itertools.product(args.understanding, args.facet_modes, args.fusions, args.weights)
    for understanding, facets, fusion, weight in grid:
        if understanding == "off" and facets != args.facet_modes[0]:
            continue  # the facet mode only matters when the words are read
        update = {
            "lexical_weight": weight,
            "fusion": fusion,
            "query_parser": "rules" if understanding == "on" else "off",
            "facet_mode": facets,
            "facet_boost": args.facet_boost,
        }
        engine = SearchEngine(settings.model_copy(update=update), store=base.store, models=base.models)
        started = time.perf_counter()
        report = run_eval(engine, queries)
        took = time.perf_counter() - started
        cells = [report.rows[t]["mrr" if t == "code lookup" else "np@10"] for t in types]
        print(
            f"{understanding:<13} {facets:<7} {fusion:<10} {weight:>7.2f} {took:>5.0f}  "
            + "  ".join(f"{c:>16.3f}" for c in cells)
        )
    base.close()


if __name__ == "__main__":
    main()
