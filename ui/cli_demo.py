"""``lookalike demo-catalog``, ``lookalike train`` and ``lookalike demo`` (what ``make demo`` runs)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from indexer.demo_catalog import (
    DEMO_SEED,
    DEMO_TEST_ITEMS,
    DEMO_TRAIN_ITEMS,
    DemoCatalogConfig,
    DemoDatasetMissing,
    DemoFormat,
    build_demo_catalog,
    write_tag_vocab,
)
from indexer.training import TrainConfig, TrainError, train_clip

from .cli import AsJson, Quiet, UserError, app, emit, user_errors

DEMO_EPOCHS = 17
DEMO_EXAMPLES = (
    ("red striped dress", {}),
    ("blue sneaker", {"filters": ["price<60"]}),
    ("coat", {"negative": "black"}),
    ("Kestrel sneakers under 60 dollars", {}),
    ("test-06839", {}),
)


def _bar(desc: str, quiet: bool, unit: str = "it"):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, disable=quiet, dynamic_ncols=True)

    def update(done: int, total: int, info: dict | None = None) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if info:
            bar.set_postfix(info, refresh=False)

    return bar, update


@app.command("demo-catalog")
def demo_catalog(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write catalog.jsonl and images/ into.")],
    items: Annotated[int, typer.Option("--items", min=1, help="Number of products.")] = DEMO_TEST_ITEMS,
    seed: Annotated[int, typer.Option("--seed")] = DEMO_SEED,
    split: Annotated[str, typer.Option("--split", help="train | test (test uses held-out photos only).")] = "test",
    feed_format: Annotated[
        DemoFormat,
        typer.Option(
            "--format",
            help="plain (catalog.jsonl), shopify (products.csv), gmc (feed.tsv) or gmc-xml (feed.xml); "
            "the shop formats give each product three photos.",
        ),
    ] = "plain",
    quiet: Quiet = False,
) -> None:
    """Write a demo catalog of real product photos (Fashion-MNIST), recoloured and patterned."""
    with user_errors():
        if split not in ("train", "test"):
            raise UserError(f"--split must be train or test, not {split!r}")
        config = DemoCatalogConfig(items=items, seed=seed, split=split, format=feed_format)
        path = _build_catalog(out_dir, config, quiet)
        write_tag_vocab(out_dir / "tags.yaml")
        typer.echo(f"{path} ({items} items); zero-shot tag vocabulary: {out_dir / 'tags.yaml'}")


@app.command()
def train(
    catalog: Annotated[Path, typer.Argument(help="Catalog to train on (any format `lookalike index` reads).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    model: Annotated[
        str, typer.Option("--model", help="lookalike-mini (from scratch) or openclip:ARCH/WEIGHTS to fine-tune.")
    ] = "lookalike-mini",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = DEMO_EPOCHS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 256,
    lr: Annotated[float | None, typer.Option("--lr", help="Default 2e-3 from scratch, 1e-5 fine-tuning.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    precision: Annotated[
        str, typer.Option("--precision", help="amp: the image tower in bfloat16 on CPUs with native bf16; float32.")
    ] = "amp",
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Contrastive image/text training: from scratch, or fine-tuning a pretrained CLIP on your catalog.

    Interrupted runs resume from the last saved step when the same command is run again."""
    with user_errors():
        config = TrainConfig(
            catalog=catalog,
            out=out,
            model=model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            precision=precision,
        )
        report = _train(config, quiet)
        data = {**report.__dict__, "checkpoint": str(report.checkpoint)}
        emit(data, as_json, f"wrote {report.checkpoint} in {report.seconds:.0f}s; use it with --model {report.spec}")


