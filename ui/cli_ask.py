"""``lookalike ask``: questions about images, or about the indexed catalog, answered by a VLM."""

from __future__ import annotations

from typing import Annotated

import typer

from indexer import ImageError, ImagePolicy, forbid_downloads
from indexer.images import load_image
from search import FilterError, QueryError, parse_filters
from vlm import Answer, AskError, VLMError, VLMSettings, ask_catalog, ask_images, vlm_from_settings

from .cli import AsJson, DataDir, UserError, app, emit, user_errors
from .cli_search import open_engine


def format_answer(answer: Answer) -> str:
    lines = [answer.answer, ""]
    if answer.citations:
        lines.append("Sources:")
        lines += [f"  [{s.id}] {s.title}  {s.thumbnail or ''}".rstrip() for s in answer.citations]
    if len(answer.retrieved) > len(answer.citations) or not answer.citations:
        lines.append("Shown to the model: " + " ".join(s.id for s in answer.retrieved))
    if answer.invented_ids:
        lines.append("warning: removed citations of items the model was not shown: " + ", ".join(answer.invented_ids))
    if answer.cannot_tell:
        lines.append("note: the model says it cannot tell: " + " ".join(answer.cannot_tell))
    if answer.uncited:
        lines.append(f"note: {len(answer.uncited)} statement(s) cite no image; treat them with care")
    if answer.images_missing:
        lines.append("note: no image could be shown for: " + ", ".join(answer.images_missing))
    return "\n".join(lines).strip()


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    image: Annotated[
        list[str] | None, typer.Option("--image", help="An image to ask about: a path or URL (repeatable).")
    ] = None,
    catalog: Annotated[bool, typer.Option("--catalog", help="Answer from the indexed products.")] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="With --catalog: FIELD=VALUE, FIELD!=V, FIELD<N (repeatable)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="With --catalog: products shown to the model.")] = 8,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Longest answer.")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Ask a vision-language model (LOOKALIKE_VLM) about images, or about the catalog with --catalog."""
    forbid_downloads()  # weights come from `lookalike models pull`, so a missing one fails at once
    with user_errors():
        if bool(image) == catalog:
            raise UserError("give one or more --image files to ask about, or --catalog to ask about the index")
        settings = VLMSettings(**({"data_dir": data_dir} if data_dir else {}))
        try:
            vlm = vlm_from_settings(settings, "lookalike ask", settings.torch_device())
        except VLMError as exc:
            raise UserError(str(exc)) from None
        try:
            if image:
                policy = ImagePolicy.from_settings(settings)
                try:
                    images = [load_image(source, policy)[0] for source in image]
                except ImageError as exc:
                    raise UserError(f"cannot read image {exc}") from None
                answer = ask_images(vlm, question, images, names=image, max_tokens=max_tokens)
            else:
                engine = open_engine(data_dir)
                try:
                    flt = parse_filters(filters or [], engine.fields)
                    answer = ask_catalog(vlm, engine, question, flt, k=k, max_tokens=max_tokens)
                finally:
                    engine.close()
        except (VLMError, AskError, QueryError, FilterError) as exc:
            raise UserError(str(exc)) from None
        finally:
            vlm.close()
        emit(answer.to_dict(), as_json, format_answer(answer))
