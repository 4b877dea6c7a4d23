"""The Catalog tab (upload a catalog, index it in the background, watch it) and the Shop tab's filter choices."""

from __future__ import annotations

import html
import logging
import shutil
import stat
import threading
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import gradio as gr

from indexer import Condition, Filter, IndexManifest, VectorStore, read_catalog
from indexer.catalog import FILE_TYPES, IMAGE_EXTENSIONS
from indexer.images import is_url
from search import FilterError, SearchEngine, ServerPathError, resolve_server_path
from search.access import AccessDenied
from search.jobs import ACTIVE, Job

from .app import UISettings, UploadError, friendly

if TYPE_CHECKING:
    from .app import Services
    from .app_shop import ShopView

log = logging.getLogger(__name__)

PREFERRED = ("category", "colour", "color", "brand", "size", "material", "gender", "style")
NUMERIC = ("float", "integer")
ERROR_COLUMNS = ["id", "source", "reason", "error"]


# -- filter choices -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Facets:
    """What the Shop tab's filters offer: ``choices`` are (label, "field=value"); ``price`` is (field, min, max)."""

    kinds: dict[str, str] = field(default_factory=dict)
    choices: list[tuple[str, str]] = field(default_factory=list)
    price: tuple[str, float, float] | None = None

    def filter(self, selected: list[str] | None, price_min: float | None, price_max: float | None) -> Filter:
        """Values of one field are alternatives (OR); different fields must all match (AND)."""
        by_field: dict[str, list[Any]] = {}
        for choice in selected or []:
            name, sep, raw = str(choice).partition("=")
            kind = self.kinds.get(name)
            if not sep or kind is None:
                raise FilterError(f"unknown filter {choice!r}: pick filters from the list (it changes after indexing)")
            by_field.setdefault(name, []).append(raw == "true" if kind == "bool" else raw)
        must = [Condition(k, "eq", v[0]) if len(v) == 1 else Condition(k, "in", v) for k, v in by_field.items()]
        if self.price is not None:
            name, lo, hi = self.price
            low = lo if price_min is None else float(price_min)
            high = hi if price_max is None else float(price_max)
            low, high = min(low, high), max(low, high)
            if low > lo or high < hi:  # untouched sliders keep items without a price
                must.append(Condition(name, "range", {"gte": low, "lte": high}))
        return Filter(tuple(must))


def compute_facets(store: VectorStore, fields: dict[str, str], max_values: int) -> Facets:
    """Scroll the store once: distinct values of keyword and bool fields, and the price range."""
    if store.schema() is None:
        return Facets()
    pickable = [k for k, kind in fields.items() if kind in ("keyword", "bool")]
    numeric = [k for k, kind in fields.items() if kind in NUMERIC]
    price = next((k for k in numeric if k == "price"), None) or next((k for k in numeric if "price" in k), None)
    counts: dict[str, Counter[str]] = {k: Counter() for k in pickable}
    too_many: set[str] = set()
    booleans: set[str] = set()  # stores may index bools as keywords; the filter must match the stored type
    low, high = float("inf"), float("-inf")
    keys = pickable + ([price] if price else [])
    if not keys:
        return Facets()
    for record in store.scroll(keys=keys):
        for key in pickable:
            if key in too_many:
                continue
            value = record.payload.get(key)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, bool):
                    counts[key]["true" if v else "false"] += 1
                    booleans.add(key)
                elif isinstance(v, str) and v:
                    counts[key][v] += 1
            if len(counts[key]) > max_values:
                too_many.add(key)  # an id-like field (SKU, EAN): a picker would be useless
        if price is not None:
            value = record.payload.get(price)
            if isinstance(value, int | float) and not isinstance(value, bool):
                low, high = min(low, float(value)), max(high, float(value))
    kinds = {k: "bool" if k in booleans else fields[k] for k in pickable}
    order = sorted(
        (k for k in pickable if k not in too_many and len(counts[k]) >= 2 - (kinds[k] == "bool")),
        key=lambda k: (PREFERRED.index(k) if k in PREFERRED else len(PREFERRED), k),
    )
    choices = []
    for key in order:
        label = key.replace("_", " ")
        for value in sorted(counts[key]):
            shown = {"true": "yes", "false": "no"}.get(value, value) if kinds[key] == "bool" else value
            choices.append((f"{label}: {shown}", f"{key}={value}"))
    price_range = (price, float(low), float(high)) if price and low < high else None
    return Facets({k: kinds[k] for k in order}, choices, price_range)