@app.command()
def demo(
    root: Annotated[Path, typer.Option("--root", help="Where the demo keeps its data.")] = Path("demo-data"),
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 7860,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Stop after the example searches.")] = False,
) -> None:
    """Build the demo catalog, train (or reuse) its model, index, evaluate, search, then start the UI."""
    from search import SearchSettings

    from .cli_search import open_engine

    with user_errors():
        started = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        _step(1, "demo catalogs (Fashion-MNIST photos, recoloured and patterned)")
        train_catalog = _build_catalog(root / "catalog-train", DemoCatalogConfig(items=DEMO_TRAIN_ITEMS, split="train"))
        test_catalog = _build_catalog(root / "catalog-test", DemoCatalogConfig(items=DEMO_TEST_ITEMS, split="test"))
        tags = write_tag_vocab(root / "tags.yaml")

        checkpoint = root / "models" / "lookalike-mini.pt"
        if checkpoint.exists():
            _step(2, f"demo model: reusing {checkpoint}")
        else:
            _step(2, f"training the demo model on {DEMO_TRAIN_ITEMS} training items (held-out items are never seen)")
            _train(TrainConfig(catalog=train_catalog, out=checkpoint, epochs=DEMO_EPOCHS), quiet=False)

        _step(3, "indexing the held-out test catalog with zero-shot tags")
        data_dir = root / "index"
        _index(test_catalog, data_dir, checkpoint, tags)

        settings = SearchSettings(data_dir=data_dir)
        eval_json = data_dir / "eval.json"
        if not eval_json.exists():
            _step(4, "evaluating (P@10, R@10, nDCG@10, MRR per query type)")
            from .cli_search import evaluate

            evaluate(data_dir=data_dir, queries=None, per_type=150, out=eval_json, quiet=False, as_json=False)
        else:
            _step(4, f"evaluation: see {eval_json} (delete it to measure again)")
            _print_eval(eval_json)

        _step(5, "example searches")
        from search import Query, parse_filters

        from .cli_search import format_hits

        engine = open_engine(settings.data_dir)
        try:
            for text, extra in DEMO_EXAMPLES:
                flt = parse_filters(extra.get("filters", []), engine.fields)
                hits = engine.search(Query(text=text, negative=extra.get("negative"), filters=flt, k=5))
                label = text + "".join(f"  {k}={v}" for k, v in extra.items())
                typer.echo(f"\n$ lookalike search {label!r}\n{format_hits(hits)}")
        finally:
            engine.close()
        typer.echo(f"\ndemo ready in {time.perf_counter() - started:.0f}s; index: {data_dir}")
        if no_ui:
            return
    _start_ui(data_dir, host, port)


def _start_ui(data_dir: Path, host: str, port: int) -> None:
    try:
        from .cli_serve import ui_command
    except ImportError as exc:  # gradio is an optional extra
        typer.echo(f"(the UI needs the [ui] extra: {exc}; search with `lookalike search --data-dir {data_dir}`)")
        return
    ui_command(data_dir=data_dir, host=host, port=port)


def _step(n: int, text: str) -> None:
    typer.secho(f"\n[{n}/5] {text}", bold=True, err=True)


def _build_catalog(out_dir: Path, config: DemoCatalogConfig, quiet: bool = False) -> Path:
    catalog = out_dir / "catalog.jsonl"
    # The shortcut counts JSONL lines; a shop feed is rebuilt, which reuses every photo already written.
    if config.format == "plain" and catalog.exists() and sum(1 for _ in catalog.open()) >= config.items:
        return catalog
    bar, update = _bar(f"{config.split} catalog", quiet, "img")
    try:
        return build_demo_catalog(out_dir, config, update)
    except (DemoDatasetMissing, FileExistsError, ValueError) as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()


def _train(config: TrainConfig, quiet: bool):
    bar, update = _bar("training", quiet, "step")
    try:
        return train_clip(config, update)
    except TrainError as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()


def _index(catalog: Path, data_dir: Path, checkpoint: Path, tags: Path) -> None:
    from indexer.encoders import file_digest

    from .cli import index

    # The demo index is derived data: when the demo model was retrained, rebuild it rather than
    # refuse the model change. The marker is written first so an interrupted run still resumes.
    digest = file_digest(checkpoint)
    marker = data_dir / ".demo-model"
    if data_dir.exists() and (not marker.exists() or marker.read_text() != digest):
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    spec = f"openclip:lookalike-mini/{checkpoint}"
    index(
        catalog=catalog,
        data_dir=data_dir,
        model=spec,
        text_model=None,
        batch_size=None,
        workers=None,
        prune=True,
        tags=tags,
        quiet=False,
        as_json=False,
    )


def _print_eval(path: Path) -> None:
    from search.evaluate import EvalReport

    data = json.loads(path.read_text())
    report = EvalReport(rows=data["metrics"], groups=data["per_group"], tagging=data["tagging"])
    typer.echo(report.table())
