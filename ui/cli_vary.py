"""``lookalike vary``: "like this but different" variants of a product, and the real products nearest to each."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Annotated

import typer

from generation import (
    GeneratorError,
    GeneratorSettings,
    RequestError,
    VariantCache,
    VaryRequest,
    VaryResult,
    make_generator,
    vary,
)
from indexer import ImageError, ImagePolicy, IndexManifest, forbid_downloads
from indexer.images import is_url, load_image
from search import QueryError, SearchEngine, SearchSettings

from .cli import AsJson, DataDir, UserError, app, emit, user_errors

log = logging.getLogger(__name__)


@app.command("vary")
def vary_command(
    source: Annotated[str, typer.Argument(help="A catalog item id, or an image path or http(s) URL.")],
    text: Annotated[str, typer.Argument(help='The change, e.g. "in navy blue leather".')],
    n: Annotated[int, typer.Option("--n", help="Variants to make.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first variant; variant i uses SEED+i.")] = 0,
    structure: Annotated[
        float, typer.Option("--structure", help="How closely the shape follows the source (ControlNet scale).")
    ] = 0.8,
    style: Annotated[
        float, typer.Option("--style", help="How much of the source's look is kept (IP-Adapter scale).")
    ] = 0.6,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps.")] = 25,
    control: Annotated[str, typer.Option("--control", help="canny | depth | none")] = "canny",
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Longest side in pixels (env LOOKALIKE_GEN_RESOLUTION).")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="Real products shown per variant.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the variant PNGs.")] = Path("variants"),
    generator: Annotated[
        str | None, typer.Option("--generator", help="Generator spec (env LOOKALIKE_GENERATOR).")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Make N variants of a product changed by TEXT, then find the real products that look like each."""
    forbid_downloads()  # weights come from `lookalike models pull`, so a missing one fails at once
    with user_errors():
        overrides = {"data_dir": data_dir, "generator": generator}
        settings = GeneratorSettings(**{key: v for key, v in overrides.items() if v is not None})
        _quiet_diffusers()
        engine = _open_engine(settings)
        try:
            image, item_id = _source_image(source, engine, ImagePolicy.from_settings(settings))
            request = VaryRequest(
                image=image,
                text=text,
                n=n,
                seed=seed,
                structure=structure,
                style=style,
                steps=steps,
                control=control,  # type: ignore[arg-type]  # checked by check_request
                resolution=resolution,
            )
            gen = make_generator(settings, settings.torch_device())
            result = vary(
                gen,
                request,
                engine=engine,
                cache=VariantCache.from_settings(settings),
                k=k or settings.lookalikes,
                exclude_id=item_id,
            )
        except (GeneratorError, RequestError, ImageError, QueryError) as exc:
            raise UserError(str(exc)) from None
        finally:
            if engine is not None:
                engine.close()
        written = _write(result, out, _stem(item_id or source))
        data = result.to_dict()
        for variant, path in zip(data["variants"], written, strict=True):
            variant["file"] = str(path) if path else None
        data["source"] = {"item": item_id} if item_id else {"image": source}
        emit(data, as_json, _format(result, written, engine is not None))


def _open_engine(settings: GeneratorSettings) -> SearchEngine | None:
    if IndexManifest.load(settings.data_dir) is None:
        return None
    try:
        return SearchEngine(SearchSettings(data_dir=settings.data_dir))
    except QueryError as exc:
        raise UserError(str(exc)) from None


def _source_image(source: str, engine: SearchEngine | None, policy: ImagePolicy):
    """An image path/URL, or a catalog id whose stored image is loaded; the id is returned when there is one."""
    if is_url(source) or Path(source).expanduser().is_file():
        image, _ = load_image(str(Path(source).expanduser()) if not is_url(source) else source, policy)
        return image, None
    hit = engine.get(source) if engine is not None else None
    if hit is None:
        if Path(source).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"} or "/" in source:
            raise UserError(f"image file not found: {source}")
        where = f"the index in {engine.settings.data_dir}" if engine else "any index (none found: use --data-dir)"
        raise UserError(f"unknown item id {source!r}: not in {where}, and not an image file")
    location = hit.payload.get("image")
    if not location:
        raise UserError(f"item {source!r} has no image in the index")
    image, _ = load_image(location, policy)
    return image, source


def _write(result: VaryResult, out: Path, stem: str) -> list[Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    for v in result.variants:
        if v.flagged:
            written.append(None)
            continue
        target = out / f"{stem}-{v.index + 1:02d}-seed{v.seed if v.seed is not None else 'na'}.png"
        if v.path is not None:
            shutil.copyfile(v.path, target)
        else:
            v.image.save(target)
        written.append(target)
    return written


def _format(result: VaryResult, written: list[Path | None], searched: bool) -> str:
    from .cli_search import format_hits  # here, not at the top: cli_search and this module both load from cli

    s = result.settings
    lines = []
    for v, path in zip(result.variants, written, strict=True):
        if v.flagged:
            lines.append(f"variant {v.index + 1}  seed {v.seed}: withheld by the safety checker")
            continue
        scores = f"clip(text) {v.clip_text:.3f}  vs source {v.source_similarity:.3f}" if v.clip_text is not None else ""
        lines.append(f"variant {v.index + 1}  seed {v.seed}  {scores}  -> {path}")
        if searched:
            lines += ["   " + line for line in format_hits(v.lookalikes).splitlines()]
    if not searched:
        lines.append("(no index in the data dir: variants were not scored or searched; run `lookalike index` first)")
    shown = ("family", "scheduler", "steps", "width", "height", "structure", "style", "control", "guidance_scale")
    summary = ", ".join(f"{key} {s[key]}" for key in shown if s.get(key) is not None)
    lines.append(f"{s.get('backend')}: {summary}{' (cached)' if result.cached else ''} in {result.seconds:.1f}s")
    return "\n".join(lines)


def _stem(name: str) -> str:
    stem = Path(name).stem if ("/" in name or "." in name) else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "variant"


def _quiet_diffusers() -> None:
    # diffusers logs per-component notices at WARNING; the command's own output is what the user reads.
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        try:
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.set_verbosity_error()
            diffusers_logging.disable_progress_bar()
        except ImportError:
            pass
