"""``lookalike search`` and ``lookalike eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from indexer import ImageError, ImagePolicy
from indexer.images import load_image
from search import FilterError, QueryError, SearchEngine, SearchInput, SearchSettings, invalid_input
from vlm import vlm_query_parser, vlm_reranker

from .cli import AsJson, DataDir, Quiet, UserError, app, emit, user_errors


def open_engine(data_dir: Path | None) -> SearchEngine:
    settings = SearchSettings(**({"data_dir": data_dir} if data_dir else {}))
    try:
        # The VLM is made on the first --rerank vlm query; "like" queries show it the reference item.
        engine = SearchEngine(
            settings,
            rerankers={"vlm": vlm_reranker(settings, lookup=lambda i: engine.get(i))},
            parsers={"vlm": vlm_query_parser(settings)},
        )
        return engine
    except QueryError as exc:
        raise UserError(str(exc)) from None


def format_hits(hits) -> str:
    if not hits:
        return "no results: try fewer filters, a lower --min-score, or other words"
    lines = []
    for rank, hit in enumerate(hits, start=1):
        p = hit.payload
        price = f"  {p['price']:.2f}" if isinstance(p.get("price"), int | float) else ""
        shown = f"  (photo {hit.photo})" if hit.photo else ""  # matched by a photo other than the main one
        lines.append(f"{rank:>3}. {hit.score:>7.4g}  {hit.id:<16} {p.get('title', '')}{price}{shown}")
    return "\n".join(lines)


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="What to look for; with --image/--like: the change.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Query image: a path or an http(s) URL.")] = None,
    like: Annotated[str | None, typer.Option("--like", help="Catalog id to search like.")] = None,
    photo: Annotated[
        int | None, typer.Option("--photo", help="With --like: start from this one of its photos (0: the main one).")
    ] = None,
    negative: Annotated[str | None, typer.Option("--not", help="Push down items matching this text.")] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="FIELD=VALUE, FIELD=A|B, FIELD!=V, FIELD<N (repeatable)."),
    ] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="e.g. image=0.6,text=0.4")] = None,
    k: Annotated[int, typer.Option("--k", help="Results to show.")] = 10,
    offset: Annotated[int, typer.Option("--offset", help="Results to skip (paging).")] = 0,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Keep hits scoring at least this (the printed score).")
    ] = None,
    rerank: Annotated[str, typer.Option("--rerank", help="none | clip | vlm")] = "none",
    fusion: Annotated[str | None, typer.Option("--fusion", help="rrf | dbsf | sum | calibrated")] = None,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Keep near-identical items.")] = False,
    no_group: Annotated[
        bool, typer.Option("--no-group", help="List every variant of an item group, not only the best match.")
    ] = False,
    literal: Annotated[
        bool, typer.Option("--literal", help="Search the words as typed: no price words, facets or codes read.")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show per-channel scores and what was understood.")
    ] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Search the index by text, by image, or by an image plus a change ("like this but in blue")."""
    with user_errors():
        engine = open_engine(data_dir)
        try:
            query_image = None
            if image:
                policy = ImagePolicy.from_settings(engine.settings)
                query_image, _ = load_image(image, policy)
            query = SearchInput(
                text=text,
                like=like,
                negative=negative,
                filters=filters or [],
                weights=weights,
                k=k,
                offset=offset,
                min_score=min_score,
                rerank=rerank,
                dedup=not no_dedup,
                group=not no_group,
                fusion=fusion,
                literal=literal,
                photo=photo,
            ).to_query(engine.fields, query_image)
            result = engine.run(query)
        except (QueryError, FilterError, ImageError) as exc:
            raise UserError(str(exc)) from None
        except ValidationError as exc:
            raise UserError(invalid_input(exc)) from None
        finally:
            engine.close()
        rows, text_out = search_output(result, explain)
        emit(rows, as_json, text_out)


def search_output(result, explain: bool) -> tuple[list[dict], str]:
    """The hits for --json (each carrying what its search understood, so it stays a list of hits), and
    the text to print: notes, and with --explain what was understood and every hit's explanation."""
    described = result.described()
    text = format_hits(result.hits)
    if explain:
        text = understood_lines(described) + text
        text += "\n\n" + "\n".join(f"{h.id}: {json.dumps(h.explanation)}" for h in result.hits)
    elif described and (described["notes"] or described.get("fell_back")):
        text = "\n".join(f"note: {n}" for n in described["notes"]) + "\n" + text
    rows = [h.to_dict() for h in result.hits]
    if described:
        rows = [{**r, "explanation": {**r["explanation"], "understood": described}} for r in rows]
    return rows, text


def understood_lines(described: dict | None) -> str:
    """ "understood: price < 50; brand = Kestrel (searched “sneakers”)" and any notes, for --explain."""
    if not described:
        return ""
    lines = []
    if described["summary"]:
        lines.append(f"understood: {described['summary']} (searched “{described['searched']}”; --literal: as typed)")
    if described.get("codes"):
        lines.append("looked up as codes: " + ", ".join(described["codes"]))
    lines += [f"note: {n}" for n in described["notes"]]
    return "\n".join(lines) + "\n\n" if lines else ""


@app.command("eval")
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Index folder to evaluate.")],
    queries: Annotated[
        Path | None, typer.Option("--queries", help="JSONL: text/image/like + relevant ids per line.")
    ] = None,
    per_type: Annotated[int, typer.Option("--per-type", help="Generated queries per type.")] = 150,
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (default DATA_DIR/eval.json).")] = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Measure P@10 (and over the best possible), R@10, nDCG@10 and MRR per query type, and tagging accuracy."""
    from tqdm import tqdm

    from search.evaluate import (
        attribute_queries,
        catalog_items,
        file_queries,
        fusion_queries,
        run_eval,
        tagging_accuracy,
        upload_queries,
    )
    from search.evaluate_shopper import shopper_queries

    with user_errors():
        engine = open_engine(data_dir)
        try:
            items = catalog_items(engine)
            if queries:
                try:
                    todo = file_queries(queries, ImagePolicy.from_settings(engine.settings))
                except (ValueError, ImageError) as exc:
                    raise UserError(str(exc)) from None
            else:
                todo = attribute_queries(items, per_type=per_type)
                todo += upload_queries(todo, items, ImagePolicy.from_settings(engine.settings))
                todo += fusion_queries(todo, ("rrf", "dbsf", "sum", "calibrated"))
                todo += shopper_queries(items, per_type=per_type)
                if not todo:
                    raise UserError(
                        "the catalog has no category/colour payloads to generate queries from: pass --queries FILE"
                    )
            bar = tqdm(total=len(todo), desc="evaluating", unit="q", disable=quiet)
            report = run_eval(engine, todo, lambda n, total: bar.update(n - bar.n))
            bar.close()
            report.tagging = tagging_accuracy(items)
        finally:
            engine.close()
        target = out or Path(data_dir) / "eval.json"
        target.write_text(json.dumps(report.to_dict(), indent=2))
        emit(report.to_dict(), as_json, report.table() + f"\n\nwritten to {target}")
