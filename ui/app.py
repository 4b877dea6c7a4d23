"""The web UI: one Gradio app for shoppers (Shop), catalog teams (Catalog) and analysts (Ask, Create).

It is mounted into the REST API's FastAPI app (``/ui``), so both run in one process on one search engine:
every handler calls the engine in-process, and index jobs run in the API's own ``JobRunner``.

Every handler goes through ``friendly``: errors a user can fix become a readable message in the page
(``gr.Error``), anything else is logged with its traceback and shown as a short generic message.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from PIL import Image, ImageDraw
from pydantic import Field, ValidationError

from generation import GeneratorError, GeneratorSettings, RequestError
from indexer import CatalogError, ImageError, ImagePolicy, StoreError, TagVocabError, WeightsMissing
from indexer.images import is_url, load_image
from search import FilterError, QueryError, RerankError, SearchEngine, SearchSettings, invalid_input
from search.access import AccessDenied, WriteGuard, client_key
from search.jobs import JobConflict, JobRunner
from search.limits import LimitExceeded, RateLimits
from vlm import AskError, VLMError, VLMSettings, not_configured, vlm_query_parser, vlm_reranker

log = logging.getLogger(__name__)

UI_PATH = "/ui"
THUMBS_DIR = "ui-thumbs"
UPLOADS_DIR = "uploads"

T = TypeVar("T")


class UISettings(SearchSettings):
    """Settings of the web UI (``LOOKALIKE_UI_*``), on top of the search settings."""

    ui_page_size: int = Field(24, ge=1, le=100, description="Results shown per search.")
    ui_thumb_px: int = Field(256, ge=64, le=1024, description="Longest side of result thumbnails.")
    ui_max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="Largest catalog upload.")
    ui_zip_max_entries: int = Field(100_000, ge=1, description="Most files a catalog zip may hold.")
    ui_zip_max_bytes: int = Field(4 * 1024**3, ge=1024, description="Most bytes a catalog zip may unpack to.")
    ui_facet_max_values: int = Field(40, ge=2, le=1000, description="Keyword fields with more values get no picker.")
    ui_search_concurrency: int = Field(4, ge=1, le=64, description="Searches run at once; more wait in the queue.")
    ui_heavy_concurrency: int = Field(1, ge=1, le=16, description="VLM questions and generations run at once.")


class UploadError(ValueError):
    """An uploaded file that cannot be used as a catalog or an image."""


# Errors a user can act on: their message is shown as is. Anything else is a bug: logged, and shown generically.
USER_ERRORS: tuple[type[BaseException], ...] = (
    QueryError,
    FilterError,
    ImageError,
    CatalogError,
    TagVocabError,
    JobConflict,
    RerankError,
    VLMError,
    AskError,
    GeneratorError,
    RequestError,
    UploadError,
    WeightsMissing,
    FileNotFoundError,
    ValidationError,
    AccessDenied,
    LimitExceeded,
)
GENERIC_ERROR = "Something went wrong on the server, and it has been logged. Try again, or try a different request."


def error_message(exc: BaseException) -> str:
    """A readable HTML-safe message for a user error (gr.Error renders HTML, so user text is escaped)."""
    if isinstance(exc, ImageError):
        text = f"That image cannot be used: {exc.detail}"
    elif isinstance(exc, StoreError):
        text = f"The index cannot be read right now: {exc}"
    elif isinstance(exc, FileNotFoundError):
        text = f"File not found: {exc.filename or exc}"
    elif isinstance(exc, LimitExceeded):
        text = f"{str(exc)[:1].upper()}{str(exc)[1:]}."
    elif isinstance(exc, ValidationError):
        text = f"That search cannot be run: {invalid_input(exc)}"
    else:
        text = str(exc)
    return html.escape(text, quote=False).replace("\n", "<br>")


def product_gallery(label: str, columns: int = 6, **kwargs: Any) -> gr.Gallery:
    """A grid of product thumbnails as every tab shows them: fixed columns, natural height, no lightbox."""
    return gr.Gallery(
        label=label,
        columns=columns,
        height="auto",
        fit_columns=False,
        allow_preview=False,
        elem_classes="lk-grow",
        **kwargs,
    )


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the known errors of a handler into gr.Error messages; never show a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as exc:
            log.info("%s: %s", fn.__name__, exc)
            message = error_message(exc)
            # A catalog's list of problems takes longer to read than the usual one-liner.
            raise gr.Error(message, duration=10 if len(message) < 200 else None, print_exception=False) from None
        except StoreError as exc:
            log.error("%s: store error: %s", fn.__name__, exc)
            raise gr.Error(error_message(exc), print_exception=False) from None
        except Exception:
            log.exception("UI handler %s failed", fn.__name__)
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None

    return wrapper


# -- thumbnails ---------------------------------------------------------------------------------


class Thumbnails:
    """Small WebP copies of item images, made on first use under ``DATA_DIR/ui-thumbs`` and served from there.

    Result pages then load a few kilobytes per item instead of full product photos; http(s) images are left
    to the browser, which fetches them itself.
    """

    def __init__(self, root: Path, policy: ImagePolicy, workers: int = 4) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="thumbs")
        self._placeholder = self.root / "no-image.webp"
        if not self._placeholder.exists():
            image = Image.new("RGB", (256, 256), (236, 236, 240))
            ImageDraw.Draw(image).text((92, 122), "no image", fill=(120, 120, 130))
            image.save(self._placeholder, "WEBP")

    def get(self, source: Any, size: int) -> str:
        if not isinstance(source, str) or not source:
            return str(self._placeholder)
        if is_url(source):
            return source if source.lower().startswith(("http://", "https://")) else str(self._placeholder)
        try:
            stat = os.stat(source)
        except OSError:
            return str(self._placeholder)
        key = hashlib.sha1(f"{source}|{stat.st_mtime_ns}|{stat.st_size}|{size}".encode()).hexdigest()
        path = self.root / key[:2] / f"{key}.webp"
        if path.exists():
            return str(path)
        try:
            image, _ = load_image(source, self.policy)
        except ImageError as exc:
            log.warning("no thumbnail for %s: %s", source, exc)
            return str(self._placeholder)
        image.thumbnail((size, size))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.{threading.get_ident()}.tmp")
        image.save(tmp, "WEBP", quality=82)
        os.replace(tmp, path)  # atomic, so two requests making the same thumbnail never show half a file
        return str(path)

    def many(self, sources: list[Any], size: int) -> list[str]:
        return list(self._pool.map(lambda s: self.get(s, size), sources))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


# -- what every tab shares ---------------------------------------------------------------------


class Services:
    """The engine, job runner and lazily built VLM and generator that the tabs call."""

    def __init__(
        self, engine: SearchEngine, jobs: JobRunner, settings: UISettings, guard: WriteGuard, limits: RateLimits
    ) -> None:
        from .app_catalog import FacetCache

        self.engine, self.jobs, self.settings = engine, jobs, settings
        self.guard, self.limits = guard, limits
        data_dir = Path(settings.data_dir)
        self.thumbs = Thumbnails(data_dir / THUMBS_DIR, ImagePolicy.from_settings(settings))
        self.facets = FacetCache(engine, settings.ui_facet_max_values)
        self.uploads = data_dir / UPLOADS_DIR
        self.vlm_settings = VLMSettings(data_dir=data_dir)
        self.gen_settings = GeneratorSettings(data_dir=data_dir)
        self._lock = threading.Lock()
        self._vlm: Any = None
        self._generator: Any = None

    def count(self, kind: str, request: gr.Request | None) -> None:
        """Count one ``kind`` call (search, vlm, generate) against the client's rate limit."""
        client = request.client.host if request is not None and request.client else None
        headers = request.headers if request is not None else {}
        self.limits.hit(kind, client_key(client, headers.get("authorization")))

    def check_write(self, request: gr.Request | None, token: str | None) -> None:
        """Raise AccessDenied unless this browser session may change the catalog."""
        client = request.client.host if request is not None and request.client else None
        self.guard.check(client, (token or "").strip() or None)

    def query_policy(self) -> ImagePolicy:
        s = self.settings
        return ImagePolicy(s.max_upload_bytes, s.max_image_pixels, s.url_timeout, s.allow_private_urls, retries=1)

    def vlm(self, feature: str) -> Any:
        """The configured VLM, made on first use; VLMNotConfigured names LOOKALIKE_VLM when none is set."""
        from vlm import vlm_from_settings

        with self._lock:
            if self._vlm is None:
                self._vlm = vlm_from_settings(self.vlm_settings, feature, self.vlm_settings.torch_device())
            return self._vlm

    def generator(self) -> Any:
        from generation import make_generator

        with self._lock:
            if self._generator is None:
                self._generator = make_generator(self.gen_settings, self.gen_settings.torch_device())
            return self._generator

    def vlm_status(self) -> str:
        if not self.vlm_settings.vlm:
            return html.escape(not_configured("This"))
        return f"VLM in use: `{self.vlm_settings.vlm}` (LOOKALIKE_VLM)"

    def generator_status(self) -> str:
        return f"Generator: `{self.gen_settings.generator}` (LOOKALIKE_GENERATOR)"

    def header(self) -> str:
        return f"## lookalike\n{self.index_summary()}"

    def index_summary(self) -> str:
        count = self.engine.store.count() if self.engine.store.schema() is not None else 0
        if not count:
            return "The index is empty: upload a catalog in the **Catalog** tab."
        return f"{count:,} products indexed"

    def close(self) -> None:
        self.thumbs.close()
        for thing in (self._vlm, self._generator):
            close = getattr(thing, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # shutting down: a failing close must not stop the others
                    log.exception("closing %s failed", thing)


# -- the app ------------------------------------------------------------------------------------

CSS = """
.lk-status p { margin: 0.2em 0; }
/* Result grids grow with the page instead of scrolling inside a box. */
.lk-grow .grid-wrap { max-height: none !important; min-height: 0 !important; }
.lk-grow .caption-label { white-space: normal; font-size: 0.8em; line-height: 1.2; }
@media (max-width: 1024px) {
  .lk-grow .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
}
@media (max-width: 640px) {
  .lk-grow .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  .gradio-container { padding: 4px !important; }
}
"""


def build_blocks(services: Services) -> gr.Blocks:
    """The four tabs, wired to ``services``."""
    from .app_catalog import build_catalog_tab
    from .app_shop import build_shop_tab
    from .app_studio import build_ask_tab, build_create_tab

    # delete_cache: uploads and generated files in Gradio's cache go after a day, checked hourly.
    with gr.Blocks(title="lookalike", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        header = gr.Markdown("## lookalike", elem_id="lk-header")
        with gr.Tabs(elem_id="lk-tabs") as tabs:
            with gr.Tab("Shop", id="shop", elem_id="tab-shop"):
                shop = build_shop_tab(services)
            with gr.Tab("Catalog", id="catalog", elem_id="tab-catalog"):
                catalog = build_catalog_tab(services, shop, header)
            with gr.Tab("Ask", id="ask", elem_id="tab-ask"):
                ask = build_ask_tab(services, shop)
            with gr.Tab("Create", id="create", elem_id="tab-create"):
                create = build_create_tab(services, shop, tabs)

        def on_load(request: gr.Request) -> tuple[Any, ...]:
            return (
                services.header(),
                *shop.filter_updates(),
                *catalog.on_load(request),
                ask.status(),
                create.status(),
            )

        blocks.load(
            friendly(on_load),
            outputs=[header, *shop.filter_outputs, *catalog.load_outputs, ask.status_box, create.status_box],
            api_visibility="private",
            show_progress="hidden",
        )
    s = services.settings
    blocks.queue(default_concurrency_limit=s.ui_search_concurrency, max_size=256)
    return blocks


def mount_ui(app: FastAPI, settings: UISettings, path: str = UI_PATH) -> FastAPI:
    """Mount the UI into ``app`` (made by ``search.api.create_app``), on its engine and job runner."""
    services = Services(app.state.engine, app.state.jobs, settings, app.state.guard, app.state.limits)
    blocks = build_blocks(services)
    # Thumbnails are static: served straight from disk, never copied into Gradio's cache.
    gr.set_static_paths([services.thumbs.root])
    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    gr.mount_gradio_app(
        app,
        blocks,
        path=path,
        allowed_paths=[str(Path(settings.data_dir).resolve() / "jobs")],
        max_file_size=settings.ui_max_upload_bytes,
        footer_links=["api"],
        run_history=False,
        theme=theme,
        css=CSS,
        ssr_mode=False,
        mcp_server=False,
    )
    app.state.ui = services

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{path}/")

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            yield state
        services.close()

    app.router.lifespan_context = lifespan  # type: ignore[assignment]
    return app


def create_ui_app(settings: UISettings) -> FastAPI:
    """The REST API plus the UI over the index in ``settings.data_dir``, as one FastAPI app."""
    from search.api import app_from_settings

    vlm_settings = VLMSettings(data_dir=settings.data_dir)
    # The VLM re-ranker shows the VLM the reference item of "more like this" queries, found through the engine.
    app: FastAPI = app_from_settings(
        settings,
        rerankers={"vlm": vlm_reranker(vlm_settings, lookup=lambda i: app.state.engine.get(i))},
        parsers={"vlm": vlm_query_parser(vlm_settings)},
    )
    return mount_ui(app, settings)