class FacetCache:
    """Facets of the current index, computed on first use and again after each index job."""

    def __init__(self, engine: SearchEngine, max_values: int) -> None:
        self.engine, self.max_values = engine, max_values
        self._facets: Facets | None = None
        self._lock = threading.Lock()

    def get(self) -> Facets:
        with self._lock:
            if self._facets is None:
                self._facets = compute_facets(self.engine.store, dict(self.engine.fields), self.max_values)
            return self._facets

    def refresh(self) -> Facets:
        with self._lock:
            self._facets = None
        return self.get()


# -- uploads ------------------------------------------------------------------------------------


def stage_catalog(upload: str | None, server_path: str | None, uploads: Path, settings: UISettings) -> Path:
    """The catalog to index: an upload copied (or a zip safely unpacked) under ``uploads/ID/``, or a server path."""
    if upload:
        source = Path(upload)
        name = _safe_name(source.name)
        suffix = source.suffix.lower()
        if suffix not in (*FILE_TYPES, ".zip"):
            kinds = ", ".join(FILE_TYPES)
            raise UploadError(f"{name} is not a catalog: upload {kinds}, or a .zip of one of them with its images")
        target = uploads / f"{uuid.uuid4().hex[:12]}"
        target.mkdir(parents=True)
        try:
            if suffix == ".zip":
                catalog = unpack_zip(source, target, settings.ui_zip_max_entries, settings.ui_zip_max_bytes)
            else:
                catalog = target / name
                shutil.copyfile(source, catalog)
            check_upload_images(catalog, target)
            return catalog
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    if server_path and server_path.strip():
        try:
            return resolve_server_path(server_path, settings.catalog_root)
        except ServerPathError as exc:
            raise UploadError(str(exc)) from None
    raise UploadError("Upload a catalog file (CSV, JSONL, Parquet or a zip with images), or give a path on the server.")


def check_upload_images(catalog: Path, root: Path) -> None:
    """An uploaded catalog may name http(s) images or files it brought along, never other files on the server
    (they would be indexed, then shown to anyone). A catalog that cannot be read raises CatalogError."""
    if catalog.is_dir():
        return  # a folder of images lists only what is in it
    base = root.resolve()
    outside = [
        f"{item.source}: image {image!r} is not in the upload; use a path inside the zip or an http(s) URL"
        for item in read_catalog(catalog).items
        for image in item.images
        if not is_url(image) and not Path(image).resolve().is_relative_to(base)
    ]
    if outside:
        raise UploadError("\n".join(outside[:5]) + (f"\n... and {len(outside) - 5} more" if len(outside) > 5 else ""))


def unpack_zip(source: Path, target: Path, max_entries: int, max_bytes: int) -> Path:
    """Unpack a zip under ``target`` and return its catalog file (or ``target`` for a zip of images only).

    Refused: names that are absolute or climb out with ``..``, links, more than ``max_entries`` files, and more than
    ``max_bytes`` in all. zipfile stops reading each member at its declared size, so the declared sizes bound what
    is written even for a crafted archive.
    """
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"{source.name} is not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_entries:
            raise UploadError(f"{source.name} holds {len(members):,} files; at most {max_entries:,} are accepted")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise UploadError(f"{source.name} unpacks to {total:,} bytes; at most {max_bytes:,} are accepted")
        root = target.resolve()
        catalogs: list[Path] = []
        images = 0
        for member in members:
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if not parts or member.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise UploadError(f"{source.name}: refusing the entry {member.filename!r} (it points outside the zip)")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise UploadError(f"{source.name}: refusing the link {member.filename!r}")
            if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                continue  # Finder's resource forks and hidden files are never products
            dest = root.joinpath(*parts)
            if not dest.resolve().is_relative_to(root):
                raise UploadError(f"{source.name}: refusing the entry {member.filename!r} (it points outside the zip)")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise UploadError(f"{source.name}: cannot unpack {member.filename!r} ({exc})") from None
            suffix = dest.suffix.lower()
            if suffix in FILE_TYPES:
                catalogs.append(dest)
            elif suffix in IMAGE_EXTENSIONS:
                images += 1
    if not catalogs:
        if images:
            return target  # a zip of images is a folder catalog
        raise UploadError(f"{source.name} holds no catalog file ({', '.join(FILE_TYPES)}) and no images")
    shallowest = min(len(c.relative_to(root).parts) for c in catalogs)
    top = [c for c in catalogs if len(c.relative_to(root).parts) == shallowest]
    if len(top) > 1:
        names = ", ".join(sorted(str(c.relative_to(root)) for c in top))
        raise UploadError(f"{source.name} holds several catalogs ({names}); put one catalog per zip")
    return top[0]


