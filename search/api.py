"""The REST API: search, items, similar items, index jobs and health, as a FastAPI app.

Bad input always gets a 4xx with a JSON body ``{"detail": message, "error": code}``; request bodies that
do not fit the schema get FastAPI's usual 422 with the failing fields. Encoding a query is CPU work, so
every engine call runs in the threadpool and the event loop stays free for other requests.

``create_app`` only wires routes to an engine and a job runner, so other front ends (the Gradio UI) can be
mounted into the same app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from indexer import (
    CatalogError,
    ImageError,
    ImagePolicy,
    IndexManifest,
    StoreError,
    TagVocabError,
    WeightsMissing,
    build_models,
    open_store,
)
from indexer.images import decode_upload, is_http_url, is_url, load_image

from .access import AccessDenied, WriteGuard, bearer, client_key
from .api_models import (
    ApiError,
    HealthOut,
    HitOut,
    IndexRequest,
    ItemOut,
    JobAccepted,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from .engine import SearchEngine
from .filters import FilterError, parse_filters
from .jobs import Job, JobConflict, JobRunner, ServerPathError, resolve_server_path
from .limits import LimitExceeded, RateLimits
from .observe import REQUEST_ID_HEADER, SEARCH_SECONDS, observe
from .photos import photo_sources
from .query import Hit, QueryError, SearchSettings
from .rerank import RerankerFactory
from .understand import QueryParser

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 256 * 1024
FORM_OVERHEAD = 256 * 1024  # room for the text fields and multipart framing next to the image
_SIZE_REASONS = {"too_large", "too_many_pixels", "decompression_bomb"}


SEARCH_EXAMPLES = {
    "text": {"value": {"text": "red striped dress", "k": 10}},
    "filtered": {
        "value": {"text": "dress", "negative": "striped", "filters": ["price<50"], "weights": "image=0.6,text=0.4"}
    },
    "composed": {"value": {"like": "ITEM_ID", "text": "in blue", "k": 5, "min_score": 0.2}},
}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    # A form field that is left out is None; there is no way to send null in a form.
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        return {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")}, **options[0]}
    return schema


def _search_body_schema() -> dict[str, Any]:
    # /search reads its body by hand (JSON or multipart), so its request schema is declared here.
    json_schema = SearchRequest.model_json_schema()
    form_props = {
        **{name: _not_null(prop) for name, prop in json_schema["properties"].items()},
        "filters": {"type": "array", "items": {"type": "string"}, "description": "Repeat the field per filter."},
        "weights": {"type": "string", "description": "image=0.6,text=0.4"},
        "image": {"type": "string", "format": "binary", "description": "Query image file."},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema, "examples": SEARCH_EXAMPLES},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": form_props, "additionalProperties": False}
                },
            },
        }
    }


# -- the app ------------------------------------------------------------------------------------


def create_app(engine: SearchEngine, jobs: JobRunner, *, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``engine``. With ``close_on_shutdown`` the app stops ``jobs`` and closes ``engine`` on exit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            await run_in_threadpool(jobs.close)
            engine.close()

    app = FastAPI(
        title="lookalike",
        summary="Multimodal catalog search: text, image and 'like this but different' queries.",
        version="0.1.0",
        lifespan=lifespan,
    )
    settings: SearchSettings = engine.settings
    app.state.engine, app.state.jobs = engine, jobs
    app.state.guard = guard = WriteGuard(settings.admin_token, settings.host)
    app.state.limits = limits = RateLimits(settings.rate_limits())
    _add_error_handlers(app)
    observe(app, jobs)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses=error_responses(400, 409, 413, 415, 422),
        openapi_extra=_search_body_schema(),
    )
    async def search(request: Request) -> SearchResponse:
        """Search by JSON body, or by multipart form with an ``image`` file plus the same fields."""
        started = time.perf_counter()
        client = _client(request)
        limits.hit("search", client)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload: bytes | None = None
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            body = await _read_body(request, settings.max_upload_bytes + FORM_OVERHEAD)
            fields, upload = await _parse_form(request, body, settings.max_upload_bytes)
            req = _validate(SearchRequest, fields)
        elif content_type in ("", "application/json") or content_type.endswith("+json"):
            body = await _read_body(request, JSON_BODY_LIMIT)
            req = _validate_json(SearchRequest, body or b"{}")
        else:
            raise ApiError(415, f"send application/json or multipart/form-data, not {content_type}", "media_type")
        if req.rerank == "vlm":
            limits.hit("vlm", client)
        return await run_in_threadpool(_run_search, engine, req, upload, started)

    @app.get("/items/{item_id:path}/image", responses=error_responses(404), response_class=Response)
    def item_image(
        item_id: str, photo: Annotated[int, QueryParam(ge=0, description="Which of its images; 0: the main one.")] = 0
    ) -> Response:
        """The item's stored image: the file it was indexed from, or a redirect to its URL."""
        hit = _item(engine, item_id)
        images = photo_sources(hit.payload)
        if photo >= len(images):
            raise ApiError(404, f"item {item_id!r} has {len(images)} image(s), no photo {photo}", "no_image")
        source = images[photo] if photo else hit.payload.get("image")
        if not isinstance(source, str) or not source:
            raise ApiError(404, f"item {item_id!r} has no stored image", "no_image")
        if is_url(source):
            if is_http_url(source):
                return RedirectResponse(source, status_code=307)
            raise ApiError(404, f"item {item_id!r} has an image URL that cannot be served", "no_image")
        path = Path(source)
        if not path.is_file():
            raise ApiError(404, f"the image file of item {item_id!r} is no longer on the server", "image_missing")
        return FileResponse(path, media_type=_media_type(path))

    @app.get("/items/{item_id:path}/similar", response_model=SearchResponse, responses=error_responses(400, 404, 409))
    def similar(
        request: Request,
        item_id: str,
        k: Annotated[int, QueryParam(ge=1)] = 10,
        filter: Annotated[list[str] | None, QueryParam(description="Repeatable filter expression.")] = None,
        photo: Annotated[int | None, QueryParam(ge=0, description="Start from this one of its images.")] = None,
    ) -> SearchResponse:
        """Items that look like this one (the item itself excluded), or like one of its photos."""
        started = time.perf_counter()
        limits.hit("search", _client(request))
        _require_index(engine)
        _item(engine, item_id)
        hits = engine.similar(item_id, k=k, filters=parse_filters(filter or [], engine.fields), photo=photo)
        SEARCH_SECONDS.labels("image").observe(time.perf_counter() - started)
        return _response(hits, "image", started)

    @app.get("/items/{item_id:path}", response_model=ItemOut, responses=error_responses(404))
    def item(item_id: str) -> ItemOut:
        """One catalog item's payload."""
        hit = _item(engine, item_id)
        return ItemOut(id=hit.id, payload=hit.public_payload(), image_url=hit.image_url)

    @app.post("/index", status_code=202, response_model=JobAccepted, responses=error_responses(400, 401, 403, 409))
    def start_index(request: Request, req: IndexRequest) -> JobAccepted:
        """Index (or re-index, or prune) a catalog on the server in the background; poll ``GET /jobs/{id}``.

        A write: it needs ``Authorization: Bearer LOOKALIKE_ADMIN_TOKEN`` when the server has a token, and
        a loopback client on a loopback-only server when it has none."""
        guard.check(request.client.host if request.client else None, bearer(request.headers.get("authorization")))
        guard.check_server_path(settings.catalog_root)
        paths = {}
        for name, value in (("catalog", req.catalog), ("tags", req.tags)):
            if value is not None:
                try:
                    paths[name] = str(resolve_server_path(value, settings.catalog_root, name))
                except ServerPathError as exc:
                    raise ApiError(400, str(exc), exc.code) from None
        job = jobs.submit(paths["catalog"], prune=req.prune, tags=paths.get("tags"))
        return JobAccepted(job_id=job.id, status=job.status, url=f"/jobs/{job.id}")

    @app.get("/jobs", response_model=list[Job])
    def list_jobs(limit: Annotated[int, QueryParam(ge=1, le=200)] = 20) -> list[Job]:
        """Recent index jobs, newest first."""
        return jobs.recent(limit)

    @app.get("/jobs/{job_id}", response_model=Job, responses=error_responses(404))
    def get_job(job_id: str) -> Job:
        """An index job's progress (done/total, images/s, ETA), final report and failed items (``errors``)."""
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no index job {job_id!r}", "unknown_job")
        return job

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        """Liveness plus what the index holds."""
        items = engine.store.count()
        running = jobs.running()
        return HealthOut(
            status="ok" if items else "empty",
            items=items,
            # Model ids, not specs: a spec can hold a checkpoint's path on the server.
            models={"clip": engine.models.clip.model_id, "text": engine.models.text.model_id},
            fields=dict(engine.fields),
            job=running.id if running else None,
        )

    return app


