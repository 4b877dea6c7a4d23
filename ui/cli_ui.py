"""``lookalike ui``: the web UI (Shop, Catalog, Ask, Create) and the REST API, served together."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from indexer import forbid_downloads
from search import QueryError

from .cli import DataDir, UserError, app, user_errors


@app.command("ui")
def ui_command(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 7860,
) -> None:
    """Serve the web UI at /ui/ and the REST API (docs at /docs) on one server, over one index.

    A new data dir starts empty: upload a catalog in the Catalog tab. The Ask tab and VLM re-ranking need
    LOOKALIKE_VLM; the Create tab uses LOOKALIKE_GENERATOR.
    """
    import uvicorn

    from .app import UI_PATH, UISettings, create_ui_app

    forbid_downloads()  # a request never waits on the hub: `lookalike models pull` fetches weights beforehand
    with user_errors():
        settings = UISettings(**({"data_dir": data_dir} if data_dir else {}))
        try:
            api = create_ui_app(settings)
        except QueryError as exc:
            raise UserError(str(exc)) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(
        f"lookalike: UI at http://{shown}:{port}{UI_PATH}/ , REST API docs at http://{shown}:{port}/docs", err=True
    )
    # One worker process only: the embedded store can be opened by one process at a time.
    uvicorn.run(api, host=host, port=port, log_level=os.environ.get("LOOKALIKE_LOG_LEVEL", "info").lower())