def _discard_upload(catalog: Path, uploads: Path) -> None:
    """Remove the ``uploads/ID/`` folder a refused upload was staged in."""
    try:
        rel = catalog.resolve().relative_to(uploads.resolve())
    except ValueError:
        return
    if rel.parts:
        shutil.rmtree(uploads / rel.parts[0], ignore_errors=True)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)
    return cleaned.lstrip(".") or "catalog"


# -- progress and results -----------------------------------------------------------------------


def progress_html(job: Job | None) -> str:
    if job is None:
        return ""
    total = max(job.total, 1)
    if job.status == "queued":
        line = f"Starting: {job.done:,} / {job.total:,} items"
    elif job.status == "running":
        rate = f" · {job.images_per_s:.1f} images/s" if job.images_per_s else ""
        eta = f" · about {_duration(job.eta_s)} left" if job.eta_s is not None else ""
        line = f"Indexing: {job.done:,} / {job.total:,} items{rate}{eta}"
    elif job.status == "done":
        line = f"Done: {job.done:,} / {job.total:,} items"
    else:
        line = f"{job.status.capitalize()}: {html.escape(job.error or 'no reason given')}"
    return (
        f'<div id="job-progress" data-status="{job.status}"><progress value="{job.done}" max="{total}" '
        f'style="width:100%"></progress><div>{line}</div></div>'
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def summary_markdown(job: Job) -> str:
    if job.status != "done" or not job.report:
        return ""
    r = job.report
    text = (
        f"**Indexed {html.escape(Path(job.catalog).name)}:** {r['new']} new, {r['updated']} updated, "
        f"{r['unchanged']} unchanged, {r['failed']} failed, {r['pruned']} removed in {r['seconds']:.1f} s "
        f"({r['images_per_s']:.1f} images/s)."
    )
    if job.errors_total:
        text += f"\n\n{job.errors_total} item(s) could not be indexed; they are listed below."
    return text


def stats_markdown(services: Services) -> str:
    engine = services.engine
    count = engine.store.count() if engine.store.schema() is not None else 0
    manifest = IndexManifest.load(Path(services.settings.data_dir))
    lines = [
        "### Index",
        f"- **Products:** {count:,}",
        f"- **CLIP model:** `{engine.models.clip.model_id}`",
        f"- **Text model:** `{engine.models.text.model_id}`",
    ]
    if engine.fields:
        lines.append("- **Filterable fields:** " + ", ".join(f"{k} ({v})" for k, v in sorted(engine.fields.items())))
    if manifest and manifest.last_run.get("catalog"):
        lines.append(f"- **Last catalog:** `{html.escape(Path(manifest.last_run['catalog']).name)}`")
    return "\n".join(lines)


@dataclass
class CatalogView:
    load_outputs: list[Any]
    on_load: Any


def build_catalog_tab(services: Services, shop: ShopView, header: Any) -> CatalogView:
    types = [*FILE_TYPES, ".zip"]
    token = gr.State(None)
    # Writes are guarded on the server for every call; hiding the controls only spares a shopper the form.
    with gr.Column(visible=False, elem_id="catalog-lock") as lock:
        lock_note = gr.Markdown(elem_id="catalog-lock-note")
        with gr.Row(visible=False) as token_row:
            token_box = gr.Textbox(label="Admin token", type="password", scale=4, elem_id="catalog-token")
            unlock = gr.Button("Unlock", scale=1, elem_id="catalog-unlock")
    with gr.Column(visible=False, elem_id="catalog-controls") as controls:
        gr.Markdown(
            "Upload a catalog (CSV, TSV, JSONL or Parquet with `id`, `image`, `title`, `description` and any other "
            "columns, a Shopify product export or a Merchant Center feed), or a **zip** of one catalog file plus the "
            "images it names. Re-indexing only embeds what changed."
        )
        with gr.Row(equal_height=False):
            upload = gr.File(label="Catalog file or zip", file_types=types, type="filepath", elem_id="catalog-upload")
            with gr.Column(min_width=260):
                server_path = gr.Textbox(label="…or a path on the server", placeholder="/data/catalog.csv")
                prune = gr.Checkbox(label="Remove products that are gone from the catalog", value=False)
                start = gr.Button("Start indexing", variant="primary", elem_id="catalog-start")
    job_id = gr.Textbox(visible=False, label="Job id")
    progress = gr.HTML(elem_id="catalog-progress")
    summary = gr.Markdown(elem_id="catalog-summary", elem_classes="lk-status")
    errors = gr.Dataframe(
        headers=ERROR_COLUMNS,
        visible=False,
        label="Items that failed",
        wrap=True,
        max_height=300,
        elem_id="catalog-errors",
    )
    download = gr.DownloadButton("Download all errors (JSONL)", visible=False, elem_id="catalog-errors-download")
    stats = gr.Markdown(elem_id="catalog-stats")
    timer = gr.Timer(1.0, active=False)

    def start_index(
        catalog_file: str | None, server_path: str, prune: bool, token: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        services.check_write(request, token)
        if not catalog_file and (server_path or "").strip():
            services.guard.check_server_path(services.settings.catalog_root)
        catalog = stage_catalog(catalog_file, server_path, services.uploads, services.settings)
        try:
            job = services.jobs.submit(catalog, prune=prune)
        except BaseException:
            if catalog_file:
                _discard_upload(catalog, services.uploads)
            raise
        return job.id, progress_html(job), "", gr.update(visible=False), gr.update(visible=False), gr.Timer(active=True)

    def job_status(job_id: str) -> tuple[Any, ...]:
        job = services.jobs.get(job_id) if job_id else None
        if job is None:
            return ("", gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), *[gr.skip()] * 4)
        if job.status in ACTIVE:
            return (progress_html(job), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 4)
        services.facets.refresh()
        rows = [[str(row.get(c, "")) for c in ERROR_COLUMNS] for row in job.errors]
        errors_file = services.jobs.errors_file(job)
        has_errors = bool(job.errors_total and errors_file.exists())
        return (
            progress_html(job),
            summary_markdown(job),
            gr.update(value=rows, visible=bool(rows)),
            gr.update(value=str(errors_file.resolve()) if has_errors else None, visible=has_errors),
            stats_markdown(services),
            gr.Timer(active=False),
            services.header(),
            *shop.filter_updates(),
        )

    outputs = [progress, summary, errors, download, stats, timer, header, *shop.filter_outputs]
    start.click(
        friendly(start_index),
        inputs=[upload, server_path, prune, token],
        outputs=[job_id, progress, summary, errors, download, timer],
        api_name="start_index",
        concurrency_limit=2,
    )
    timer.tick(
        friendly(job_status),
        inputs=[job_id],
        outputs=outputs,
        api_name="job_status",
        concurrency_limit=None,
        show_progress="hidden",
    )

    def try_unlock(typed: str, request: gr.Request) -> tuple[Any, ...]:
        services.check_write(request, typed)
        return typed, gr.Column(visible=False), gr.Column(visible=True), ""

    unlock_outputs = [token, lock, controls, token_box]
    gr.on(
        [unlock.click, token_box.submit],
        friendly(try_unlock),
        inputs=[token_box],
        outputs=unlock_outputs,
        api_visibility="private",
        show_progress="hidden",  # a refused token leaves the form usable, not covered by an error overlay
    )

    def access(request: gr.Request | None) -> tuple[Any, ...]:
        """Whether this browser may change the catalog: straight in, asked for the token, or told why not."""
        if services.guard.token is not None:
            note = "Changing the catalog needs the admin token (`LOOKALIKE_ADMIN_TOKEN`)."
            return gr.Column(visible=True), note, gr.Row(visible=True), gr.Column(visible=False)
        try:
            services.check_write(request, None)
        except AccessDenied as exc:
            note = f"The catalog cannot be changed from here: {html.escape(str(exc))}."
            return gr.Column(visible=True), note, gr.Row(visible=False), gr.Column(visible=False)
        return gr.Column(visible=False), "", gr.Row(visible=False), gr.Column(visible=True)

    def on_load(request: gr.Request | None = None) -> tuple[Any, ...]:
        gates = access(request)
        running = services.jobs.running()
        if running is None:
            return ("", "", gr.Timer(active=False), stats_markdown(services), *gates)
        return (running.id, progress_html(running), gr.Timer(active=True), stats_markdown(services), *gates)

    return CatalogView([job_id, progress, timer, stats, lock, lock_note, token_row, controls], on_load)