def app_from_settings(
    settings: SearchSettings,
    rerankers: dict[str, RerankerFactory] | None = None,
    parsers: dict[str, QueryParser] | None = None,
) -> FastAPI:
    """The API over the index in ``settings.data_dir``; a new data dir gets the settings' default models.

    ``rerankers`` and ``parsers`` add re-rankers and query parsers by name (e.g. ``{"vlm": ...}`` from the
    vlm package) to the engine."""
    if IndexManifest.load(settings.data_dir) is not None:
        engine = SearchEngine(settings, rerankers=rerankers, parsers=parsers)
    else:
        log.info("no index in %s yet: loading %s and %s", settings.data_dir, settings.clip_model, settings.text_model)
        models = build_models(
            settings.clip_model, settings.text_model, settings.torch_device(), options=settings.encoder_options()
        )
        store = open_store(settings.store_spec(), settings.server_access())
        engine = SearchEngine(settings, store=store, models=models, rerankers=rerankers, parsers=parsers)
    return create_app(engine, JobRunner(engine), close_on_shutdown=True)


# -- helpers ------------------------------------------------------------------------------------


def _run_search(engine: SearchEngine, req: SearchRequest, upload: bytes | None, started: float) -> SearchResponse:
    _require_index(engine)
    policy = _query_policy(engine.settings)
    image: Image.Image | None = None
    if upload is not None and req.image_url:
        raise ApiError(400, "give either an uploaded image or image_url, not both", "query")
    if upload is not None:
        image = decode_upload(upload, policy)
    elif req.image_url:
        if not is_http_url(req.image_url):
            # Never a server-side path: that would let clients read the server's files.
            raise ApiError(400, "image_url must be an http(s) URL; to send a file, upload it", "image_url")
        image, _ = load_image(req.image_url, policy)
    query = req.to_query(engine.fields, image)
    result = engine.run(query)
    took = time.perf_counter() - started
    SEARCH_SECONDS.labels(query.kind).observe(took)
    log.info("%s search: %d hits in %.1f ms", query.kind, len(result.hits), took * 1000)
    return _response(result.hits, query.kind, started, result.described())


