"""The ``lookalike`` command line. Results go to stdout; progress, logs and errors to stderr."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from indexer import (
    CatalogError,
    EncoderError,
    EngineError,
    IndexManifest,
    IndexTarget,
    Settings,
    StoreError,
    TagVocab,
    TagVocabError,
    build_models,
    index_into,
    open_store,
    read_catalog,
    resolve_device,
)
from indexer.catalog import FeedFormat, parse_mapping

app = typer.Typer(
    name="lookalike",
    help="Multimodal catalog search: index product images and text, then search them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("lookalike")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Index folder (env LOOKALIKE_DATA_DIR).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
CatalogFormat = Annotated[
    FeedFormat | None,
    typer.Option("--format", help="Catalog layout; auto detects it from the header (env LOOKALIKE_CATALOG_FORMAT)."),
]
Engine = Annotated[
    str | None, typer.Option("--engine", help="local | ray: Ray Data over a cluster (env LOOKALIKE_ENGINE).")
]
RayAddress = Annotated[
    str | None, typer.Option("--ray-address", help="auto | HOST:6379 (a cluster node); default: a local Ray.")
]
GpusPerWorker = Annotated[
    float | None, typer.Option("--gpus-per-worker", min=0, help="GPUs per encoder worker (ray engine).")
]
ColumnMap = Annotated[
    list[str] | None,
    typer.Option("--map", help="FIELD=COLUMN for other layouts, repeatable: --map id=sku (env LOOKALIKE_CATALOG_MAP)."),
]

# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (CatalogError, EncoderError, EngineError, StoreError, TagVocabError, FileNotFoundError)


class UserError(Exception):
    """A problem with the command's input, reported in one line without a traceback."""


@contextmanager
def user_errors():
    try:
        yield
    except (UserError, *USER_ERRORS) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def settings_with(**overrides: Any) -> Settings:
    """Settings from the environment, with the CLI's explicit options on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def resolve_models(settings: Settings, manifest: IndexManifest | None) -> tuple[str, str]:
    """An existing index keeps its models unless they are named explicitly (flag or env)."""
    explicit = settings.model_fields_set
    clip = settings.clip_model if manifest is None or "clip_model" in explicit else manifest.clip_model
    text = settings.text_model if manifest is None or "text_model" in explicit else manifest.text_model
    return clip, text


def emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@app.command()
def index(
    catalog: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet catalog, or a folder of images.")],
    data_dir: DataDir = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP spec (env LOOKALIKE_CLIP_MODEL).")] = None,
    text_model: Annotated[
        str | None,
        typer.Option("--text-model", help="Sentence-transformers spec (env LOOKALIKE_TEXT_MODEL)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Decode threads; with --engine ray, encoder workers.")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="auto | float32 | float16 | bfloat16 (env LOOKALIKE_DTYPE)."),
    ] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete stored items gone from the catalog.")] = False,
    tags: Annotated[
        Path | None, typer.Option("--tags", help="Zero-shot tag vocabulary (YAML: label set -> labels).")
    ] = None,
    catalog_format: CatalogFormat = None,
    column_map: ColumnMap = None,
    engine: Engine = None,
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Embed every product of CATALOG and store it; re-runs only embed what changed."""
    from tqdm import tqdm

    with user_errors():
        settings = settings_with(
            data_dir=data_dir,
            clip_model=model,
            text_model=text_model,
            batch_size=batch_size,
            dtype=dtype,
            catalog_format=catalog_format,
            catalog_map=parse_mapping(column_map) if column_map else None,
            **_engine_overrides(engine, workers, ray_address, gpus_per_worker),
        )
        on_ray = settings.engine == "ray"
        if on_ray:
            from indexer.engine_ray import check_address

            check_address(settings.ray_address)  # before the models load: a wrong address fails at once
        manifest = IndexManifest.load(settings.data_dir)
        clip_spec, text_spec = resolve_models(settings, manifest)
        vocab = TagVocab.load(tags) if tags else (manifest.tag_vocab() if manifest else None)
        items = read_catalog(catalog, options=settings.feed_options())
        # On Ray the workers run the models on their own devices; the driver needs only ids and sizes.
        device = resolve_device("cpu") if on_ray else settings.torch_device()
        log.info("loading models on %s: %s, %s", device, clip_spec, text_spec)
        models = build_models(clip_spec, text_spec, device, vocab, settings.encoder_options())
        # An existing index keeps its store; a new one gets the settings' (default: DATA_DIR/store).
        store_spec = manifest.store if manifest and "store" not in settings.model_fields_set else settings.store_spec()
        store = open_store(store_spec, settings.server_access())
        bar = tqdm(total=len(items.items), unit="img", desc="indexing", disable=quiet, dynamic_ncols=True)
        build = _BuildBar(quiet)
        try:
            report = index_into(
                IndexTarget(settings.data_dir, store, store_spec, models),
                items,
                settings,
                settings.data_dir / "errors.jsonl",
                prune=prune,
                progress=lambda done, total: bar.update(done - bar.n),
                build_progress=build,
            )
        finally:
            bar.close()
            build.close()
            store.close()
        text = report.summary()
        if report.failed:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
            text += f"\n{report.failed} failed ({reasons}); details in {report.errors_path}"
        emit(report.to_dict(), as_json, text)


