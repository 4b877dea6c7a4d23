"""Evaluation harness: P@k (and normalised by the best possible, nP@10), R@k, nDCG@10 and MRR per query
type, plus zero-shot tagging accuracy.

On a catalog with attribute payloads (category, colour, pattern) the queries are generated from the
attributes; on any catalog a query file (JSONL) gives text and/or image queries with relevant ids.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from indexer import Condition, Filter
from indexer.images import ImagePolicy, load_image
from indexer.store import ID_KEY

from .engine import SearchEngine
from .metrics import query_metrics, summarise
from .query import Query

K = 10
COLOUR_KEYS = ("colour", "color")


@dataclass
class EvalQuery:
    type: str
    query: Query
    relevant: set[str]
    group: str | None = None  # e.g. the category, for a per-group breakdown


@dataclass
class EvalReport:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    tagging: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.rows, "per_group": self.groups, "tagging": self.tagging}

    def table(self) -> str:
        head = f"{'query type':<34} {'n':>5} {'P@10':>6} {'nP@10':>6} {'R@10':>6} {'nDCG@10':>8} {'MRR':>6}"
        lines = [head]
        for name, m in self.rows.items():
            normalised = f"{m['np@10']:>6.3f}" if "np@10" in m else f"{'-':>6}"  # eval.json of earlier versions
            lines.append(
                f"{name:<34} {int(m['n']):>5} {m['p@10']:>6.3f} {normalised} {m['r@10']:>6.3f} "
                f"{m['ndcg@10']:>8.3f} {m['mrr']:>6.3f}"
            )
        for name, groups in self.groups.items():
            lines.append(f"\n{name}: P@10 per group")
            lines += [f"  {g:<20} {m['p@10']:.3f}  (n={int(m['n'])})" for g, m in sorted(groups.items())]
        if self.tagging:
            lines.append("\nzero-shot tagging accuracy")
            lines += [f"  {f:<20} {m['accuracy']:.3f}  (n={int(m['n'])})" for f, m in self.tagging.items()]
        return "\n".join(lines)


def catalog_items(engine: SearchEngine) -> list[dict[str, Any]]:
    return [r.payload for r in engine.store.scroll()]


def attribute_queries(items: list[dict[str, Any]], per_type: int = 150, seed: int = 0) -> list[EvalQuery]:
    """Queries generated from category/colour/pattern payloads, with ground truth from the same fields."""
    rng = random.Random(seed)
    colour_key = next((k for k in COLOUR_KEYS if any(k in it for it in items)), None)
    if colour_key is None or not any("category" in it for it in items):
        return []
    by = defaultdict(set)
    for it in items:
        by[(it.get("category"), it.get(colour_key))].add(it["_id"])
        by[("cat", it.get("category"))].add(it["_id"])
        by[("cpp", it.get("category"), it.get("pattern"), it.get(colour_key))].add(it["_id"])
    colours = sorted({it[colour_key] for it in items if colour_key in it})
    out: list[EvalQuery] = []
    # Pairs with at least K items, so a perfect ranking scores P@10 = 1 (fewer on tiny catalogs).
    min_relevant = min(K, max(2, len(items) // 50))
    pairs = sorted(k for k in by if len(k) == 2 and k[0] != "cat" and len(by[k]) >= min_relevant)
    for category, colour in rng.sample(pairs, min(per_type, len(pairs))):
        out.append(
            EvalQuery(
                "text: colour category",
                Query(text=f"{colour} {category}", k=K),
                by[(category, colour)],
                group=category,
            )
        )
    sample = rng.sample(items, min(per_type, len(items)))
    for it in sample:
        relevant = by[("cat", it["category"])] - {it["_id"]}
        out.append(EvalQuery("image: same category", Query(like=it["_id"], k=K), relevant, group=it["category"]))
    for it in sample:
        target = rng.choice([c for c in colours if c != it.get(colour_key)])
        relevant = by[("cpp", it["category"], it.get("pattern"), target)] - {it["_id"]}
        if len(relevant) < 3:
            continue
        for method in ("arithmetic", "structured"):
            q = Query(like=it["_id"], text=f"in {target}", k=K, composed_method=method)
            out.append(EvalQuery(f"composed ({method})", q, relevant, group=it["category"]))
    for it in sample[: per_type // 2]:
        colour = it.get(colour_key)
        relevant = by[("cat", it["category"])] - by[(it["category"], colour)]
        for negative in (None, colour):
            name = "negative: penalty" if negative else "negative: ignored (baseline)"
            q = Query(text=f"{it['category']}", negative=negative, k=K)
            out.append(EvalQuery(name, q, relevant, group=it["category"]))
    return out


# The fused query types, by the name their rows take under each fusion method.
FUSED_TYPES = {"text: colour category": "text", "image: same category": "image"}


def fusion_queries(queries: Iterable[EvalQuery], methods: Iterable[str]) -> list[EvalQuery]:
    """The text and "more like this" queries again under each fusion method, to choose the default by
    measurement."""
    methods = tuple(methods)
    out = []
    for q in queries:
        if q.type in FUSED_TYPES:
            for method in methods:
                fq = replace(q.query, fusion=method)
                out.append(EvalQuery(f"{FUSED_TYPES[q.type]} fusion: {method}", fq, q.relevant))
    return out


def upload_queries(queries: Iterable[EvalQuery], items: list[dict[str, Any]], policy: ImagePolicy) -> list[EvalQuery]:
    """The "like this item" queries again with the item's photo as an upload: pixels only, no stored
    description to lean on. The item itself is filtered out, as if the photo came from elsewhere."""
    images = {it["_id"]: it.get("image") for it in items}
    out = []
    for q in queries:
        like = q.query.like
        if like is None or not images.get(like) or q.type == "composed (arithmetic)":
            continue
        image, _ = load_image(str(images[like]), policy)
        not_itself = Filter(must_not=(Condition(ID_KEY, "eq", like),))
        uq = replace(q.query, like=None, image=image, filters=not_itself)
        out.append(EvalQuery(f"{q.type} [upload]", uq, q.relevant, q.group))
    return out


def file_queries(path: Path, policy: ImagePolicy) -> list[EvalQuery]:
    """A query file: JSONL rows {"text", "image", "like", "negative", "relevant": [ids], "type"}."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            relevant = set(map(str, row["relevant"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: expected a JSON object with a 'relevant' list of ids ({exc})") from None
        image = None
        if row.get("image"):
            source = str(row["image"])
            if "://" not in source and not Path(source).is_absolute():
                source = str(Path(path).parent / source)
            image, _ = load_image(source, policy)
        query = Query(text=row.get("text"), image=image, like=row.get("like"), negative=row.get("negative"), k=K)
        out.append(EvalQuery(row.get("type") or query.kind, query, relevant))
    return out