def _response(hits: list[Hit], kind: str, started: float, understood: dict[str, Any] | None = None) -> SearchResponse:
    return SearchResponse(
        hits=[
            HitOut(
                id=h.id,
                score=round(h.score, 6),
                relevance=None if h.relevance is None else round(h.relevance, 4),
                payload=h.public_payload(),
                explanation=h.explanation,
                image_url=h.image_url,
                photo=h.photo,
            )
            for h in hits
        ],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        kind=kind,  # type: ignore[arg-type]
        understood=understood,
    )


def _query_policy(settings: SearchSettings) -> ImagePolicy:
    # Read per request, so a changed setting applies without a restart; a shopper waits, so one try only.
    return ImagePolicy(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        url_timeout=settings.url_timeout,
        allow_private_urls=settings.allow_private_urls,
        retries=1,
    )


def _client(request: Request) -> str:
    return client_key(request.client.host if request.client else None, request.headers.get("authorization"))


def _require_index(engine: SearchEngine) -> None:
    if engine.store.schema() is None:
        raise ApiError(409, "the index is empty: POST /index a catalog first", "empty_index")


def _item(engine: SearchEngine, item_id: str) -> Hit:
    hit = engine.get(item_id)
    if hit is None:
        raise ApiError(404, f"no item with id {item_id!r}", "unknown_item")
    return hit


def _media_type(path: Path) -> str:
    # The content decides, as at indexing time: a file named .jpg may well be a PNG.
    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except (OSError, ValueError, Image.DecompressionBombError):
        return "application/octet-stream"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}", "too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", "too_large")
    return bytes(body)


async def _parse_form(request: Request, body: bytes, max_upload: int) -> tuple[dict[str, Any], bytes | None]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=100)
    try:
        fields: dict[str, Any] = {}
        upload: bytes | None = None
        for key in set(form.keys()):
            values = form.getlist(key)
            if key == "image":
                if len(values) != 1 or not isinstance(values[0], UploadFile):
                    raise ApiError(400, "image must be one uploaded file", "image_upload")
                # One byte past the limit tells a file that is too large from one that fits.
                upload = await values[0].read(max_upload + 1)
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise ApiError(400, f"form field {key!r} must be text, not a file", "form")
            # Browsers send empty inputs as "": that means "not given".
            texts = [v for v in values if isinstance(v, str) and v != ""]
            if key == "filters":
                fields[key] = texts
            elif texts:
                fields[key] = texts[-1]
        return fields, upload
    finally:
        await form.close()


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            exc.errors(include_url=False, include_context=False, include_input=False)
        ) from None


def _validate_json(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            exc.errors(include_url=False, include_context=False, include_input=False)
        ) from None


def _add_error_handlers(app: FastAPI) -> None:
    def handler(status: int, code: str):
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc), "error": code}, status_code=status)

        return handle

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse({"detail": exc.detail, "error": exc.error}, status_code=exc.status)

    async def image_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ImageError)
        status = 413 if exc.reason in _SIZE_REASONS else 400
        return JSONResponse({"detail": str(exc), "error": f"image_{exc.reason}"}, status_code=status)

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobConflict)
        body = {"detail": str(exc), "error": "job_running", "job_id": exc.running.id}
        return JSONResponse(body, status_code=409)

    async def denied(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AccessDenied)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        code = "unauthorized" if exc.status == 401 else "forbidden"
        return JSONResponse({"detail": str(exc), "error": code}, status_code=exc.status, headers=headers)

    async def limited(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LimitExceeded)
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": str(exc), "error": "rate_limited"}, status_code=429, headers=headers)

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("store error: %s", exc)
        return JSONResponse({"detail": str(exc), "error": "store"}, status_code=503)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(AccessDenied, denied)
    app.add_exception_handler(LimitExceeded, limited)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(JobConflict, conflict)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(QueryError, handler(400, "query"))
    app.add_exception_handler(FilterError, handler(400, "filter"))
    app.add_exception_handler(CatalogError, handler(400, "catalog"))
    app.add_exception_handler(TagVocabError, handler(400, "tags"))
    # A model the server needs (e.g. the VLM re-ranker's) is not on this machine: the server's fault, not the query's.
    app.add_exception_handler(WeightsMissing, handler(503, "weights_missing"))
