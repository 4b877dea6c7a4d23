"""The demo eval rows on several indexes of the same products, side by side: e.g. the plain demo catalog
(one photo a product) against the Shopify and Merchant Center sample feeds (three photos a product),
each searched with every photo and with main photos only.

The queries and their relevant ids come from the first index's payloads (the plain catalog's category,
colour and pattern fields, which the feeds keep under their own names), so every index answers the same
queries; the feeds' product ids are the plain catalog's ids. Uploaded-photo rows upload each reference
item's main photo from the first index, with the item itself filtered out.

    python benchmarks/photos_eval.py TRUTH_DIR [LABEL=DIR[:main] ...] [--per-type 150]

``:main`` searches that index with main photos only (``LOOKALIKE_ALL_PHOTOS=false``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from indexer import ImagePolicy
from search import SearchEngine, SearchSettings
from search.evaluate import attribute_queries, catalog_items, run_eval, upload_queries


def evaluate(data_dir: Path, all_photos: bool, queries) -> tuple[dict[str, dict[str, float]], float]:
    engine = SearchEngine(SearchSettings(data_dir=data_dir, all_photos=all_photos))
    try:
        engine.calibration()  # fitted (or read) before the clock starts
        started = time.perf_counter()
        report = run_eval(engine, queries)
        return report.rows, (time.perf_counter() - started) / max(len(queries), 1) * 1000
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truth", type=Path, help="index whose payloads hold category/colour/pattern")
    parser.add_argument("indexes", nargs="*", help="LABEL=DIR or LABEL=DIR:main")
    parser.add_argument("--per-type", type=int, default=150)
    parser.add_argument("--skip-truth", action="store_true", help="only make the queries from TRUTH_DIR")
    args = parser.parse_args()
    engine = SearchEngine(SearchSettings(data_dir=args.truth))
    try:
        items = catalog_items(engine)
        queries = attribute_queries(items, per_type=args.per_type)
        queries += upload_queries(queries, items, ImagePolicy.from_settings(engine.settings))
    finally:
        engine.close()
    runs = [] if args.skip_truth else [("truth", args.truth, True)]
    for spec in args.indexes:
        label, _, target = spec.partition("=")
        path, _, mode = target.partition(":")
        runs.append((label, Path(path), mode != "main"))
    results = {label: evaluate(path, photos, queries) for label, path, photos in runs}
    labels = list(results)
    print(f"{'P@10 (nDCG@10)':<40}" + "".join(f"{label:>22}" for label in labels))
    for row in results[labels[0]][0]:
        cells = []
        for label in labels:
            m = results[label][0].get(row)
            cells.append(f"{m['p@10']:.3f} ({m['ndcg@10']:.3f})" if m else "-")
        print(f"{row:<40}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'ms per query (mean)':<40}" + "".join(f"{results[label][1]:>22.1f}" for label in labels))


if __name__ == "__main__":
    main()
