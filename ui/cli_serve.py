"""``lookalike serve``: the REST API (search, items, index jobs) over one index, with the web UI at /ui/."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from indexer import forbid_downloads
from search import QueryError, SearchSettings

from .cli import DataDir, UserError, app, user_errors


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Also serve the web UI at /ui/.")] = True,
) -> None:
    """Serve the REST API (OpenAPI docs at /docs) and the web UI (/ui/). A new data dir is indexed with POST /index."""
    import uvicorn

    from search.api import app_from_settings

    forbid_downloads()  # a request never waits on the hub: `lookalike models pull` fetches weights beforehand
    with user_errors():
        try:
            if ui:
                from .app import UISettings, create_ui_app

                api = create_ui_app(UISettings(**({"data_dir": data_dir} if data_dir else {})))
            else:
                api = app_from_settings(SearchSettings(**({"data_dir": data_dir} if data_dir else {})))
        except QueryError as exc:
            raise UserError(str(exc)) from None
    # One worker process only: the embedded store can be opened by one process at a time.
    uvicorn.run(api, host=host, port=port, log_level=os.environ.get("LOOKALIKE_LOG_LEVEL", "info").lower())
