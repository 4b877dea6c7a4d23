"""``lookalike serve`` and ``lookalike ui``: the REST API and the web UI over one index, on one server."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated

import typer

from indexer import forbid_downloads
from search import QueryError, SearchSettings

from .cli import DataDir, UserError, app, user_errors

Host = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Address to listen on (env LOOKALIKE_HOST; default 127.0.0.1). Beyond loopback, writes need "
        "LOOKALIKE_ADMIN_TOKEN.",
    ),
]


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Host = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Also serve the web UI at /ui/.")] = True,
) -> None:
    """Serve the REST API (OpenAPI docs at /docs) and the web UI (/ui/). A new data dir is indexed with POST /index."""
    run_server(data_dir, host, port, ui)


@app.command("ui")
def ui_command(
    data_dir: DataDir = None,
    host: Host = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 7860,
) -> None:
    """Serve the web UI at /ui/ and the REST API (docs at /docs) on one server, over one index.

    A new data dir starts empty: upload a catalog in the Catalog tab. The Ask tab and VLM re-ranking need
    LOOKALIKE_VLM; the Create tab uses LOOKALIKE_GENERATOR.
    """
    run_server(data_dir, host, port, ui=True)


def run_server(data_dir: Path | None, host: str | None, port: int, ui: bool) -> None:
    import uvicorn

    from search.api import app_from_settings

    overrides = {k: v for k, v in {"data_dir": data_dir, "host": host}.items() if v is not None}
    forbid_downloads()  # a request never waits on the hub: `lookalike models pull` fetches weights beforehand
    with user_errors():
        try:
            if ui:
                from .app import UI_PATH, UISettings, create_ui_app

                settings = UISettings(**overrides)
                api = create_ui_app(settings)
            else:
                settings = SearchSettings(**overrides)
                api = app_from_settings(settings)
        except QueryError as exc:
            raise UserError(str(exc)) from None
    # The models and the index make hundreds of thousands of long-lived objects; each full collection
    # walked them all (0.45 s at 100k items, the p95 of text searches). Frozen, they are never walked again.
    gc.collect()
    gc.freeze()
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    where = f"UI at http://{shown}:{port}{UI_PATH}/ , " if ui else ""
    typer.echo(f"lookalike: {where}REST API docs at http://{shown}:{port}/docs", err=True)
    # One worker process only: the embedded store can be opened by one process at a time. log_config=None:
    # uvicorn's loggers go through the CLI's logging setup, so every line carries the request id.
    level = os.environ.get("LOOKALIKE_LOG_LEVEL", "info").lower()
    uvicorn.run(api, host=settings.host, port=port, log_level=level, log_config=None)