def run_eval(
    engine: SearchEngine, queries: list[EvalQuery], progress: Callable[[int, int], None] | None = None
) -> EvalReport:
    per_type: dict[str, list[dict[str, float]]] = defaultdict(list)
    per_group: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for n, q in enumerate(queries, start=1):
        ranked = [h.id for h in engine.search(q.query)]
        metrics = query_metrics(ranked, q.relevant, ks=(K,))
        # P@10 over the best a ranking can reach: a code has one right answer, so its best P@10 is 0.1.
        metrics["np@10"] = metrics[f"p@{K}"] / (min(K, len(q.relevant)) / K)
        per_type[q.type].append(metrics)
        if q.group is not None and q.type.startswith("text: "):
            per_group[q.type][q.group].append(metrics)
        if progress:
            progress(n, len(queries))
    report = EvalReport()
    report.rows = {t: summarise(ms) for t, ms in per_type.items()}
    report.groups = {t: {g: summarise(ms) for g, ms in gs.items()} for t, gs in per_group.items()}
    return report


def tagging_accuracy(items: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For every ``tag_X`` with a ground-truth field ``X`` (or colour/color), the share that agree."""
    out = {}
    fields = {k[4:] for it in items for k in it if k.startswith("tag_") and not k.endswith("_conf")}
    for name in sorted(fields):
        truth_key = name if any(name in it for it in items) else None
        if truth_key is None and name in COLOUR_KEYS:
            truth_key = next((k for k in COLOUR_KEYS if any(k in it for it in items)), None)
        if truth_key is None:
            continue
        pairs = [(it[f"tag_{name}"], it[truth_key]) for it in items if f"tag_{name}" in it and truth_key in it]
        if pairs:
            out[name] = {"accuracy": sum(a == b for a, b in pairs) / len(pairs), "n": float(len(pairs))}
    return out