def _engine_overrides(engine: str | None, workers: int | None, address: str | None, gpus: float | None) -> dict:
    """The settings the engine flags set; ``--workers`` counts decode threads locally, encoders on Ray."""
    if engine not in (None, "local", "ray"):
        raise UserError(f"--engine {engine!r}: use local or ray")
    on_ray = (engine or Settings().engine) == "ray"
    return {
        "engine": engine,
        "workers": None if on_ray else workers,
        "ray_workers": workers if on_ray else None,
        "ray_address": address,
        "ray_gpus_per_worker": gpus,
    }


class _BuildBar:
    """The vector index build's bar, drawn once a bulk load's build starts."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar = quiet, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="vec", desc="building index", disable=self.quiet, dynamic_ncols=True)
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)
        else:
            self.bar.refresh()  # the elapsed time moves on while the engine reports no progress

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def info(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Show what an index holds: item count, models, vectors and payload fields."""
    with user_errors():
        settings = settings_with(data_dir=data_dir)
        manifest = IndexManifest.load(settings.data_dir)
        store_spec = manifest.store if manifest else settings.store_spec()
        store = open_store(store_spec, settings.server_access())
        try:
            schema = store.schema()
            if schema is None:
                raise UserError(f"no index in {settings.data_dir}: run `lookalike index CATALOG` first")
            data = {
                "data_dir": str(settings.data_dir),
                "store": store_spec,
                "items": store.count(),
                "models": {"clip": manifest.clip_model, "text": manifest.text_model} if manifest else {},
                "vectors": {
                    name: {"size": size, "model": schema.models.get(name)} for name, size in schema.vectors.items()
                },
                "payload_indexes": store.payload_indexes(),
                "tags": [t["name"] for t in manifest.tags] if manifest else [],
                "last_run": manifest.last_run if manifest else {},
            }
        finally:
            store.close()
        lines = [
            f"data dir:  {data['data_dir']}",
            f"store:     {store_spec}",
            f"items:     {data['items']}",
        ]
        if manifest:
            lines.append(f"models:    clip {manifest.clip_model}; text {manifest.text_model}")
        lines.append("vectors:")
        lines += [f"  {n:<9} {v['size']:>5}-d  {v['model']}" for n, v in data["vectors"].items()]
        lines.append("payload fields (indexed):")
        lines += [f"  {k:<22} {kind}" for k, kind in sorted(data["payload_indexes"].items())]
        emit(data, as_json, "\n".join(lines))


# Command modules register themselves on ``app``; imported here so ``lookalike`` has them all.
from . import cli_ask, cli_demo, cli_models, cli_search, cli_serve, cli_vary  # noqa: E402,F401


def _configure_logging() -> None:
    from asgi_correlation_id import CorrelationIdFilter

    level = os.environ.get("LOOKALIKE_LOG_LEVEL", "WARNING").upper()
    # Every line names the request it belongs to ("-" outside requests): [request id] level logger: message.
    logging.basicConfig(level=level, format="[%(correlation_id)s] %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(CorrelationIdFilter(default_value="-"))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Model-loading bars from transformers would drown the indexing bar.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _configure_logging()
    app()


if __name__ == "__main__":
    # Run as ``python -m ui.cli`` this file is ``__main__``, a second copy of the module: the command
    # modules register on ``ui.cli.app``, so that is the app to run.
    from ui.cli import main as _main

    _main()
